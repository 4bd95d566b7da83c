"""The handler's per-batch DEBUG line carries its numbers as fields (for JSON logs)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

import stream.agents as agents
from stream.agents import BatchHandler, RawMessage
from stream.metrics import WorkerMetrics
from stream.pipeline import BatchResult, Trigger
from topics.events import Limits
from topics.recommendations import Recommendation


async def publish(topic: str, key: bytes | None, value: bytes) -> Any:
    async def done() -> None:
        return None

    return done()


def view(i: int) -> RawMessage:
    value = orjson.dumps({"event_id": str(i), "event_type": "view", "user_id": "u",
                          "session_id": "s", "timestamp_ms": 1, "item_id": "i"})  # fmt: skip
    return RawMessage("user-events", 0, i, 1000.0, b"u", value)


async def test_one_debug_line_per_batch_with_fields(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def fake(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        recs = [Recommendation("u", "s", t.event.event_id, "recommend", ["a"], [1.0], "v7", 2, 1,
                               1.0) for t in triggers]  # fmt: skip
        return BatchResult(recs, stage_ms={"state": 1.5, "scoring": 2.25})

    monkeypatch.setattr(agents, "recommend_batch", fake)
    model = type("M", (), {"version": "v7", "space_id": 1, "half_life_ms": 1.0})()
    h = BatchHandler(store=None, model=model, metrics=WorkerMetrics(), publish=publish,  # type: ignore[arg-type]
                     recommendations_topic="r", dead_letter_topic="d", limits=Limits(), k=5,
                     n_candidates=10)  # fmt: skip
    caplog.set_level(logging.INFO, logger="streamrec.worker")
    await h.handle([view(0)])
    assert not [r for r in caplog.records if r.levelno == logging.DEBUG]  # off at INFO
    caplog.set_level(logging.DEBUG, logger="streamrec.worker")
    await h.handle([view(1), view(2), RawMessage("user-events", 0, 3, 1.0, b"u", b"{bad")])
    lines = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(lines) == 1
    r: Any = lines[0]
    assert (r.batch_id, r.batch_size, r.triggers, r.model_version) == (2, 3, 2, "v7")
    assert r.stage_ms == {"state": 1.5, "scoring": 2.25} and r.total_ms >= 0
    assert r.getMessage().startswith("batch 2: 3 events, 2 triggers, model v7")
