"""The model registry (models/registry.py, stream/registry.py, ``streamrec models ...``): list
with INVALID bundles, show, promote with history, Redis mirror and announcement (both best
effort), rollback along the serving stack, diff."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from features.registry_store import InMemoryRegistryStore, RegistryStore
from models.bundle import CURRENT_FILE, MODEL_FILE, derive_bundle, promote, write_bundle
from models.registry import (
    HISTORY_FILE,
    PromotionRecord,
    RegistryError,
    list_bundles,
    read_history,
    rollback_target,
    serving_stack,
)
from stream import registry as stream_registry
from stream.cli import main
from stream.settings import Settings


def _write(root: Path, version: str, items: list[str], **meta: object) -> Path:
    onnx = root.parent / "fake.onnx"
    onnx.write_bytes(b"not parsed by bundle.py")
    emb = np.arange((len(items) + 1) * 3, dtype=np.float32).reshape(-1, 3)
    emb[0] = 0.0
    return write_bundle(
        root,
        onnx_path=onnx,
        item_ids=items,
        embeddings=emb,
        popularity=np.arange(len(items) + 1, dtype=np.float32),
        max_recent=7,
        metadata=dict(meta),
        version=version,
    )


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """v1 (4 items, held-out metrics), v1-tuned (derived: new blend + tuning), v2 (5 items,
    3 shared with v1), v3 (tampered model file)."""
    root = tmp_path / "models"
    v1 = _write(
        root,
        "v1",
        ["a", "b", "c", "d"],
        training_data={"from": "2016-01-01", "to": "2016-05-01"},
        metrics={"heldout_hr@20": 0.41, "heldout_mrr@20": 0.15},
        blend={"neural": 1.0, "covisit": 0.5},
    )
    derive_bundle(
        v1,
        {"blend": {"neural": 1.0, "covisit": 0.8}, "blend_tuning": {"hr@20": 0.5, "mrr@20": 0.2}},
        version="v1-tuned",
    )
    _write(
        root,
        "v2",
        ["b", "c", "d", "e", "f"],
        training_data={"from": "2016-02-01", "to": "2016-06-01"},
        metrics={"heldout_hr@20": 0.45, "heldout_mrr@20": 0.17},
        blend={"neural": 1.0, "covisit": 0.5},
    )
    (_write(root, "v3", ["a"]) / MODEL_FILE).write_bytes(b"tampered")
    return root


@pytest.fixture()
def store(monkeypatch: pytest.MonkeyPatch) -> InMemoryRegistryStore:
    """Promotions go to an in-memory Redis twin; Kafka and Redis settings point nowhere."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("STREAMREC_NAMESPACE", "unit")
    twin = InMemoryRegistryStore()

    async def close() -> None:
        return None

    def factory(settings: Settings) -> tuple[RegistryStore, Callable[[], Awaitable[None]]]:
        return twin, close

    monkeypatch.setattr(stream_registry, "_redis_store", factory)
    return twin


def run(root: Path, *args: str) -> int:
    return main(["models", "--model-dir", str(root), *args])


