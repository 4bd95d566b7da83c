"""The Kafka broker restarted mid-stream (``kafka.sh stop``, a few seconds down, ``kafka.sh
start``; its data kept): the worker reconnects by itself and goes on answering, and every
event the test's producer got acknowledged is answered or dead-lettered. The producer keeps
sending through the restart; what the broker refused or timed out it sends again, and only
acknowledged events count as sent."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from stream.kafka_admin import create_topics
from tests.faults._helpers import (
    LiveView,
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

RATE = 50.0  # events/s
STEADY_S = 5.0
DOWN_S = 5.0  # broker stopped this long (after its orderly shutdown)
AFTER_S = 15.0  # load goes on this long after the broker answers again


@pytest.mark.timeout(300)
async def test_broker_restart_worker_reconnects_and_loses_nothing(
    services: Services,
    model_dir: Path,
    tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    skip_unless_own("kafka")
    t0 = time.time()
    _, test = diginetica
    worker = WorkerProcess(
        services, model_dir, tmp_path, extra_env={"STREAMREC_TEXT_ENCODER": "none"}
    )
    events_topic, recs_topic, dead_topic = worker.topics
    await create_topics(services.bootstrap, all_topics(worker.prefix))
    producer = SteadyProducer(services.bootstrap, events_topic, RATE)
    stop = asyncio.Event()
    broker_down = False
    try:
        async with LiveView(services.bootstrap, recs_topic) as view:
            started = time.time()
            worker.start()
            feeding = asyncio.create_task(producer.run(traffic(test), stop=stop))
            assert await view.answered_since(int(started * 1000), 90), worker.log_tail()
            await asyncio.sleep(STEADY_S)

            down_at = time.time()
            broker_down = True
            await asyncio.to_thread(service, "kafka", "stop")
            stopped_s = time.time() - down_at
            await asyncio.sleep(DOWN_S)
            assert worker.alive(), f"the worker died without the broker\n{worker.log_tail()}"
            await asyncio.to_thread(service, "kafka", "start")
            broker_down = False
            up_at = time.time()
            resumed = await view.answered_since(int(up_at * 1000), 120)
            assert resumed, f"no answer after the broker came back\n{worker.log_tail()}"
            resumed_s = time.time() - up_at

            await asyncio.sleep(max(0.0, up_at + AFTER_S - time.time()))
            stop.set()
            await feeding
        got = await collect_acked(services.bootstrap, recs_topic, dead_topic, producer.acked)
        assert worker.alive(), worker.log_tail()
    finally:
        if broker_down:
            service("kafka", "start")
        worker.stop()
    t = tally(producer.acked, got)
    report(
        "broker_restart",
        t.line(
            resent=producer.resent,
            send_errors=producer.send_errors,
            broker_stop_s=f"{stopped_s:.1f}",
            broker_down_s=f"{up_at - down_at:.1f}",
            broker_up_to_answer_s=f"{resumed_s:.1f}",
            seconds=f"{time.time() - t0:.0f}",
        ),
    )
    assert t.lost == 0, f"lost {t.lost} events, e.g. {t.lost_ids[:10]}\n{worker.log_tail()}"
    assert t.reasons.get("processing_error", 0) == 0, t.reasons
