"""Guarded updates: the rollback verdict, and the handler calling it from live outcomes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import stream.agents as agents
from stream.guard import RollbackGuard
from stream.pipeline import BatchResult, Trigger
from tests.unit.test_batch_handler import Sink, handler, msg
from topics.recommendations import Recommendation


def test_a_version_worse_than_its_predecessor_is_rolled_back_once() -> None:
    g = RollbackGuard(window=100, min_judged=10, margin=0.05)
    for i in range(20):
        g.record("v1", i % 2 == 0)  # 0.5
    g.swapped("v1", "v2")
    for _ in range(9):
        g.record("v2", False)
    assert g.check() is None  # not enough outcomes yet
    g.record("v2", False)
    assert g.check() == ("v2", "v1", 0.0, 0.5)
    assert g.check() is None  # decided: no second verdict


def test_no_rollback_within_the_margin_or_without_a_baseline() -> None:
    g = RollbackGuard(window=100, min_judged=4, margin=0.1)
    for hit in (True, False, True, False):
        g.record("v1", hit)
    g.swapped("v1", "v2")
    for hit in (True, False, False, True):
        g.record("v2", hit)
    assert g.check() is None
    fresh = RollbackGuard(min_judged=4)
    fresh.swapped("v0", "v1")  # v0 has no outcomes: nothing to compare with
    for _ in range(10):
        fresh.record("v1", False)
    assert fresh.check() is None


async def test_the_handler_asks_for_a_rollback(monkeypatch: pytest.MonkeyPatch) -> None:
    version = {"v": "v1"}

    async def fake(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        return BatchResult([
            Recommendation(t.event.user_id, "s", t.event.event_id, "recommend", ["a"], [1.0],
                           version["v"], 2, 1, 1.0)
            for t in triggers
        ])  # fmt: skip

    def view(eid: str, user: str, item: str) -> bytes:
        return orjson.dumps({"event_id": eid, "event_type": "view", "user_id": user,
                             "session_id": "s", "timestamp_ms": 1, "item_id": item})  # fmt: skip

    monkeypatch.setattr(agents, "recommend_batch", fake)
    h = handler(Sink())
    h.guard = RollbackGuard(window=50, min_judged=3, margin=0.1)
    calls: list[tuple[str, str, float, float]] = []
    h.on_rollback = lambda *v: calls.append(v)
    # v1: every next view is "a", a hit on the list ["a"].
    await h.handle([msg(i, view(f"p{i}", f"u{i % 2}", "a")) for i in range(8)])
    version["v"] = "v2"
    h.guard.swapped("v1", "v2")
    # v2 lists still say ["a"], but users now view "b": misses.
    await h.handle([msg(10 + i, view(f"q{i}", f"u{i % 2}", "b")) for i in range(8)])
    assert calls and calls[0][:2] == ("v2", "v1") and calls[0][2] < calls[0][3]
