"""Replays events into the events topic and collects what the worker publishes back.

Used by ``streamrec demo``, ``streamrec replay`` and by the integration tests, so all measure
the real path: aiokafka producer -> broker -> worker -> broker -> aiokafka consumer. The
second half reads a range of an existing (production) topic for ``streamrec replay --topic``:
read-only, with a consumer of its own that never commits.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from tqdm import tqdm

from stream.kafka_admin import create_topics, delete_topics
from stream.transport import KafkaSecurity, kafka_kwargs
from topics.dead_letter import DeadLetter
from topics.events import EventType, UserEvent
from topics.names import all_topics, topic_names
from topics.recommendations import Recommendation

PROBE_ID = "probe-0"


@dataclass
class Collected:
    recommendations: dict[str, Recommendation] = field(default_factory=dict)
    keys: dict[str, bytes | None] = field(default_factory=dict)
    duplicates: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    first_sent_s: float = 0.0
    last_received_s: float = 0.0


async def produce(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes]],
    *,
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
    security: KafkaSecurity | None = None,
) -> float:
    """Send ``(key, value)`` pairs; ``rate`` events/s (0 = as fast as possible).

    Returns the wall time (s) of the first send. Record timestamps are the send time, which
    is what the worker's trigger-to-publish latency is measured from. ``security`` (here and
    below) None: the configuration in the environment (stream/transport.py).
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=1, **kafka_kwargs(security)
    )
    await producer.start()
    try:
        start = time.time()
        for i, (key, value) in enumerate(messages):
            if rate > 0:
                delay = start + i / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await producer.send(topic, value=value, key=key)
            if progress is not None:
                progress(1)
        await producer.flush()
        return start
    finally:
        await producer.stop()


async def collect(
    bootstrap: str,
    recommendations_topic: str,
    dead_letter_topic: str,
    *,
    expect: int,
    timeout_s: float,
    group_id: str | None = None,
    progress: Callable[[int], None] | None = None,
    ready: asyncio.Event | None = None,
    linger_s: float = 0.0,
    security: KafkaSecurity | None = None,
    isolation_level: str = "read_uncommitted",
) -> Collected:
    """Read both output topics from their beginning until ``expect`` records (recommendations
    + dead letters) arrived or ``timeout_s`` passed since the last record; then go on reading
    for ``linger_s`` so that late duplicates are counted too. ``isolation_level``
    ``"read_committed"`` reads only committed transactions: what a consumer of a worker with
    ``STREAMREC_PROCESSING_GUARANTEE=exactly_once`` sees (docs/reliability.md)."""
    consumer = AIOKafkaConsumer(
        recommendations_topic,
        dead_letter_topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
        **kafka_kwargs(security),
    )
    await consumer.start()
    out = Collected()
    try:
        if ready is not None:
            ready.set()
        deadline = time.time() + timeout_s
        linger_until: float | None = None
        while time.time() < deadline:
            if len(out.recommendations) + len(out.dead_letters) >= expect:
                if linger_until is None:
                    linger_until = time.time() + linger_s
                if time.time() >= linger_until:
                    break
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            for tp, records in batches.items():
                for rec in records:
                    if rec.value is None:
                        continue
                    if tp.topic == dead_letter_topic:
                        out.dead_letters.append(DeadLetter.from_bytes(rec.value))
                    else:
                        r = Recommendation.from_bytes(rec.value)
                        if r.event_id in out.recommendations:
                            out.duplicates += 1
                        out.recommendations[r.event_id] = r
                        out.keys[r.event_id] = rec.key
                    if progress is not None:
                        progress(1)
                    out.last_received_s = time.time()
                    deadline = time.time() + timeout_s
        return out
    finally:
        await consumer.stop()


def worker_env(
    bootstrap: str, redis_url: str, model_dir: Path, name: str, **overrides: str
) -> dict[str, str]:
    """The environment of a worker isolated under ``name``: topic prefix ``<name>.``, its own
    consumer group and Redis namespace; ``overrides`` are further settings."""
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        REDIS_URL=redis_url,
        STREAMREC_TOPIC_PREFIX=f"{name}.",
        STREAMREC_NAMESPACE=name,
        STREAMREC_GROUP_ID=name,
        STREAMREC_MODEL_DIR=str(model_dir),
    )
    env.update(overrides)
    return env