def test_list_marks_current_shows_metrics_and_lists_tampered_as_invalid(
    root: Path, store: InMemoryRegistryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    promote(root, "v1-tuned")
    assert run(root, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "VERSION", "CREATED", "PARENT", "ITEMS", "HR@20", "MRR@20", "BLEND", "HR", "BLEND", "MRR"
    ]  # fmt: skip
    rows = {line[2:].split()[0]: line for line in lines[1:]}
    assert set(rows) == {"v1", "v1-tuned", "v2", "v3"}
    assert rows["v1-tuned"].startswith("* ") and rows["v1"].startswith("  ")
    assert rows["v1-tuned"].split()[3:] == ["v1", "4", "0.41", "0.15", "0.5", "0.2"]
    assert rows["v2"].split()[2:] == ["-", "5", "0.45", "0.17", "-", "-"]
    assert "INVALID (model.onnx: sha256" in rows["v3"]
    infos = {i.version: i for i in list_bundles(root)}
    assert not infos["v3"].valid and infos["v1"].valid and infos["v1-tuned"].parent == "v1"


def test_list_skips_partial_and_hidden_directories(tmp_path: Path) -> None:
    root = tmp_path / "models"
    _write(root, "ok", ["a"])
    (root / "half-written").mkdir()
    (root / ".tmp-x").mkdir()
    assert [i.version for i in list_bundles(root)] == ["ok"]
    assert list_bundles(tmp_path / "nowhere") == []


def test_show_prints_metadata_manifest_and_verification(
    root: Path, store: InMemoryRegistryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(root, "show", "v1-tuned") == 0
    out = capsys.readouterr().out
    assert "verified OK" in out and '"derived_from": "v1"' in out and '"covisit": 0.8' in out
    assert "model.onnx" in out and "6 files" in out and "mismatch" not in out
    assert run(root, "show", "v3") == 1
    out = capsys.readouterr().out
    assert "verified INVALID" in out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("  model.onnx ")] == [
        "mismatch"
    ]
    assert run(root, "show", "nope") == 2
    assert run(root, "show", "../models") == 2


def test_promote_writes_current_history_and_the_redis_mirror(
    root: Path, store: InMemoryRegistryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(root, "promote", "v1", "--no-announce") == 0
    assert run(root, "promote", "v2", "--no-announce") == 0
    assert (root / CURRENT_FILE).read_text().strip() == "v2"
    history = [orjson.loads(line) for line in (root / HISTORY_FILE).read_bytes().splitlines()]
    assert [(h["version"], h["previous"], h["action"]) for h in history] == [
        ("v1", None, "promote"),
        ("v2", "v1", "promote"),
    ]
    assert all(h["at"].endswith("+00:00") and h["at_ms"] > 0 for h in history)
    assert asyncio.run(store.current()) == "v2"
    redis_history = asyncio.run(store.history())
    assert [(h["version"], h["previous"], h["action"]) for h in redis_history] == [
        ("v1", None, "promote"),
        ("v2", "v1", "promote"),
    ]
    assert redis_history[1]["at_ms"] == history[1]["at_ms"]
    out = capsys.readouterr().out
    assert "promote: v2 is CURRENT" in out and "(was v1)" in out and "announced" not in out


def test_a_tampered_bundle_is_refused_with_exit_2_and_nothing_changes(
    root: Path, store: InMemoryRegistryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(root, "promote", "v1", "--no-announce") == 0
    assert run(root, "promote", "v3", "--no-announce") == 2
    assert "fails verification" in capsys.readouterr().err
    assert run(root, "promote", "missing", "--no-announce") == 2
    assert (root / CURRENT_FILE).read_text().strip() == "v1"
    assert [r.version for r in read_history(root)] == ["v1"]
    assert asyncio.run(store.current()) == "v1" and len(asyncio.run(store.history())) == 1


def test_a_redis_outage_does_not_block_a_promotion(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert run(root, "promote", "v2", "--no-announce") == 0
    assert (root / CURRENT_FILE).read_text().strip() == "v2"
    assert [r.version for r in read_history(root)] == ["v2"]
    assert "not recorded in Redis" in capsys.readouterr().err


def test_promote_announces_a_model_update_on_the_prefixed_topic(
    root: Path,
    store: InMemoryRegistryStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import stream.model_updates
    from topics.model_updates import ModelUpdate

    sent: list[tuple[str, str, ModelUpdate]] = []

    async def fake_announce(bootstrap: str, topic: str, update: ModelUpdate) -> None:
        sent.append((bootstrap, topic, update))

    monkeypatch.setattr(stream.model_updates, "announce", fake_announce)
    monkeypatch.setenv("STREAMREC_TOPIC_PREFIX", "blue.")
    assert run(root, "promote", "v1") == 0
    ((bootstrap, topic, update),) = sent
    assert (bootstrap, topic) == ("127.0.0.1:1", "blue.model-updates")
    assert update == ModelUpdate("v1", str(root), "promote", read_history(root)[0].at_ms)
    assert "announced on blue.model-updates" in capsys.readouterr().out


def test_announcing_is_best_effort_when_missing_or_slow(
    root: Path,
    store: InMemoryRegistryStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "stream.model_updates", None)  # not importable
    assert run(root, "promote", "v1") == 0
    assert "polling CURRENT" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "stream.model_updates")
    import stream.model_updates

    async def hanging(bootstrap: str, topic: str, update: object) -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr(stream.model_updates, "announce", hanging)
    monkeypatch.setattr(stream_registry, "ANNOUNCE_TIMEOUT_S", 0.1)
    assert run(root, "promote", "v2") == 0
    err = capsys.readouterr().err
    assert "TimeoutError" in err and "polling CURRENT" in err
    assert (root / CURRENT_FILE).read_text().strip() == "v2"


def test_rollback_walks_back_the_serving_stack_then_refuses(
    root: Path, store: InMemoryRegistryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(root, "rollback", "--no-announce") == 2  # nothing promoted yet
    for version in ("v1", "v2", "v1-tuned"):
        assert run(root, "promote", version, "--no-announce") == 0
    assert run(root, "rollback", "--no-announce") == 0
    assert (root / CURRENT_FILE).read_text().strip() == "v2"
    assert run(root, "rollback", "--no-announce") == 0  # not back to the rolled-back v1-tuned
    assert (root / CURRENT_FILE).read_text().strip() == "v1"
    capsys.readouterr()
    assert run(root, "rollback", "--no-announce") == 2
    assert "no earlier promoted version" in capsys.readouterr().err
    assert (root / CURRENT_FILE).read_text().strip() == "v1"
    last = read_history(root)[-1]
    assert (last.version, last.previous, last.action) == ("v1", "v2", "rollback")
    assert [h["action"] for h in asyncio.run(store.history())][-2:] == ["rollback", "rollback"]
    assert asyncio.run(store.current()) == "v1"


def test_rollback_after_an_out_of_band_promotion_returns_to_the_registry_version(
    root: Path, store: InMemoryRegistryStore
) -> None:
    assert run(root, "promote", "v1", "--no-announce") == 0
    promote(root, "v2")  # as `streamrec train` does, without the registry
    assert rollback_target(root) == "v1"
    assert run(root, "--model-dir", str(root), "rollback", "--no-announce") == 0
    assert (root / CURRENT_FILE).read_text().strip() == "v1"
    assert read_history(root)[-1].previous == "v2"


def test_serving_stack_and_torn_history_lines(tmp_path: Path) -> None:
    def rec(version: str, previous: str | None, action: str = "promote") -> PromotionRecord:
        return PromotionRecord(version, previous, action, 0)  # type: ignore[arg-type]

    history = [rec("a", None), rec("b", "a"), rec("c", "b"), rec("b", "c", "rollback")]
    assert serving_stack(history, "b") == ["a", "b"]
    assert serving_stack(history, "x") == ["a", "b", "x"]
    assert serving_stack([rec("b", "a"), rec("b", "b")], "b") == ["a", "b"]  # re-promote
    assert serving_stack([], None) == []
    (tmp_path / HISTORY_FILE).write_bytes(
        b'{"version":"a","previous":null,"action":"promote","at_ms":1}\n{"versi'
    )
    assert [r.version for r in read_history(tmp_path)] == ["a"]
    with pytest.raises(RegistryError):
        rollback_target(tmp_path)


def test_diff_reports_metadata_files_and_item_overlap(
    root: Path, store: InMemoryRegistryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(root, "diff", "v1", "v2") == 0
    out = capsys.readouterr().out
    assert "metrics.heldout_hr@20   0.41 -> 0.45" in out
    assert "training_data.from      2016-01-01 -> 2016-02-01" in out
    assert "n_items                 4 -> 5" in out
    assert "embedding space: different" in out
    assert "model.onnx      same" in out and "item_ids.json   differs" in out
    assert "items: 3 in both, 1 only in A, 2 only in B" in out
    assert run(root, "diff", "v1", "v1-tuned") == 0
    out = capsys.readouterr().out
    assert "blend.covisit        0.5 -> 0.8" in out and "derived_from         - -> v1" in out
    assert "embedding space: same" in out and "items: 4 in both, 0 only in A, 0 only in B" in out
    assert "metadata.json   differs" in out and "embeddings.npy  same" in out
    assert run(root, "diff", "v1", "v3") == 0
    assert "B fails verification" in capsys.readouterr().out
    assert run(root, "diff", "v1", "nope") == 2


def test_a_candidate_failing_a_gate_is_recorded_and_not_promoted(
    root: Path, store: InMemoryRegistryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.gates import GateReport

    verdicts = iter([
        GateReport(False, ["consistency: overlap@20 0.100 < 0.3"], {"overlap@20": 0.1}),
        GateReport(True, [], {"overlap@20": 0.8}),
    ])  # fmt: skip
    seen: list[tuple[str, Path]] = []

    def fake_gate(r: Path, version: str, events: Path) -> GateReport:
        seen.append((version, events))
        return next(verdicts)

    monkeypatch.setattr(stream_registry, "gate_candidate", fake_gate)
    assert run(root, "promote", "v1", "--no-announce") == 0
    events = root / "recent.jsonl"
    assert run(root, "promote", "v2", "--no-announce", "--gate-events", str(events)) == 3
    assert (root / "CURRENT").read_text().strip() == "v1"  # kept, not promoted
    assert run(root, "promote", "v2", "--no-announce", "--gate-events", str(events)) == 0
    assert (root / "CURRENT").read_text().strip() == "v2"
    lines = [orjson.loads(x) for x in (root / "GATES.jsonl").read_bytes().splitlines()]
    assert [(x["version"], x["passed"]) for x in lines] == [("v2", False), ("v2", True)]
    assert lines[0]["reasons"] == ["consistency: overlap@20 0.100 < 0.3"]
    assert seen == [("v2", events), ("v2", events)]
