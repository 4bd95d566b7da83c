"""Micro-batches that respect a latency budget (``STREAMREC_LATENCY_BUDGET_MS``).

Why: the worker's latency goal is trigger -> publish, counted from each event's Kafka
timestamp (producer CreateTime). A batch that always waits ``batch_wait_ms`` for company adds
that wait even to events that are already late (consumer lag, or events that queued while
the previous batch was being handled); a batch that never waits gives up the batching that
makes each event several times cheaper (docs/benchmarks.md). So a batch here closes at the
first of:

- ``size``: it holds ``batch_max`` events;
- ``budget``: waiting any longer would make its oldest event miss the budget once the
  batch's own processing time is added (``CostModel``, learnt from recent batches);
- ``idle``: it has been open ``batch_wait_ms`` (the fixed wait of before, now an upper
  bound), or the source ended.

When a batch closes it takes every event that is already waiting (up to ``batch_max``): those
have waited anyway, and leaving them for the next batch would only add a whole batch to their
latency. In a backlog this still gives full batches.

Measured (bench/throughput.py on the shared 2-core machine, 2026-11-23): events reach the
worker already ~15-20 ms old (transport, and the wait behind the previous batch while the
model calls block the event loop), and a batch costs ~6 ms before its first event, so with
a 25 ms budget nearly every batch closes at once. Batches got ~30% smaller, the worker's
CPU went up, p99 at 25% and 50% load roughly doubled and at 75% the worker fell behind;
which is why the setting is off (0) by default. The budget pays off once the per-batch cost
is small next to the budget.

``BatchPolicy.decide`` and ``CostModel`` are pure functions of numbers (unit-tested without a
loop); ``budget_batches`` is the asyncio loop around them over any async iterable. Nothing
here knows faust: stream/app.py feeds it the stream's events and acknowledges each batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

SIZE = "size"
BUDGET = "budget"
IDLE = "idle"
REASONS = (SIZE, BUDGET, IDLE)
# Loop turns without a new event after which a closing batch stops gathering (``_Open.settle``).
SETTLE_QUIET_TURNS = 8


def wall_ms() -> float:
    """Wall-clock ms: Kafka record timestamps are wall-clock, so deadlines derived from them
    must be compared with the same clock."""
    return time.time() * 1000


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with an open batch: close it now (``reason``), or wait for the next event
    at most ``wait_ms``."""

    reason: str | None
    wait_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When a batch closes. ``budget_ms`` 0 turns the budget off (size or ``wait_ms`` only)."""

    batch_max: int
    wait_ms: float
    budget_ms: float = 0.0

    def decide(
        self, n: int, *, oldest_ms: float, opened_ms: float, now_ms: float, cost_ms: float
    ) -> Decision:
        """``n`` events in the batch; ``oldest_ms`` the oldest event's timestamp (its age is
        what the budget is about), ``opened_ms`` when the batch got its first event here,
        ``cost_ms`` the estimated processing time of a batch of ``n``. Deadlines are met
        with ``<=``: a timer that fires exactly on time closes the batch."""
        if n >= self.batch_max:
            return Decision(SIZE)
        idle_left = opened_ms + self.wait_ms - now_ms
        budget_left = (
            oldest_ms + self.budget_ms - cost_ms - now_ms if self.budget_ms > 0 else math.inf
        )
        if budget_left <= 0 and budget_left <= idle_left:
            return Decision(BUDGET)
        if idle_left <= 0:
            return Decision(IDLE)
        return Decision(None, min(idle_left, budget_left))


class CostModel:
    """Processing ms of a batch of ``n`` events, ``fixed_ms + per_event_ms · n``, fitted by
    exponentially weighted least squares over recent batches (weight ``alpha`` for the newest).

    Why a line: a batch pays one Redis round trip, one FAISS search and one ONNX call plus a
    share per event (docs/benchmarks.md's size sweep is close to linear). Why weighted and
    recent: the cost moves with load on the machine, a model swap or a cache warming up, and
    the budget needs today's cost. Two pseudo-observations of the prior line (at 1 and
    ``span`` events) keep the fit defined when every recent batch had the same size (a
    backlog: all full) and pull it only slightly otherwise. An observation is clipped at
    ``clip`` times the current estimate, so one stalled batch (a Redis retry, a GC pause)
    moves the estimate by a bounded step rather than making every batch close at once for
    the next few seconds.
    """

    def __init__(
        self,
        *,
        fixed_ms: float = 2.0,
        per_event_ms: float = 0.35,
        span: int = 64,
        alpha: float = 0.05,
        prior_weight: float = 0.02,
        clip: float = 3.0,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.clip = clip
        hi = max(2, span)
        # The prior, as fixed sums of two weighted points (n, ms).
        self._prior = _Sums()
        for n in (1, hi):
            self._prior.add(n, fixed_ms + per_event_ms * n, prior_weight)
        self._data = _Sums()
        self.observed = 0
        self.fixed_ms, self.per_event_ms = self._fit()

    def estimate(self, n: int) -> float:
        """Estimated processing ms of a batch of ``n`` events."""
        return self.fixed_ms + self.per_event_ms * n

    def observe(self, n: int, ms: float) -> None:
        """A batch of ``n`` events took ``ms`` to process."""
        if n <= 0 or not math.isfinite(ms) or ms < 0:
            return
        ms = min(ms, self.clip * max(self.estimate(n), 0.1))
        self._data.scale(1 - self.alpha)
        self._data.add(n, ms, self.alpha)
        self.observed += 1
        self.fixed_ms, self.per_event_ms = self._fit()

    def _fit(self) -> tuple[float, float]:
        s = self._prior.plus(self._data)
        det = s.w * s.nn - s.n * s.n
        slope = (s.w * s.nt - s.n * s.t) / det if det > 1e-12 else 0.0
        fixed = (s.t - slope * s.n) / s.w
        if slope < 0:  # bigger batches are never cheaper: a flat line through the mean
            return s.t / s.w, 0.0
        if fixed < 0:  # nor is an empty batch free of cost: a line through the origin
            return 0.0, s.nt / s.nn
        return fixed, slope


@dataclass(slots=True)
class _Sums:
    """Weighted sums of a least-squares line fit: weight, n, n², t, n·t."""

    w: float = 0.0
    n: float = 0.0
    nn: float = 0.0
    t: float = 0.0
    nt: float = 0.0

    def add(self, n: float, t: float, weight: float) -> None:
        self.w += weight
        self.n += weight * n
        self.nn += weight * n * n
        self.t += weight * t
        self.nt += weight * n * t

    def scale(self, factor: float) -> None:
        self.w *= factor
        self.n *= factor
        self.nn *= factor
        self.t *= factor
        self.nt *= factor

    def plus(self, other: _Sums) -> _Sums:
        return _Sums(self.w + other.w, self.n + other.n, self.nn + other.nn,
                     self.t + other.t, self.nt + other.nt)  # fmt: skip


@dataclass(slots=True)
class Batch(Generic[T]):
    """A closed batch: its items in arrival order, why it closed, and how old its oldest
    event was then (ms, from that event's timestamp)."""

    items: list[T]
    reason: str
    wait_ms: float


@dataclass(slots=True)
class _End:
    """Put by the pump after the source's last item; ``error`` if the source raised."""

    error: BaseException | None = None


class _Open(Generic[T]):
    """The batch being filled, and the queue it is filled from."""

    def __init__(
        self,
        queue: asyncio.Queue[tuple[float, T | _End]],
        timestamp_ms: Callable[[T], float],
        batch_max: int,
    ) -> None:
        self.queue = queue
        self.timestamp_ms = timestamp_ms
        self.batch_max = batch_max
        self.items: list[T] = []
        self.oldest_ms = math.inf
        self.opened_ms = 0.0
        self.end: _End | None = None

    def add(self, entry: tuple[float, T | _End]) -> bool:
        """Take one queued entry; False at the end of the source."""
        arrived, item = entry
        if isinstance(item, _End):
            self.end = item
            return False
        if not self.items:
            self.opened_ms = arrived
        self.items.append(item)
        ts = self.timestamp_ms(item)
        self.oldest_ms = min(self.oldest_ms, ts if ts > 0 else arrived)
        return True

    def drain(self) -> bool:
        """Take what is already queued, up to ``batch_max``; False at the end."""
        while len(self.items) < self.batch_max and not self.queue.empty():
            if not self.add(self.queue.get_nowait()):
                return False
        return True

    async def settle(self) -> None:
        """Before a batch closes on ``budget`` or ``idle``: give the pump turns of the event
        loop to hand over events its source already holds. After a long batch they sit in
        the source's buffers, not yet in the queue, because the handler's model calls do not
        yield to the loop; and a source like faust's needs a few turns per event (consumer ->
        channel -> stream). Without this a backlog would be served in half-full batches.
        Stops after ``SETTLE_QUIET_TURNS`` turns that brought nothing, at ``batch_max`` or at
        the end of the source; tens of microseconds when nothing is waiting."""
        quiet = 0
        while len(self.items) < self.batch_max and quiet < SETTLE_QUIET_TURNS:
            await asyncio.sleep(0)
            if self.queue.empty():
                quiet += 1
                continue
            quiet = 0
            if not self.drain():
                return


async def budget_batches(
    source: AsyncIterable[T],
    timestamp_ms: Callable[[T], float],
    policy: BatchPolicy,
    cost: CostModel,
    *,
    clock: Callable[[], float] = wall_ms,
) -> AsyncGenerator[Batch[T], None]:
    """Batches of ``source`` closed by ``policy``; ``timestamp_ms(item)`` is the item's
    creation time on ``clock`` (a non-positive one counts as its arrival here).

    A pump task moves the source into a queue of ``batch_max`` (when it is full the pump
    waits: the source, e.g. faust's stream buffer and consumer, holds the rest), so events
    keep arriving while the consumer of the batches handles one and can be taken at once.
    The time from yielding a batch to being resumed is that batch's processing time, fed to
    ``cost``. Items are never acknowledged here: the caller does it after handling a batch.
    An error of the source is raised after the items before it are yielded.
    """
    queue: asyncio.Queue[tuple[float, T | _End]] = asyncio.Queue(maxsize=policy.batch_max)
    # While a batch waits, the pump wakes it only once the queue can fill it (or at the end
    # of the source), not at every event: one wake-up per batch, not one per event. What
    # else ends the wait is the deadline, and the decision is re-taken then.
    need = policy.batch_max
    wake = asyncio.Event()

    async def pump() -> None:
        error: BaseException | None = None
        try:
            async for item in source:
                await queue.put((clock(), item))
                if queue.qsize() >= need:
                    wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the consumer of the batches
            error = exc
        await queue.put((clock(), _End(error)))
        wake.set()

    task = asyncio.ensure_future(pump())
    try:
        end: _End | None = None
        while end is None:
            batch = _Open(queue, timestamp_ms, policy.batch_max)
            reason = IDLE
            if batch.add(await queue.get()):  # a batch opens with its first event
                while batch.drain():
                    n = len(batch.items)
                    d = policy.decide(n, oldest_ms=batch.oldest_ms, opened_ms=batch.opened_ms,
                                      now_ms=clock(), cost_ms=cost.estimate(n))  # fmt: skip
                    if d.reason is not None:
                        reason = d.reason
                        if reason != SIZE:
                            await batch.settle()
                        break
                    need = policy.batch_max - n
                    wake.clear()
                    try:
                        async with asyncio.timeout(d.wait_ms / 1000):
                            await wake.wait()
                    except TimeoutError:
                        pass
            end = batch.end
            if batch.items:
                t0 = time.perf_counter()
                yield Batch(batch.items, reason, max(0.0, clock() - batch.oldest_ms))
                cost.observe(len(batch.items), (time.perf_counter() - t0) * 1000)
        if end.error is not None:
            raise end.error
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
