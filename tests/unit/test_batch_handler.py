"""The agent's failure handling, without Kafka: dead letters, Redis retries, poison events."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

import stream.agents as agents
from features.store import StateStoreError
from stream.agents import BatchHandler, RawMessage
from stream.metrics import WorkerMetrics
from stream.pipeline import BatchResult, Trigger
from topics.dead_letter import DeadLetter
from topics.events import Limits
from topics.recommendations import Recommendation


def msg(offset: int, value: bytes | None) -> RawMessage:
    return RawMessage("user-events", 0, offset, 1000.0, b"k", value)


def valid(eid: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": eid,
            "event_type": "view",
            "user_id": "u",
            "session_id": "s",
            "timestamp_ms": 1,
            "item_id": "i",
        }
    )


def rec_for(t: Trigger) -> Recommendation:
    e = t.event
    return Recommendation(
        e.user_id, e.session_id, e.event_id, "recommend", ["a"], [1.0], "v1", 2, e.timestamp_ms, 1.0
    )


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def __call__(self, topic: str, key: bytes | None, value: bytes) -> Any:
        self.sent.append((topic, key, value))

        async def done() -> None:
            return None

        return done()

    def on(self, topic: str) -> list[bytes]:
        return [v for t, _, v in self.sent if t == topic]


def handler(sink: Sink) -> BatchHandler:
    return BatchHandler(
        store=None,
        model=None,
        metrics=WorkerMetrics(),
        publish=sink,  # type: ignore[arg-type]
        recommendations_topic="recs",
        dead_letter_topic="dead",
        limits=Limits(),
        k=5,
        n_candidates=10,
    )


async def test_bad_events_are_dead_lettered_and_valid_ones_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fake(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        return BatchResult([rec_for(t) for t in triggers])

    monkeypatch.setattr(agents, "recommend_batch", fake)
    sink = Sink()
    h = handler(sink)
    await h.handle([msg(0, b"{oops"), msg(1, valid("e1")), msg(2, None)])
    dead = [DeadLetter.from_bytes(v) for v in sink.on("dead")]
    assert [(d.reason, d.offset) for d in dead] == [("malformed_json", 0), ("malformed_json", 2)]
    assert dead[0].raw == b"{oops" and dead[0].key == b"k"
    assert [Recommendation.from_bytes(v).event_id for v in sink.on("recs")] == ["e1"]
    assert h.metrics.dead_letters.labels("malformed_json")._value.get() == 2


async def test_redis_outage_is_retried_not_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    async def flaky(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        calls["n"] += 1
        if calls["n"] < 3:
            raise StateStoreError("connection refused")
        return BatchResult([rec_for(t) for t in triggers])

    monkeypatch.setattr(agents, "recommend_batch", flaky)
    monkeypatch.setattr(agents, "MAX_BACKOFF_S", 0.0)
    sink = Sink()
    await handler(sink).handle([msg(0, valid("e1")), msg(1, valid("e2"))])
    assert calls["n"] == 3
    assert len(sink.on("recs")) == 2 and sink.on("dead") == []


async def test_a_poison_event_is_isolated_with_processing_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def picky(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        if any(t.event.event_id == "poison" for t in triggers):
            raise ValueError("model exploded")
        return BatchResult([rec_for(t) for t in triggers])

    monkeypatch.setattr(agents, "recommend_batch", picky)
    sink = Sink()
    await handler(sink).handle([msg(0, valid("a")), msg(1, valid("poison")), msg(2, valid("b"))])
    assert sorted(Recommendation.from_bytes(v).event_id for v in sink.on("recs")) == ["a", "b"]
    dead = [DeadLetter.from_bytes(v) for v in sink.on("dead")]
    assert [(d.reason, d.offset) for d in dead] == [("processing_error", 1)]
    assert "model exploded" in dead[0].detail


async def test_live_hit_rate_per_version_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    def view(eid: str, item: str) -> bytes:
        return orjson.dumps({"event_id": eid, "event_type": "view", "user_id": "u",
                             "session_id": "s", "timestamp_ms": 1, "item_id": item})  # fmt: skip

    async def fake(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        return BatchResult([rec_for(t) for t in triggers])  # lists ["a"], version v1

    monkeypatch.setattr(agents, "recommend_batch", fake)
    h = handler(Sink())
    # First view: nothing to judge; "a" is then a hit on the list ["a"]; "b" a miss.
    await h.handle([msg(0, view("1", "x")), msg(1, view("2", "a"))])
    await h.handle([msg(2, view("3", "b"))])
    judged = h.metrics.online_judged.labels("v1", "")._value.get()
    hits = h.metrics.online_hits.labels("v1", "")._value.get()
    assert (judged, hits) == (2, 1)


async def test_impressions_are_answered_by_nothing_and_give_ctr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CTR where impressions exist: an impression is clicked by the user's next interaction
    with one of its items before their next impression; it triggers no recommendation."""

    def event(eid: str, kind: str, user: str, **extra: Any) -> bytes:
        return orjson.dumps({"event_id": eid, "event_type": kind, "user_id": user,
                             "session_id": "s", "timestamp_ms": 1, **extra})  # fmt: skip

    seen: list[str] = []

    async def fake(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        seen.extend(t.event.event_id for t in triggers)
        return BatchResult([rec_for(t) for t in triggers])

    monkeypatch.setattr(agents, "recommend_batch", fake)
    sink = Sink()
    h = handler(sink)
    h.model = SimpleNamespace(version="v1")  # type: ignore[assignment]
    await h.handle([
        msg(0, event("i1", "impression", "u", shown_items=["a", "b"], recommendation_id="x")),
        msg(1, event("v1", "view", "u", item_id="c")),  # not shown: no click yet
        msg(2, event("v2", "view", "u", item_id="b")),  # clicks i1
        msg(3, event("v3", "view", "u", item_id="a")),  # i1 already clicked: nothing
        msg(4, event("i2", "impression", "w", shown_items=["a"])),
        msg(5, event("i3", "impression", "w", shown_items=["z"])),  # replaces i2 unclicked
        msg(6, event("v4", "view", "w", item_id="a")),
    ])  # fmt: skip
    assert seen == ["v1", "v2", "v3", "v4"]  # impressions are no triggers
    assert len(sink.on("recs")) == 4 and sink.on("dead") == []
    m = h.metrics
    assert m.online_impressions.labels("v1", "")._value.get() == 3
    assert m.online_clicks.labels("v1", "")._value.get() == 1
    assert m.events_in.labels("impression")._value.get() == 3
