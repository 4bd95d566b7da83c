"""Flagged traffic in the worker, without Kafka or Redis (stream/anomaly.py, BatchHandler):
answered, marked, in order, counted, and never passed to the pipeline (which is what writes
state, online co-visitation and trending)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest

import stream.agents as agents
from features.traffic import RateBounds, TrafficMonitor
from stream.agents import BatchHandler, RawMessage
from stream.anomaly import Fallback, check_event, merge_in_order
from stream.metrics import WorkerMetrics
from stream.pipeline import BatchResult, Trigger
from tests.unit.test_batch_handler import Sink
from topics.events import EventType, Limits, UserEvent
from topics.recommendations import Recommendation


def event(eid: str, user: str, t: int, kind: str = "view") -> bytes:
    obj: dict[str, Any] = {"event_id": eid, "event_type": kind, "user_id": user,
                           "session_id": f"{user}-s", "timestamp_ms": t}  # fmt: skip
    if kind == "impression":
        obj["shown_items"] = ["i1"]
    else:
        obj["item_id"] = f"i{t}"
    return orjson.dumps(obj)


def rec(eid: str, flagged: bool = False) -> Recommendation:
    return Recommendation("u", "s", eid, "recommend", ["a"], [1.0], "v1", 2, 1, 1.0,
                          flagged=flagged)  # fmt: skip


def recs(sink: Sink) -> list[Recommendation]:
    return [Recommendation.from_bytes(v) for v in sink.on("recs")]


def answer(t: Trigger) -> Recommendation:
    e = t.event
    return Recommendation(e.user_id, e.session_id, e.event_id, "recommend", ["p"], [2.0], "v1",
                          2, 1, 1.0)  # fmt: skip


@pytest.fixture()
def pipeline_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Event ids of every call of the (fake) pipeline, which is where state is written."""
    calls: list[list[str]] = []

    async def fake(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        calls.append([t.event.event_id for t in triggers])
        return BatchResult([answer(t) for t in triggers])

    monkeypatch.setattr(agents, "recommend_batch", fake)
    monkeypatch.setattr(Fallback, "list_for", lambda self, model: (["popular"], [0.5]))
    return calls


def handler(sink: Sink, bounds: RateBounds | None) -> BatchHandler:
    h = BatchHandler(
        store=None,  # type: ignore[arg-type]
        model=SimpleNamespace(version="v1"),  # type: ignore[arg-type]
        metrics=WorkerMetrics(),
        publish=sink,  # type: ignore[arg-type]
        recommendations_topic="recs",
        dead_letter_topic="dead",
        limits=Limits(),
        k=5,
        n_candidates=10,
    )
    h.traffic = TrafficMonitor(bounds) if bounds is not None else None
    return h


async def test_a_flooding_user_is_answered_but_kept_out_of_the_pipeline(
    pipeline_calls: list[list[str]],
) -> None:
    sink = Sink()
    h = handler(sink, RateBounds(user=3, session=0, item=0))
    t0 = 1_700_000_000_000
    batch = []
    for i in range(6):  # the bot: 6 events in 6 ms; the 4th on is over 3 a minute
        batch.append(
            RawMessage("user-events", 0, 2 * i, 0.0, b"bot", event(f"b{i}", "bot", t0 + i))
        )
        batch.append(
            RawMessage("user-events", 0, 2 * i + 1, 0.0, b"h", event(f"h{i}", f"human{i}", t0 + i))
        )
    batch.append(RawMessage("user-events", 0, 99, 0.0, b"bot",
                            event("imp", "bot", t0 + 7, "impression")))  # fmt: skip
    await h.handle(batch)

    out = recs(sink)
    # every trigger answered exactly once, in the batch's order (the impression by none)
    expected = [e for i in range(6) for e in (f"b{i}", f"h{i}")]
    assert [r.event_id for r in out] == expected
    flagged = {r.event_id for r in out if r.flagged}
    assert flagged == {"b3", "b4", "b5"}
    assert all(r.items == ["popular"] for r in out if r.flagged)
    assert all(r.items == ["p"] for r in out if not r.flagged)
    # the pipeline (state, online co-visitation, trending) never saw a flagged event
    assert pipeline_calls == [["b0", "h0", "b1", "h1", "b2", "h2", "h3", "h4", "h5"]]
    m = h.metrics
    assert m.anomalous_events.labels("user")._value.get() == 3
    assert m.anomalous_keys.labels("user")._value.get() == 1
    assert m.recommendations_out.labels("recommend")._value.get() == 12
    # flagged events are not judged by the online HR@K (the bot's clicks would pollute it):
    # b1 judges b0's list, b2 b1's; each human has one event
    judged = sum(s.value for f in m.online_judged.collect() for s in f.samples
                 if s.name.endswith("_total"))  # fmt: skip
    assert judged == 2


async def test_without_a_monitor_nothing_is_flagged(pipeline_calls: list[list[str]]) -> None:
    sink = Sink()
    h = handler(sink, None)
    t0 = 1_700_000_000_000
    await h.handle([RawMessage("t", 0, i, 0.0, b"bot", event(f"b{i}", "bot", t0 + i))
                    for i in range(300)])  # fmt: skip
    assert len(pipeline_calls[0]) == 300 and not any(r.flagged for r in recs(sink))


async def test_a_batch_of_only_flagged_events_is_answered(
    pipeline_calls: list[list[str]],
) -> None:
    sink = Sink()
    h = handler(sink, RateBounds(user=1, session=0, item=0))
    t0 = 1_700_000_000_000
    await h.handle([RawMessage("t", 0, 0, 0.0, b"bot", event("b0", "bot", t0))])
    await h.handle([RawMessage("t", 0, i, 0.0, b"bot", event(f"b{i}", "bot", t0 + i))
                    for i in range(1, 4)])  # fmt: skip
    assert pipeline_calls == [["b0"]]
    assert [(r.event_id, r.flagged) for r in recs(sink)] == [
        ("b0", False),
        ("b1", True),
        ("b2", True),
        ("b3", True),
    ]


def test_merge_keeps_order_and_skips_dead_lettered_normal_events() -> None:
    flags = [False, True, False, False, True]
    merged = merge_in_order(flags, ["a", "c", "d"], [rec("a"), rec("d")],
                            [rec("b", True), rec("e", True)])  # fmt: skip
    assert [r.event_id for r in merged] == ["a", "b", "d", "e"]


def test_fallback_is_the_cold_ranking_of_popular_items_once_per_version() -> None:
    calls: list[np.ndarray] = []

    def score(recent: np.ndarray, user_vec: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        calls.append(candidates)
        assert not recent.any() and not user_vec.any()  # no history at all
        return candidates.astype(np.float32)  # higher index, higher score

    model = SimpleNamespace(version="v1", popular=np.array([1, 3, 2], dtype=np.int64),
                            max_recent=4, dim=2, item_ids=["a", "b", "c"],
                            scorer=SimpleNamespace(score=score))  # fmt: skip
    fb = Fallback(k=2, n_candidates=10)
    items, scores = fb.list_for(model)  # type: ignore[arg-type]
    assert items == ["c", "b"] and scores == [3.0, 2.0]
    fb.list_for(model)  # type: ignore[arg-type]
    assert len(calls) == 1
    trigger = Trigger(UserEvent("e", EventType.SEARCH, "u", "s", 5, query="x"), 0.0)
    (answer,) = fb.answer([trigger], model, 10.0)  # type: ignore[arg-type]
    assert answer.flagged and answer.kind == "search" and answer.items == ["c", "b"]
    assert orjson.loads(orjson.dumps(answer.to_dict()))["flagged"] is True


def test_impressions_are_not_counted() -> None:
    m = TrafficMonitor(RateBounds(user=1, session=1, item=1))
    imp = UserEvent("i", EventType.IMPRESSION, "u", "s", 1, shown_items=["x"])
    assert all(check_event(m, imp) == [] for _ in range(10))
    assert m.counters["user"].rate("u", 1) == 0
