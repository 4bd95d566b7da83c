"""``streamrec models promote / rollback`` against the real Redis: the mirror keys
(``sr:{ns}:models:current`` and the ``models:history`` list) follow the filesystem registry."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from features.registry_store import current_key, history_key
from models.bundle import CURRENT_FILE, write_bundle
from models.registry import read_history
from stream.cli import main
from tests.integration.harness import Services


def _write(root: Path, version: str) -> None:
    onnx = root.parent / "fake.onnx"
    onnx.write_bytes(b"not parsed by bundle.py")
    emb = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    emb[0] = 0.0
    write_bundle(
        root,
        onnx_path=onnx,
        item_ids=["a", "b", "c", "d"],
        embeddings=emb,
        popularity=np.arange(5, dtype=np.float32),
        max_recent=7,
        version=version,
    )


def test_promote_and_rollback_are_mirrored_in_redis(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    for version in ("v1", "v2"):
        _write(root, version)
    namespace = f"it-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("REDIS_URL", services.redis_url)
    monkeypatch.setenv("STREAMREC_NAMESPACE", namespace)
    client = redis.Redis.from_url(services.redis_url)
    try:
        cli = ["models", "--model-dir", str(root)]
        assert main([*cli, "promote", "v1", "--no-announce"]) == 0
        assert main([*cli, "promote", "v2", "--no-announce"]) == 0
        assert client.get(current_key(namespace)) == b"v2"
        assert main([*cli, "rollback", "--no-announce"]) == 0
        assert client.get(current_key(namespace)) == b"v1"
        assert (root / CURRENT_FILE).read_text().strip() == "v1"
        entries = [orjson.loads(raw) for raw in client.lrange(history_key(namespace), 0, -1)]
        assert [(e["version"], e["previous"], e["action"]) for e in entries] == [
            ("v1", None, "promote"),
            ("v2", "v1", "promote"),
            ("v1", "v2", "rollback"),
        ]
        assert [e["at_ms"] for e in entries] == [r.at_ms for r in read_history(root)]
        assert client.ttl(current_key(namespace)) == -1  # a record, not a cache
        assert main([*cli, "rollback", "--no-announce"]) == 2  # nothing before v1
        assert client.llen(history_key(namespace)) == 3
    finally:
        client.delete(current_key(namespace), history_key(namespace))
        client.close()