@dataclass
class IsolatedRun:
    """A ``streamrec worker`` process with topics, a consumer group and a Redis namespace of
    its own (``<name>.`` prefix), so a demo or replay never touches production state or
    topics. Use as a context manager: topics are created and the worker started on entry, the
    worker stopped (SIGTERM, then SIGKILL after 30 s) and the topics deleted on exit."""

    bootstrap: str
    redis_url: str
    model_dir: Path
    name: str
    log_dir: Path
    log_level: str = "WARNING"
    state_ttl_s: int = 3600
    proc: subprocess.Popen[bytes] | None = None

    @property
    def prefix(self) -> str:
        return f"{self.name}."

    @property
    def topics(self) -> tuple[str, str, str]:
        return topic_names(self.prefix)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-worker.log"

    def __enter__(self) -> IsolatedRun:
        asyncio.run(create_topics(self.bootstrap, all_topics(self.prefix)))
        env = worker_env(
            self.bootstrap,
            self.redis_url,
            self.model_dir,
            self.name,
            STREAMREC_LOG_LEVEL=self.log_level,
            STREAMREC_STATE_TTL_S=str(self.state_ttl_s),
            STREAMREC_METRICS_PORT="0",
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "worker"],
                env=env,
                cwd=Path(__file__).resolve().parent.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        try:
            asyncio.run(delete_topics(self.bootstrap, [t.name for t in all_topics(self.prefix)]))
        except Exception as err:  # cleanup must not hide the run's own outcome
            print(f"note: could not delete the run's topics: {err}")


async def wait_ready(bootstrap: str, topics: tuple[str, str, str], timeout_s: float = 120) -> None:
    """Send one probe event and wait for its answer: proof that the worker joined its group
    and serves. The probe's recommendation stays in the output topic; callers drop
    ``PROBE_ID``."""
    events_topic, recs_topic, dead_topic = topics
    probe = UserEvent(
        PROBE_ID,
        EventType.VIEW,
        "probe-user",
        "probe-session",
        int(time.time() * 1000),
        item_id="probe-item",
    )
    await produce(bootstrap, events_topic, [(b"probe-user", probe.to_bytes())])
    got = await collect(bootstrap, recs_topic, dead_topic, expect=1, timeout_s=timeout_s)
    if PROBE_ID not in got.recommendations:
        raise RuntimeError(f"the worker did not answer the readiness probe within {timeout_s} s")


async def replay_messages(
    bootstrap: str,
    topics: tuple[str, str, str],
    messages: Sequence[tuple[bytes | None, bytes]],
    *,
    rate: float = 0.0,
    timeout_s: float = 60,
) -> tuple[Collected, float]:
    """Produce ``messages`` (after the readiness probe) and collect one answer per message,
    with progress bars; returns what came back and the wall time of the first send."""
    await wait_ready(bootstrap, topics)
    events_topic, recs_topic, dead_topic = topics
    expect = len(messages) + 1  # + the probe's answer
    with (
        tqdm(total=len(messages), desc="replay", unit="ev") as sent_bar,
        tqdm(total=expect, desc="answers", unit="rec") as recv_bar,
    ):
        ready = asyncio.Event()
        collector = asyncio.create_task(
            collect(
                bootstrap,
                recs_topic,
                dead_topic,
                expect=expect,
                timeout_s=timeout_s,
                progress=recv_bar.update,
                ready=ready,
            )
        )
        await ready.wait()
        start = await produce(
            bootstrap, events_topic, messages, rate=rate, progress=sent_bar.update
        )
        collected = await collector
    collected.recommendations.pop(PROBE_ID, None)
    collected.keys.pop(PROBE_ID, None)
    return collected, start


# --- A range of a live topic (``streamrec replay --topic T --from A --to B``) -----------------

