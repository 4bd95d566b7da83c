"""Replays events into the events topic and collects what the worker publishes back.

Used by ``streamrec demo`` and by the integration tests, so both measure the real path:
aiokafka producer -> broker -> worker -> broker -> aiokafka consumer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tqdm import tqdm

from stream.kafka_admin import create_topics, delete_topics
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
) -> float:
    """Send ``(key, value)`` pairs; ``rate`` events/s (0 = as fast as possible).

    Returns the wall time (s) of the first send. Record timestamps are the send time, which
    is what the worker's trigger-to-publish latency is measured from.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
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
) -> Collected:
    """Read both output topics from their beginning until ``expect`` records (recommendations
    + dead letters) arrived or ``timeout_s`` passed since the last record; then go on reading
    for ``linger_s`` so that late duplicates are counted too."""
    consumer = AIOKafkaConsumer(
        recommendations_topic,
        dead_letter_topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
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
            asyncio.run(delete_topics(self.bootstrap, list(self.topics)))
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
