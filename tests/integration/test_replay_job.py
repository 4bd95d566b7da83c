"""``streamrec replay``: a file through the real Kafka -> worker path, one line per answer."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream.replay_job import run_replay
from stream.settings import load_settings
from tests.integration.harness import Services
from topics.events import UserEvent


def test_replay_writes_every_recommendation_with_its_trigger(
    services: Services,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", services.bootstrap)
    monkeypatch.setenv("REDIS_URL", services.redis_url)
    monkeypatch.setenv("STREAMREC_MODEL_DIR", str(model_dir))
    events = diginetica[1][:40]
    out = tmp_path / "recs.jsonl"
    assert run_replay(events, out=out, rate=0, settings=load_settings()) == 0
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [line["event_id"] for line in lines] == [e.event_id for e in events]
    for line, e in zip(lines, events, strict=True):
        assert line["trigger"] == {
            "session_id": e.session_id,
            "item_id": e.item_id,
            "event_type": "view",
            "timestamp_ms": e.timestamp_ms,
        }
        assert len(line["items"]) == 20 and line["user_id"] == e.user_id
