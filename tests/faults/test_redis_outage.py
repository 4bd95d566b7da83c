"""Redis stopped for 30 s mid-stream, then started again (empty: the local Redis does not
persist): the worker does not crash, retries the stalled batch with capped backoff while
Kafka holds the backlog (its memory stays bounded), and drains the backlog once Redis is back;
every event the test's producer got acknowledged is answered or dead-lettered.

Memory bound: while Redis is down the recommend agent sits in one batch's retry loop, so what
the worker can hold of the backlog is faust's stream buffer (``stream_buffer_maxsize``, 256
events) plus the fetcher's prefetch (``max_partition_fetch_bytes``, 1 MiB a partition): a
few MiB at most, however long the outage. The assertion allows the RSS peak during the
outage 32 MiB above the peak of the steady 5 s before it: room for allocator noise, retry
exceptions and log records. It catches what grows with the time Redis is away (a leak per
retry, reconnect or log record: over 1 MiB/s for 30 s). It cannot by itself tell a bounded
buffer from an unbounded one here: the whole backlog is ~3,000 events, ~0.5 MB on the wire;
that the backlog stays in Kafka rests on the structural bound above. The test also proves the
retry path was used (``streamrec_batch_errors_total{stage="state"}`` > 0).
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path

import pytest

from stream.kafka_admin import create_topics
from tests.faults._helpers import (
    LiveView,
    RssSampler,
    SteadyProducer,
    collect_acked,
    report,
    service,
    skip_unless_own,
    tally,
    traffic,
)
from tests.integration.harness import Services, WorkerProcess
from topics.events import UserEvent
from topics.names import all_topics

RATE = 100.0  # events/s
STEADY_S = 5.0  # steady load before the outage: the RSS baseline
OUTAGE_S = 30.0
AFTER_S = 10.0  # load goes on this long after Redis is back
RSS_GROWTH_MIB = 32


def _state_retries(port: int) -> float:
    """``streamrec_batch_errors_total{stage="state"}`` from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^streamrec_batch_errors_total\{stage="state"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.timeout(300)
async def test_redis_outage_30s_worker_survives_and_drains(
    services: Services,
    model_dir: Path,
    tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    skip_unless_own("redis")
    t0 = time.time()
    _, test = diginetica
    worker = WorkerProcess(
        services, model_dir, tmp_path, extra_env={"STREAMREC_TEXT_ENCODER": "none"}
    )
    events_topic, recs_topic, dead_topic = worker.topics
    await create_topics(services.bootstrap, all_topics(worker.prefix))
    producer = SteadyProducer(services.bootstrap, events_topic, RATE)
    stop = asyncio.Event()
    redis_down = False
    try:
        async with LiveView(services.bootstrap, recs_topic) as view:
            started = time.time()
            worker.start()
            assert worker.proc is not None
            rss = RssSampler(worker.proc.pid)
            rss.start()
            feeding = asyncio.create_task(producer.run(traffic(test), stop=stop))
            assert await view.answered_since(int(started * 1000), 90), worker.log_tail()
            await asyncio.sleep(STEADY_S)
            steady = (time.time() - STEADY_S, time.time())

            service("redis", "stop")
            redis_down = True
            down_at, answers_before = time.time(), view.answers
            while time.time() - down_at < OUTAGE_S:
                assert worker.alive(), f"the worker died without Redis\n{worker.log_tail()}"
                await asyncio.sleep(0.5)
            answers_during = view.answers - answers_before
            service("redis", "start")
            redis_down = False
            up_at, backlog = time.time(), len(producer.acked)
            drained_at = await view.answers_reach(backlog, 120)
            assert drained_at is not None, f"backlog not drained\n{worker.log_tail()}"
            await asyncio.sleep(max(0.0, up_at + AFTER_S - time.time()))
            stop.set()
            await feeding
            got = await collect_acked(services.bootstrap, recs_topic, dead_topic, producer.acked)
            await rss.stop()
        assert worker.alive(), worker.log_tail()
        retries = _state_retries(worker.metrics_port)
    finally:
        if redis_down:
            service("redis", "start")
        worker.stop()
    t = tally(producer.acked, got)
    base_mib = rss.peak(*steady) / 1024
    peak_mib = rss.peak(down_at, up_at) / 1024
    report(
        "redis_outage",
        t.line(
            outage_s=OUTAGE_S,
            sent_before_redis_back=backlog,
            answered_during_outage=answers_during,
            state_retries=int(retries),
            drain_s=f"{drained_at - up_at:.1f}",
            rss_before_mib=f"{base_mib:.0f}",
            rss_peak_outage_mib=f"{peak_mib:.0f}",
            rss_bound_mib=f"{base_mib + RSS_GROWTH_MIB:.0f}",
            seconds=f"{time.time() - t0:.0f}",
        ),
    )
    assert t.lost == 0, f"lost {t.lost} events, e.g. {t.lost_ids[:10]}\n{worker.log_tail()}"
    assert t.reasons.get("processing_error", 0) == 0, t.reasons
    assert retries > 0, "the outage never reached the batch retry path"
    assert peak_mib <= base_mib + RSS_GROWTH_MIB, f"RSS grew {peak_mib - base_mib:.0f} MiB"