BoundKind = Literal["earliest", "latest", "offset", "time"]
# Bare integers below this are refused as times: 1e11 ms is March 1973, so a small number is
# far more likely an offset or seconds typed by mistake than a real record time.
MIN_EPOCH_MS = 100_000_000_000
_DIGITS = re.compile(r"[0-9]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RangeBound:
    """One end of a topic range: ``earliest`` / ``latest`` (the log's start / its end when
    the replay starts), ``offset:N`` (that offset on every partition) or a record time in
    epoch ms (Kafka record timestamps, resolved per partition with ``offsets_for_times``)."""

    kind: BoundKind
    value: int = 0

    def __str__(self) -> str:
        if self.kind in ("earliest", "latest"):
            return self.kind
        if self.kind == "offset":
            return f"offset:{self.value}"
        when = datetime.fromtimestamp(self.value / 1000, tz=UTC)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_bound(text: str) -> RangeBound:
    """Parse a ``--from`` / ``--to`` value: ``earliest``, ``latest``, ``offset:N``, epoch ms
    (``1795132800000``) or ISO-8601 (``2026-11-20T00:00:00Z``; no offset means UTC). Raises
    ``ValueError`` with a message that names the accepted forms, for the CLI to print."""
    spec = text.strip()
    forms = "earliest, latest, offset:N, epoch ms or an ISO-8601 time"
    if not spec:
        raise ValueError(f"empty range bound; give one of {forms}")
    low = spec.lower()
    if low == "earliest":
        return RangeBound("earliest")
    if low == "latest":
        return RangeBound("latest")
    if low.startswith("offset:"):
        number = spec[len("offset:") :].strip()
        if not _DIGITS.fullmatch(number):
            raise ValueError(f"{text!r}: an offset is a whole number >= 0 (offset:1200)")
        return RangeBound("offset", int(number))
    if _DIGITS.fullmatch(spec):
        ms = int(spec)
        if ms < MIN_EPOCH_MS:
            raise ValueError(
                f"{text!r} is too small for epoch milliseconds (before 1973); "
                f"for an offset write offset:{spec}, for seconds multiply by 1000"
            )
        return RangeBound("time", ms)
    try:
        when = datetime.fromisoformat(spec)
    except ValueError:
        raise ValueError(f"{text!r} is not a range bound; give one of {forms}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # Integer arithmetic: float seconds * 1000 can land a millisecond short.
    ms = (when - _EPOCH) // timedelta(milliseconds=1)
    if ms < 0:  # Kafka reads timestamps -1 / -2 as "latest" / "earliest"
        raise ValueError(f"{text!r} is before 1970: no Kafka record has such a time")
    return RangeBound("time", ms)


def check_range(start: RangeBound, stop: RangeBound) -> None:
    """Refuse ranges that are empty by construction (``--from latest``, ``--to earliest``) or
    reversed (both times or both offsets, FROM after TO): a typo there would otherwise start a
    worker to replay nothing. Raises ``ValueError``."""
    if start.kind == "latest":
        raise ValueError("--from latest is always empty: the range ends at the latest offset")
    if stop.kind == "earliest":
        raise ValueError("--to earliest is always empty: the range starts at the earliest offset")
    if start.kind == stop.kind and start.value > stop.value:
        raise ValueError(f"--from {start} is after --to {stop}")


def bound_offset(bound: RangeBound, *, beginning: int, end: int, time_offset: int | None) -> int:
    """The offset ``bound`` means on one partition whose log spans ``[beginning, end)``;
    ``time_offset`` is what ``offsets_for_times`` answered for a time bound (``None``: no
    record at or after that time, so the end). Always clamped into the log, so a range never
    waits for records that do not exist or asks for ones retention already deleted."""
    if bound.kind == "earliest":
        offset = beginning
    elif bound.kind == "latest":
        offset = end
    elif bound.kind == "offset":
        offset = bound.value
    else:
        offset = end if time_offset is None else time_offset
    return min(max(offset, beginning), end)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One record read from the source topic, kept raw: it is validated by the caller and
    forwarded byte for byte, so the replay's worker sees what production's saw."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass
class TopicRange:
    """What ``read_topic_range`` read: per partition ``[start, stop)`` offsets and records."""

    topic: str
    ranges: dict[int, tuple[int, int]]
    records: dict[int, list[SourceRecord]]

    def __len__(self) -> int:
        return sum(len(r) for r in self.records.values())


class TopicRangeError(RuntimeError):
    """The range cannot be read (no such topic, or reading stalled); the message says why."""


def merge_partitions(records: dict[int, list[SourceRecord]]) -> list[SourceRecord]:
    """All partitions in one list, by record time. ``heapq.merge`` only ever takes the head of
    a partition, so each partition keeps its offset order (one user's events stay in the order
    production processed them) even where its record times are not monotonic."""
    return list(heapq.merge(*records.values(), key=lambda r: r.timestamp_ms))


async def topic_partitions(
    bootstrap: str, topic: str, *, security: KafkaSecurity | None = None
) -> list[int]:
    """The partition ids of an existing ``topic``; ``TopicRangeError`` when it does not exist.
    Asked of the admin API because a consumer only knows partitions of topics it assigned or
    subscribed, and existence is checked first so that the lookup can never auto-create it."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=15_000, **kafka_kwargs(security)
    )
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            raise TopicRangeError(f"no topic {topic!r} on {bootstrap}")
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for t in described:
        if t["topic"] == topic and t["error_code"] == 0 and t["partitions"]:
            return sorted(int(p["partition"]) for p in t["partitions"])
    raise TopicRangeError(f"no partition metadata for {topic!r} on {bootstrap}: {described}")


async def _time_offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], bound: RangeBound
) -> dict[TopicPartition, int | None]:
    if bound.kind != "time" or not tps:
        return {}
    found = await consumer.offsets_for_times({tp: bound.value for tp in tps})
    return {tp: (hit.offset if hit is not None else None) for tp, hit in found.items()}


async def read_topic_range(
    bootstrap: str,
    topic: str,
    start: RangeBound,
    stop: RangeBound,
    *,
    group_id: str,
    idle_timeout_s: float = 30.0,
    security: KafkaSecurity | None = None,
) -> TopicRange:
    """Read ``[start, stop)`` of every partition of ``topic`` with a plain consumer:
    ``assign()`` + ``seek()``, never a subscription, and auto-commit off with no commit
    anywhere, so ``group_id`` (the replay's own) never gets offsets and no production group's
    offsets move. ``latest`` is the end of each partition when the read starts, so a live topic
    cannot keep the replay going. Raises ``TopicRangeError`` for a missing topic, or when no
    record arrived for ``idle_timeout_s`` while partitions were still short of their end."""
    security = security if security is not None else KafkaSecurity.from_env()
    partitions = await topic_partitions(bootstrap, topic, security=security)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_kwargs(security),
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        beginning = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        start_times = await _time_offsets(consumer, tps, start)
        stop_times = await _time_offsets(consumer, tps, stop)
        ranges: dict[int, tuple[int, int]] = {}
        for tp in tps:
            b, e = beginning[tp], end[tp]
            first = bound_offset(start, beginning=b, end=e, time_offset=start_times.get(tp))
            last = bound_offset(stop, beginning=b, end=e, time_offset=stop_times.get(tp))
            ranges[tp.partition] = (first, max(first, last))
        records: dict[int, list[SourceRecord]] = {p: [] for p in partitions}
        # Partition -> end offset (exclusive) of those with something to read.
        active = {
            tp: ranges[tp.partition][1]
            for tp in tps
            if ranges[tp.partition][1] > ranges[tp.partition][0]
        }
        if active:
            consumer.assign(list(active))
            for tp in active:
                consumer.seek(tp, ranges[tp.partition][0])
        last_progress = time.monotonic()
        while active:
            batches = await consumer.getmany(*active, timeout_ms=500, max_records=5000)
            for tp, batch in batches.items():
                end_offset = active.get(tp)
                if end_offset is None:
                    continue
                records[tp.partition].extend(
                    SourceRecord(tp.partition, r.offset, r.timestamp, r.key, r.value)
                    for r in batch
                    if r.offset < end_offset
                )
            if batches:
                last_progress = time.monotonic()
            for tp in list(active):
                if await consumer.position(tp) >= active[tp]:
                    consumer.pause(tp)
                    del active[tp]
            if active and time.monotonic() - last_progress > idle_timeout_s:
                short = {tp.partition: await consumer.position(tp) for tp in active}
                raise TopicRangeError(
                    f"{topic}: no record for {idle_timeout_s:.0f} s with partitions short of "
                    f"their end (partition: position {short}, ranges {ranges})"
                )
        return TopicRange(topic, ranges, records)
    finally:
        await consumer.stop()
