"""The budget-aware micro-batcher (stream/batcher.py): when a batch closes, the cost estimate
it relies on, and the asyncio loop over a plain async source (no faust, no broker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from stream.batcher import (
    BUDGET,
    IDLE,
    SIZE,
    Batch,
    BatchPolicy,
    CostModel,
    budget_batches,
    wall_ms,
)

NOW = 1_700_000_000_000.0


def decide(policy: BatchPolicy, n: int, *, age: float, open_for: float, cost: float) -> object:
    """The decision ``open_for`` ms after the batch opened, its oldest event ``age`` ms old."""
    d = policy.decide(n, oldest_ms=NOW - age, opened_ms=NOW - open_for, now_ms=NOW, cost_ms=cost)
    return d.reason if d.reason is not None else d.wait_ms


# --------------------------------------------------------------------------- the decision


def test_closes_at_size_whatever_the_clock() -> None:
    policy = BatchPolicy(batch_max=8, wait_ms=5, budget_ms=25)
    assert decide(policy, 8, age=0, open_for=0, cost=1) == SIZE
    assert decide(policy, 8, age=1000, open_for=1000, cost=1) == SIZE
    assert decide(BatchPolicy(8, 5, budget_ms=0), 8, age=0, open_for=0, cost=1) == SIZE


def test_closes_at_once_when_the_oldest_event_is_already_late() -> None:
    policy = BatchPolicy(batch_max=64, wait_ms=5, budget_ms=25)
    # consumer lag: the event is older than the budget when it arrives
    assert decide(policy, 1, age=40, open_for=0, cost=3) == BUDGET
    # not past the budget yet, but its processing would take it past: no waiting either
    assert decide(policy, 10, age=18, open_for=0, cost=8) == BUDGET
    # with the budget off the same batch waits out batch_wait_ms, as before
    assert decide(BatchPolicy(64, 5, budget_ms=0), 10, age=18, open_for=0, cost=8) == 5


def test_waits_up_to_the_budget_minus_the_cost_otherwise() -> None:
    policy = BatchPolicy(batch_max=64, wait_ms=100, budget_ms=25)
    # a fresh event and a 5 ms batch: 20 ms of waiting left
    assert decide(policy, 1, age=0, open_for=0, cost=5) == pytest.approx(20)
    assert decide(policy, 3, age=12, open_for=12, cost=5) == pytest.approx(8)
    assert decide(policy, 3, age=20, open_for=20, cost=5) == BUDGET
    # a dearer (bigger) batch must close earlier
    assert decide(policy, 30, age=12, open_for=12, cost=13) == BUDGET


def test_batch_wait_ms_stays_the_longest_wait() -> None:
    policy = BatchPolicy(batch_max=64, wait_ms=5, budget_ms=25)
    assert decide(policy, 1, age=0, open_for=0, cost=2) == pytest.approx(5)
    assert decide(policy, 4, age=6, open_for=5, cost=2) == IDLE
    # the wait counts from when the batch opened here, not from the event's timestamp
    assert decide(policy, 1, age=3, open_for=1, cost=2) == pytest.approx(4)


# --------------------------------------------------------------------------- the estimate


def test_cost_estimate_learns_a_line_from_batches_of_several_sizes() -> None:
    cost = CostModel(fixed_ms=2, per_event_ms=0.35)
    assert cost.estimate(10) == pytest.approx(5.5)  # the prior before any batch
    for _ in range(200):
        for n in (1, 8, 20, 64):
            cost.observe(n, 4.0 + 0.5 * n)
    assert cost.estimate(1) == pytest.approx(4.5, rel=0.05)
    assert cost.estimate(64) == pytest.approx(36.0, rel=0.05)


def test_cost_estimate_follows_a_slowdown_within_tens_of_batches() -> None:
    cost = CostModel(fixed_ms=2, per_event_ms=0.35)
    for _ in range(100):
        cost.observe(16, 8.0)
    assert cost.estimate(16) == pytest.approx(8.0, rel=0.05)
    for _ in range(60):  # the machine got twice as busy
        cost.observe(16, 16.0)
    assert cost.estimate(16) == pytest.approx(16.0, rel=0.1)


def test_one_stalled_batch_moves_the_estimate_a_bounded_step() -> None:
    cost = CostModel()
    for _ in range(100):
        cost.observe(20, 10.0)
    before = cost.estimate(20)
    cost.observe(20, 5000.0)  # a Redis retry, a GC pause
    assert before < cost.estimate(20) < 2 * before


def test_batches_of_one_size_only_still_give_a_sane_line() -> None:
    cost = CostModel(fixed_ms=2, per_event_ms=0.35, span=64)
    for _ in range(300):  # a backlog: every batch full
        cost.observe(64, 30.0)
    assert cost.estimate(64) == pytest.approx(30.0, rel=0.05)
    assert 0 < cost.estimate(1) < cost.estimate(32) < cost.estimate(64)
    assert cost.fixed_ms >= 0 and cost.per_event_ms >= 0


def test_nonsense_observations_are_ignored() -> None:
    cost = CostModel()
    before = (cost.fixed_ms, cost.per_event_ms)
    cost.observe(0, 5.0)
    cost.observe(5, float("nan"))
    cost.observe(5, -1.0)
    assert (cost.fixed_ms, cost.per_event_ms) == before and cost.observed == 0


# --------------------------------------------------------------------------- the loop


async def items_of(stamps: list[float], gap_s: float = 0.0) -> AsyncIterator[float]:
    """A source whose items are their own timestamps (ms)."""
    for ts in stamps:
        if gap_s:
            await asyncio.sleep(gap_s)
        yield ts


def own(ts: float) -> float:
    return ts


async def collect(it: AsyncIterator[Batch[float]]) -> list[Batch[float]]:
    return [b async for b in it]


async def test_a_backlog_comes_in_full_batches() -> None:
    now = wall_ms()
    policy = BatchPolicy(batch_max=4, wait_ms=1000, budget_ms=25)
    batches = await collect(budget_batches(items_of([now] * 10), own, policy, CostModel()))
    assert [len(b.items) for b in batches] == [4, 4, 2]
    assert [b.reason for b in batches[:2]] == [SIZE, SIZE]
    assert batches[2].reason == IDLE  # the end of the source closes the rest


async def test_late_events_are_handled_at_once_not_after_batch_wait_ms() -> None:
    late = wall_ms() - 500  # half a second of consumer lag
    policy = BatchPolicy(batch_max=64, wait_ms=2000, budget_ms=25)

    async def source() -> AsyncIterator[float]:
        yield late
        yield late + 1
        await asyncio.sleep(5)  # nothing more for a long while

    t0 = time.perf_counter()
    it = budget_batches(source(), own, policy, CostModel())
    batch = await anext(it)
    waited = time.perf_counter() - t0
    await it.aclose()  # cancels the pump, which is still waiting on the source
    assert batch.items == [late, late + 1] and batch.reason == BUDGET
    assert batch.wait_ms >= 500
    assert waited < 1.0  # not the 2 s of batch_wait_ms


async def test_fresh_events_wait_for_company_until_the_budget_says_stop() -> None:
    policy = BatchPolicy(batch_max=64, wait_ms=10_000, budget_ms=60)
    cost = CostModel(fixed_ms=10, per_event_ms=0)  # 60 - 10: about 50 ms of waiting

    async def source() -> AsyncIterator[float]:
        for _ in range(3):
            yield wall_ms()
            await asyncio.sleep(0.005)
        await asyncio.sleep(5)

    it = budget_batches(source(), own, policy, cost)
    batch = await anext(it)
    await it.aclose()
    assert len(batch.items) == 3 and batch.reason == BUDGET
    assert 40 <= batch.wait_ms < 1000


async def test_processing_time_of_each_batch_feeds_the_estimate() -> None:
    now = wall_ms()
    cost = CostModel(fixed_ms=1, per_event_ms=0)
    policy = BatchPolicy(batch_max=2, wait_ms=1, budget_ms=25)
    async for _ in budget_batches(items_of([now] * 6), own, policy, cost):
        await asyncio.sleep(0.03)  # "handling" takes 30 ms
    assert cost.observed == 3
    assert cost.estimate(2) > 1.5  # moved from the 1 ms prior towards 30 ms


async def test_events_that_queue_during_a_batch_join_the_next_one() -> None:
    policy = BatchPolicy(batch_max=64, wait_ms=1, budget_ms=25)
    sizes: list[int] = []
    async for batch in budget_batches(items_of([0.0] * 40, gap_s=0.001), own, policy,
                                      CostModel()):  # fmt: skip
        sizes.append(len(batch.items))
        time.sleep(0.02)  # a blocking model call: the pump cannot run meanwhile
        await asyncio.sleep(0.01)  # an await on Redis: it can
    assert sum(sizes) == 40
    assert max(sizes[1:]) > 1  # what arrived meanwhile is taken at once, not one by one


async def test_a_late_backlog_still_comes_in_full_batches() -> None:
    """Every event is past the budget, so each batch closes at once; but a source that needs
    a few loop turns per event (as faust's consumer -> channel -> stream does) must not be
    served one event at a time: the closing batch gathers what keeps flowing in."""
    late = wall_ms() - 10_000

    async def source() -> AsyncIterator[float]:
        for _ in range(48):
            for _ in range(3):
                await asyncio.sleep(0)
            yield late

    policy = BatchPolicy(batch_max=16, wait_ms=5, budget_ms=25)
    batches = await collect(budget_batches(source(), own, policy, CostModel()))
    assert [len(b.items) for b in batches] == [16, 16, 16]
    assert {b.reason for b in batches} == {BUDGET}


async def test_an_error_of_the_source_comes_after_its_items() -> None:
    async def source() -> AsyncIterator[float]:
        yield wall_ms()
        raise RuntimeError("broker gone")

    got: list[float] = []
    with pytest.raises(RuntimeError, match="broker gone"):
        async for batch in budget_batches(source(), own, BatchPolicy(8, 50, 25), CostModel()):
            got.extend(batch.items)
    assert len(got) == 1
