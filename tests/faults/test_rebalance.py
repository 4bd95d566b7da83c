"""A second worker joins the consumer group under load, serves, and later leaves (SIGTERM):
two rebalances while events keep coming. Every event the test's producer got acknowledged is
answered or dead-lettered; duplicates (events a member handled but had not committed when its
partitions moved) are counted and printed."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path

import pytest

from stream.kafka_admin import create_topics
from tests.faults._helpers import LiveView, SteadyProducer, collect_acked, report, tally, traffic
from tests.integration.harness import Services, WorkerProcess
from topics.events import UserEvent
from topics.names import all_topics

RATE = 50.0  # events/s
PHASE_S = 10.0  # one worker, then two, then one again: this long each (after settling)
SETTLE_TIMEOUT_S = 120.0


def _answered(port: int) -> float:
    """Recommendations a worker published (its /metrics), 0 before it serves any."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    found = re.findall(r"^streamrec_recommendations_out_total\{[^}]*\} (\S+)$", text, re.M)
    return sum(float(v) for v in found)


async def _serves(worker: WorkerProcess, timeout_s: float) -> float | None:
    """Wait until ``worker`` published a recommendation: it holds partitions. Seconds taken."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if await asyncio.to_thread(_answered, worker.metrics_port) > 0:
            return time.time() - t0
        assert worker.alive(), worker.log_tail()
        await asyncio.sleep(0.5)
    return None


@pytest.mark.timeout(300)
async def test_second_worker_joins_and_leaves_under_load(
    services: Services,
    model_dir: Path,
    tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    t0 = time.time()
    _, test = diginetica
    env = {"STREAMREC_TEXT_ENCODER": "none"}
    first = WorkerProcess(services, model_dir, tmp_path / "first", extra_env=env)
    # Same run id: same topics, consumer group and Redis namespace; a log of its own.
    second = WorkerProcess(
        services, model_dir, tmp_path / "second", extra_env=env, run_id=first.run_id
    )
    events_topic, recs_topic, dead_topic = first.topics
    await create_topics(services.bootstrap, all_topics(first.prefix))
    producer = SteadyProducer(services.bootstrap, events_topic, RATE)
    stop = asyncio.Event()
    try:
        async with LiveView(services.bootstrap, recs_topic) as view:
            started = time.time()
            first.start()
            feeding = asyncio.create_task(producer.run(traffic(test), stop=stop))
            assert await view.answered_since(int(started * 1000), 90), first.log_tail()
            await asyncio.sleep(PHASE_S)

            second.start()
            join_s = await _serves(second, SETTLE_TIMEOUT_S)
            assert join_s is not None, f"the second worker never served\n{second.log_tail()}"
            await asyncio.sleep(PHASE_S)
            second_answered = _answered(second.metrics_port)
            first_before_leave = _answered(first.metrics_port)

            left_at = time.time()
            assert second.stop() == 0, second.log_tail()  # SIGTERM: leaves the group
            leave_s = time.time() - left_at
            # The first worker takes every partition back and goes on answering.
            deadline = time.time() + SETTLE_TIMEOUT_S
            while _answered(first.metrics_port) <= first_before_leave:
                assert time.time() < deadline, f"no answers after the leave\n{first.log_tail()}"
                await asyncio.sleep(0.5)
            await asyncio.sleep(PHASE_S)
            stop.set()
            await feeding
        got = await collect_acked(services.bootstrap, recs_topic, dead_topic, producer.acked)
        assert first.alive(), first.log_tail()
    finally:
        second.stop()
        first.stop()
    t = tally(producer.acked, got)
    report(
        "rebalance",
        t.line(
            second_worker_answered=int(second_answered),
            join_to_serving_s=f"{join_s:.1f}",
            leave_s=f"{leave_s:.1f}",
            seconds=f"{time.time() - t0:.0f}",
        ),
    )
    assert t.lost == 0, f"lost {t.lost} events, e.g. {t.lost_ids[:10]}\n{first.log_tail()}"
    assert t.reasons.get("processing_error", 0) == 0, t.reasons
    assert second_answered > 0
