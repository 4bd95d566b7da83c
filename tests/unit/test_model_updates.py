"""Hot swap of the served model (stream/model_updates.py, topics/model_updates.py), without
Kafka: the update record, the swapper's refusal of bad bundles, and the batch boundary."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest

import stream.agents as agents
from models.bundle import Bundle, derive_bundle, write_bundle
from models.serving import ServingModel
from stream.agents import BatchHandler, RawMessage
from stream.metrics import WorkerMetrics
from stream.model_updates import ModelSwapper
from stream.pipeline import BatchResult, Trigger
from topics.events import Limits
from topics.model_updates import ModelUpdate
from topics.names import ALL_TOPICS, MODEL_UPDATES, model_updates_topic
from topics.recommendations import Recommendation

# ------------------------------------------------------------------ the update record


def test_an_update_round_trips() -> None:
    update = ModelUpdate("20260101T000000Z-abc123", "/models", "promote", 1_700_000_000_000)
    assert ModelUpdate.parse(update.to_bytes()) == update
    rollback = ModelUpdate("v1", None, "rollback", 5)
    assert ModelUpdate.parse(rollback.to_bytes()) == rollback
    for_arm = ModelUpdate("v3", "/models", "promote", 6, arm="B")  # a training agent's arm
    assert ModelUpdate.parse(for_arm.to_bytes()) == for_arm
    assert b"arm" not in update.to_bytes()  # records without an arm stay as they were


def test_the_topic_is_created_with_the_others() -> None:
    assert MODEL_UPDATES in ALL_TOPICS and MODEL_UPDATES.partitions == 1
    assert model_updates_topic("t.") == "t.model-updates"


GOOD: dict[str, Any] = {"version": "v2", "model_dir": None, "action": "promote", "at_ms": 1}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b"[1, 2]",
        b"x" * 5000,
        orjson.dumps({**GOOD, "version": "../../etc"}),  # never a path outside model_dir
        orjson.dumps({**GOOD, "version": ""}),
        orjson.dumps({**GOOD, "version": 3}),
        orjson.dumps({**GOOD, "model_dir": 7}),
        orjson.dumps({**GOOD, "action": "delete"}),
        orjson.dumps({**GOOD, "at_ms": "soon"}),
        orjson.dumps({**GOOD, "at_ms": True}),
        orjson.dumps({**GOOD, "arm": "../B"}),
        orjson.dumps({**GOOD, "arm": 2}),
        orjson.dumps({k: v for k, v in GOOD.items() if k != "version"}),
    ],
)
def test_invalid_records_are_ignored_with_a_warning(
    raw: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="streamrec.model_updates"):
        assert ModelUpdate.parse(raw) is None
    assert "ignoring an invalid model update" in caplog.text


# ------------------------------------------------------------------ the swapper


def fake_model(version: str, space_id: int = 1) -> ServingModel:
    model = SimpleNamespace(
        version=version,
        space_id=space_id,
        half_life_ms=1000.0,
        scorer=SimpleNamespace(provider="cpu"),
    )
    return model  # type: ignore[return-value]


def verifying_loader(path: Path) -> ServingModel:
    """``ServingModel.load`` without ONNX Runtime: the bundle (checksums) is really loaded."""
    bundle = Bundle.load(path)
    return fake_model(bundle.version, bundle.space_id)


def write_v1(root: Path) -> Path:
    onnx = root.parent / "fake.onnx"
    onnx.write_bytes(b"not parsed by bundle.py")
    emb = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    emb[0] = 0.0
    return write_bundle(
        root,
        onnx_path=onnx,
        item_ids=["a", "b", "c", "d"],
        embeddings=emb,
        popularity=np.array([0, 4, 3, 2, 1], dtype=np.float32),
        max_recent=7,
        version="v1",
    )


def failures(metrics: WorkerMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "streamrec_model_swap_failures_total", {"reason": reason}
    )
    return value or 0.0


async def test_a_verified_bundle_is_swapped_in_and_the_callback_told(tmp_path: Path) -> None:
    v1 = write_v1(tmp_path / "models")
    v2 = derive_bundle(v1, {"note": "v2"}, version="v2")
    metrics = WorkerMetrics()
    seen: list[tuple[str, str]] = []
    swapper = ModelSwapper(
        verifying_loader(v1),
        registry=metrics.registry,
        loader=verifying_loader,
        on_swap=lambda old, new, ms: seen.append((old.version, new.version)),
    )
    assert await swapper.load(v2) is True
    assert swapper.version == "v2" and seen == [("v1", "v2")]
    assert await swapper.load(v2) is False  # already serving it: nothing to do
    assert seen == [("v1", "v2")]


async def test_a_tampered_bundle_is_refused_and_the_old_model_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    v1 = write_v1(tmp_path / "models")
    v3 = derive_bundle(v1, {"note": "v3"}, version="v3")
    data = bytearray((v3 / "embeddings.npy").read_bytes())
    data[-1] ^= 0xFF  # one flipped byte, same size
    (v3 / "embeddings.npy").write_bytes(bytes(data))
    metrics = WorkerMetrics()
    swapper = ModelSwapper(verifying_loader(v1), registry=metrics.registry, loader=verifying_loader)
    with caplog.at_level(logging.ERROR, logger="streamrec.worker"):
        assert await swapper.load(v3) is False
    assert swapper.version == "v1"
    assert failures(metrics, "integrity") == 1
    assert "v3" in swapper.refused and "refused" in caplog.text
    assert await swapper.load(tmp_path / "models" / "missing") is False
    assert failures(metrics, "integrity") + failures(metrics, "missing") == 2
    assert swapper.version == "v1"


async def test_any_load_error_is_counted_not_raised() -> None:
    def broken(path: Path) -> ServingModel:
        raise RuntimeError("onnxruntime says no")

    metrics = WorkerMetrics()
    swapper = ModelSwapper(fake_model("v1"), registry=metrics.registry, loader=broken)
    assert await swapper.load(Path("/nowhere/v2")) is False
    assert swapper.version == "v1" and failures(metrics, "load_error") == 1


# ------------------------------------------------------------------ the batch boundary


def msg(offset: int, eid: str) -> RawMessage:
    value = orjson.dumps(
        {
            "event_id": eid,
            "event_type": "view",
            "user_id": "u",
            "session_id": "s",
            "timestamp_ms": 1,
            "item_id": "i",
        }
    )
    return RawMessage("user-events", 0, offset, 1000.0, b"u", value)


async def test_a_swap_lands_between_batches_never_inside_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batch 1 starts on v1; the swap to v2 completes while it awaits Redis; batch 1 still
    finishes on v1 (every record of it), batch 2 runs on v2 and writes v2's space."""
    started, release = asyncio.Event(), asyncio.Event()
    models_used: list[str] = []

    async def fake(triggers: list[Trigger], store: Any, model: Any, **kw: Any) -> BatchResult:
        models_used.append(model.version)
        if len(models_used) == 1:
            started.set()
            await release.wait()  # the batch is in flight (awaiting Redis) during the swap
        recs = [
            Recommendation(
                t.event.user_id,
                t.event.session_id,
                t.event.event_id,
                "recommend",
                ["a"],
                [1.0],
                model.version,
                2,
                t.event.timestamp_ms,
                1.0,
            )
            for t in triggers
        ]
        return BatchResult(recs)

    monkeypatch.setattr(agents, "recommend_batch", fake)
    sent: list[bytes] = []

    async def publish(topic: str, key: bytes | None, value: bytes) -> Any:
        sent.append(value)
        return asyncio.sleep(0)

    metrics = WorkerMetrics()
    store = SimpleNamespace(space_id=11, half_life_ms=5.0)
    handler = BatchHandler(
        store=store,  # type: ignore[arg-type]
        model=fake_model("v1", space_id=11),
        metrics=metrics,
        publish=publish,
        recommendations_topic="recs",
        dead_letter_topic="dead",
        limits=Limits(),
        k=5,
        n_candidates=10,
        follow_model_half_life=True,
    )

    def swapped(old: ServingModel, new: ServingModel, ms: float) -> None:
        handler.model = new

    swapper = ModelSwapper(
        handler.model,
        registry=metrics.registry,
        loader=lambda path: fake_model(path.name, space_id=22),
        on_swap=swapped,
    )
    first = asyncio.create_task(handler.handle([msg(0, "e0"), msg(1, "e1"), msg(2, "e2")]))
    await started.wait()
    assert await swapper.load(Path("/models/v2")) is True
    assert handler.model.version == "v2"  # swapped while batch 1 is still in flight
    release.set()
    await first
    await handler.handle([msg(3, "e3")])

    versions = [orjson.loads(v)["model_version"] for v in sent]
    assert models_used == ["v1", "v2"]
    assert versions == ["v1", "v1", "v1", "v2"]
    assert store.space_id == 22 and store.half_life_ms == 1000.0
