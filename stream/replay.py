"""Replays events into the events topic and collects what the worker publishes back.

Used by ``streamrec demo`` and by the integration tests, so both measure the real path:
aiokafka producer -> broker -> worker -> broker -> aiokafka consumer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from topics.dead_letter import DeadLetter
from topics.recommendations import Recommendation


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
