"""Online MRR@K: the HitTracker gives the rank of each hit, and the handler sums reciprocal
ranks into streamrec_online_rr (MRR@K = rate(rr) / rate(judged))."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import stream.agents as agents
from models.ab import HitTracker, Judgement
from stream.agents import BatchHandler, RawMessage
from stream.metrics import WorkerMetrics
from stream.pipeline import BatchResult, Trigger
from topics.events import Limits
from topics.recommendations import Recommendation


def test_judge_gives_the_rank_of_the_hit() -> None:
    t = HitTracker(k=3)
    t.recommended("u", "A", ["a", "b", "c", "d"])
    t.recommended("v", "A", ["a", "b", "a"])
    t.recommended("w", "B", ["x"])
    out = t.judge([("u", "c"), ("v", "a"), ("w", "y"), ("nobody", "a")])
    assert out == [Judgement("A", 3), Judgement("A", 1), Judgement("B", None)]
    assert [j.rr for j in out] == pytest.approx([1 / 3, 1.0, 0.0])
    assert [j.hit for j in out] == [True, True, False]
    assert t.stats["A"].rr == pytest.approx(4 / 3) and t.stats["A"].mrr == pytest.approx(2 / 3)
    assert t.stats["B"].mrr == 0.0


def test_beyond_k_is_a_miss_and_interacted_keeps_its_api() -> None:
    t = HitTracker(k=2)
    t.recommended("u", "A", ["a", "b", "c"])
    assert t.interacted([("u", "c")]) == [("A", False)]
    t.recommended("u", "A", ["a", "b", "c"])
    assert t.interacted([("u", "b")]) == [("A", True)]
    s = t.stats["A"]
    assert (s.judged, s.hits, s.rr) == (2, 1, 0.5)


def view(eid: str, item: str) -> bytes:
    return orjson.dumps({"event_id": eid, "event_type": "view", "user_id": "u",
                         "session_id": "s", "timestamp_ms": 1, "item_id": item})  # fmt: skip


async def test_the_handler_counts_reciprocal_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        return BatchResult([
            Recommendation(t.event.user_id, t.event.session_id, t.event.event_id, "recommend",
                           ["a", "b", "c"], [3.0, 2.0, 1.0], "v1", 2, 1, 1.0)
            for t in triggers
        ])  # fmt: skip

    async def publish(topic: str, key: bytes | None, value: bytes) -> Any:
        async def done() -> None:
            return None

        return done()

    monkeypatch.setattr(agents, "recommend_batch", fake)
    h = BatchHandler(store=None, model=None, metrics=WorkerMetrics(), publish=publish,  # type: ignore[arg-type]
                     recommendations_topic="recs", dead_letter_topic="dead", limits=Limits(),
                     k=20, n_candidates=10)  # fmt: skip

    def m(offset: int, item: str) -> RawMessage:
        return RawMessage("user-events", 0, offset, 1000.0, b"u", view(str(offset), item))

    # 1st: nothing to judge; then "b" (rank 2), "z" (miss), "a" (rank 1).
    await h.handle([m(0, "x"), m(1, "b")])
    await h.handle([m(2, "z"), m(3, "a")])
    metrics = h.metrics
    assert metrics.online_judged.labels("v1", "")._value.get() == 3
    assert metrics.online_hits.labels("v1", "")._value.get() == 2
    assert metrics.online_rr.labels("v1", "")._value.get() == pytest.approx(1.5)


async def test_rr_series_exists_after_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    t = HitTracker(k=1)
    t.recommended("u", "v1\t", ["a"])
    metrics = WorkerMetrics()
    h = BatchHandler.__new__(BatchHandler)
    h.metrics, h.tracker, h.guard, h.on_rollback = metrics, t, None, None
    e = Trigger(agents.parse_event(view("e", "z"), Limits()), 1.0)
    h._track([e], [])  # no recommendation for it: the list is judged, not replaced
    assert metrics.online_judged.labels("v1", "")._value.get() == 0  # untracked (no rec)
    rec = Recommendation("u", "s", "e", "recommend", ["q"], [1.0], "v1", 2, 1, 1.0)
    h._track([e], [rec])
    assert (
        metrics.registry.get_sample_value("streamrec_online_rr_total", {"version": "v1", "arm": ""})
        == 0.0
    )
    assert metrics.online_judged.labels("v1", "")._value.get() == 1
