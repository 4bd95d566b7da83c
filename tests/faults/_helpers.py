"""What the fault-injection tests share: a steady producer that never loses an event of its
own (it re-sends what the broker did not acknowledge and counts only what it did), a live
view of the output topics (to time faults against the worker's progress), the final tally
(sent, answered, dead-lettered, lost, duplicated) and a sampler of a process's RSS.

Every test feeds the held-out DIGINETICA sample events (the ``diginetica`` fixture's test
part, in time order); a test that needs more traffic than the 1,790 events replays them in
further passes whose event ids carry a ``~pN`` suffix, so every sent event id is unique and
"lost" and "duplicated" stay well defined.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from stream.replay import Collected, collect
from stream.services import LOCAL
from tests.integration.conftest import KAFKA_PORT, REDIS_PORT
from topics.events import UserEvent
from topics.recommendations import Recommendation

SEND_TIMEOUT_MS = 10_000
# "test: counts" lines of this session, printed again in pytest's terminal summary
# (tests/faults/conftest.py), so that a run without ``-s`` (``make test``) shows them too.
REPORTED: list[str] = []


def report(test: str, line: str) -> None:
    print(f"\n{test}: {line}")
    REPORTED.append(f"{test}: {line}")


def traffic(events: Sequence[UserEvent], passes: int | None = None) -> Iterator[UserEvent]:
    """``events`` in order, then again as pass 1, 2, ... (event ids ``<id>~p<N>``); endless
    when ``passes`` is None."""
    n = 0
    while passes is None or n < passes:
        for e in events:
            yield e if n == 0 else replace(e, event_id=f"{e.event_id}~p{n}")
        n += 1


@dataclass
class SteadyProducer:
    """Sends ``source`` at ``rate`` events/s (keyed by user, acks=all) until it is exhausted,
    ``limit`` events were taken from it or ``stop`` is set; then waits until every taken event
    is acknowledged. A send the broker refused or timed out is sent again (``resent``), so
    the only events the test counts as sent are those in ``acked``: a broker outage can cost
    the test's producer nothing. A re-sent event may reach the topic twice (the first send
    may have landed after all); its answers then count as duplicates, never as lost."""

    bootstrap: str
    topic: str
    rate: float
    acked: set[str] = field(default_factory=set)
    taken: int = 0
    resent: int = 0
    send_errors: int = 0
    _retry: list[UserEvent] = field(default_factory=list)
    _in_flight: int = 0

    async def run(
        self,
        source: Iterator[UserEvent],
        *,
        limit: int | None = None,
        stop: asyncio.Event | None = None,
        drain_timeout_s: float = 180.0,
    ) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=5,
            request_timeout_ms=SEND_TIMEOUT_MS,
            retry_backoff_ms=250,
        )
        await self._start(producer, drain_timeout_s)
        try:
            t0 = time.time()
            sent = 0
            while limit is None or self.taken < limit:
                if stop is not None and stop.is_set():
                    break
                delay = t0 + sent / self.rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                event: UserEvent | None
                if self._retry:
                    event = self._retry.pop(0)
                    self.resent += 1
                else:
                    event = next(source, None)
                    if event is None:
                        break
                    self.taken += 1
                await self._send(producer, event)
                sent += 1
            deadline = time.time() + drain_timeout_s
            while (self._retry or self._in_flight) and time.time() < deadline:
                if self._retry:
                    self.resent += 1
                    await self._send(producer, self._retry.pop(0))
                else:
                    await asyncio.sleep(0.05)
            if self._retry or self._in_flight:
                raise AssertionError(
                    f"the test's producer could not deliver {len(self._retry)} events "
                    f"({self._in_flight} in flight) within {drain_timeout_s:.0f} s"
                )
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _start(self, producer: AIOKafkaProducer, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while True:
            try:
                await producer.start()
                return
            except KafkaError:
                if time.time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _send(self, producer: AIOKafkaProducer, event: UserEvent) -> None:
        try:
            fut = await producer.send(
                self.topic, value=event.to_bytes(), key=event.user_id.encode()
            )
        except KafkaError:  # no metadata within the timeout: the broker is away
            self.send_errors += 1
            self._retry.append(event)
            await asyncio.sleep(0.2)
            return
        self._in_flight += 1
        fut.add_done_callback(lambda f, e=event: self._done(f, e))

    def _done(self, fut: asyncio.Future[object], event: UserEvent) -> None:
        self._in_flight -= 1
        if fut.cancelled() or fut.exception() is not None:
            self.send_errors += 1
            self._retry.append(event)
        else:
            self.acked.add(event.event_id)


@dataclass
class LiveView:
    """Follows the recommendations topic while a test runs: how many answers arrived and the
    newest ``produced_at_ms`` among them. Used only to time faults (e.g. "the restarted worker
    answers again"); the verdict comes from ``stream.replay.collect`` afterwards."""

    bootstrap: str
    topic: str
    answers: int = 0
    newest_produced_ms: int = 0
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LiveView:
        started = asyncio.Event()
        self._task = asyncio.create_task(self._follow(started))
        await asyncio.wait_for(started.wait(), 60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _follow(self, started: asyncio.Event) -> None:
        while True:  # reconnects by itself when a test restarts the broker
            consumer = AIOKafkaConsumer(
                self.topic,
                bootstrap_servers=self.bootstrap,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
            )
            try:
                await consumer.start()
                started.set()
                while True:
                    batches = await consumer.getmany(timeout_ms=200)
                    for records in batches.values():
                        for rec in records:
                            if rec.value is None:
                                continue
                            r = Recommendation.from_bytes(rec.value)
                            self.answers += 1
                            self.newest_produced_ms = max(self.newest_produced_ms, r.produced_at_ms)
            except KafkaError:
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def answered_since(self, since_ms: int, timeout_s: float) -> bool:
        """Wait until a recommendation produced at or after ``since_ms`` arrived."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.newest_produced_ms >= since_ms:
                return True
            await asyncio.sleep(0.05)
        return self.newest_produced_ms >= since_ms

    async def answers_reach(self, n: int, timeout_s: float) -> float | None:
        """Wait until ``n`` answers arrived (duplicates included); the time they did."""
        deadline = time.time() + timeout_s
        while self.answers < n:
            if time.time() > deadline:
                return None
            await asyncio.sleep(0.05)
        return time.time()


@dataclass
class Tally:
    sent: int
    answered: int
    dead_lettered: int
    lost: int
    duplicated: int
    lost_ids: list[str]
    reasons: dict[str, int]

    def line(self, **extra: object) -> str:
        """The one line each fault test prints: the counts, then the test's own numbers."""
        parts = [
            f"sent={self.sent}",
            f"answered={self.answered}",
            f"dead_lettered={self.dead_lettered}",
            f"lost={self.lost}",
            f"duplicated={self.duplicated}",
        ]
        parts += [f"{k}={v}" for k, v in extra.items()]
        return ", ".join(parts)


async def collect_acked(
    bootstrap: str,
    recs_topic: str,
    dead_topic: str,
    acked: set[str],
    *,
    linger_s: float = 2.0,
    isolation_level: str = "read_uncommitted",
) -> Collected:
    """Every answer to the events the broker acknowledged (``SteadyProducer.acked``), read
    from the start of the output topics; waits up to 90 s for all of them, then ``linger_s``
    more for late duplicates."""
    return await collect(
        bootstrap,
        recs_topic,
        dead_topic,
        expect=len(acked),
        timeout_s=90,
        linger_s=linger_s,
        isolation_level=isolation_level,
    )


def _dead_letter_event_id(raw: bytes) -> str | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = doc.get("event_id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def tally(acked: set[str], got: Collected) -> Tally:
    """Every acknowledged input event must have a Recommendation or a DeadLetter (else it is
    lost); an output for an event id already answered is a duplicate (recommendations as
    counted by ``collect``, plus repeated dead letters)."""
    dead: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for letter in got.dead_letters:
        reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
        event_id = _dead_letter_event_id(letter.raw)
        if event_id is not None:
            dead[event_id] = dead.get(event_id, 0) + 1
    answered = acked & set(got.recommendations)
    dead_lettered = (acked - answered) & set(dead)
    lost = sorted(acked - answered - dead_lettered)
    duplicated = got.duplicates + sum(n - 1 for n in dead.values())
    return Tally(
        len(acked), len(answered), len(dead_lettered), len(lost), duplicated, lost, reasons
    )


def rss_kib(pid: int) -> int | None:
    """The process's resident set size (``VmRSS`` of /proc/<pid>/status), None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class RssSampler:
    """Samples a process's RSS every ``interval_s`` in the background (KiB values)."""

    pid: int
    interval_s: float = 0.25
    samples: list[tuple[float, int]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            kib = rss_kib(self.pid)
            if kib is not None:
                self.samples.append((time.time(), kib))
            await asyncio.sleep(self.interval_s)

    def peak(self, start: float, end: float) -> int:
        inside = [kib for t, kib in self.samples if start <= t <= end]
        return max(inside) if inside else 0


def service(name: str, action: str) -> None:
    """``deploy/local/<name>.sh <action>`` ("kafka" / "redis"; "stop" / "start") on this
    session's test port (STREAMREC_TEST_KAFKA_PORT / STREAMREC_TEST_REDIS_PORT)."""
    port = KAFKA_PORT if name == "kafka" else REDIS_PORT
    env = dict(os.environ, **{f"STREAMREC_{name.upper()}_PORT": str(port)})
    subprocess.run([str(LOCAL / f"{name}.sh"), action], env=env, check=True)


def skip_unless_own(*names: str) -> None:
    """Skip a test that stops or restarts ``names`` when the environment points them at
    services this session did not start (never stop someone else's broker)."""
    variables = {"kafka": "KAFKA_BOOTSTRAP_SERVERS", "redis": "REDIS_URL"}
    external = [variables[n] for n in names if os.environ.get(variables[n])]
    if external:
        pytest.skip(f"{', '.join(external)} names an external service; this test restarts it")


async def duplicate_records(
    bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted"
) -> dict[str, list[tuple[int, int, int]]]:
    """Event id -> [(partition, offset, produced_at_ms)] of every recommendation answering an
    event more than once: the evidence a failing duplicate assertion prints."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    seen: dict[str, list[tuple[int, int, int]]] = {}
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=2000, max_records=5000)
            if not batches:
                break
            for tp, records in batches.items():
                for rec in records:
                    if rec.value is not None:
                        r = Recommendation.from_bytes(rec.value)
                        seen.setdefault(r.event_id, []).append(
                            (tp.partition, rec.offset, r.produced_at_ms)
                        )
    finally:
        await consumer.stop()
    return {k: v for k, v in seen.items() if len(v) > 1}
