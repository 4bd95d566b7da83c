"""Promotion gates on real bundles: a copy of the current version passes against it; a version
whose ranking is turned upside down fails the gates and is not promoted."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from models.bundle import derive_bundle, latest_bundle
from stream.cli import main
from topics.events import UserEvent
from topics.importer import write_jsonl


def test_gates_pass_a_copy_and_stop_an_inverted_ranking(
    model_dir: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "models"
    shutil.copytree(model_dir, root)
    current = latest_bundle(root)
    assert current is not None
    _, test = diginetica
    events = tmp_path / "recent.jsonl"
    write_jsonl(test[:600], events)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # the registry's mirror: warn only

    def promote(version: str) -> int:
        return main(["models", "--model-dir", str(root), "promote", version, "--no-announce",
                     "--gate-events", str(events)])  # fmt: skip

    derive_bundle(current, {"note": "same model"}, version="copy")
    assert promote("copy") == 0
    derive_bundle(current, {"blend": {"neural": -1.0}}, version="inverted")
    assert promote("inverted") == 3
    assert (root / "CURRENT").read_text().strip() == "copy"
    verdicts = [orjson.loads(x) for x in (root / "GATES.jsonl").read_bytes().splitlines()]
    assert [(v["version"], v["passed"]) for v in verdicts] == [("copy", True), ("inverted", False)]
    assert verdicts[0]["metrics"]["overlap@20"] == 1.0
    assert any(r.startswith("consistency") for r in verdicts[1]["reasons"])
