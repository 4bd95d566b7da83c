"""kill -9 the worker 20 times at random points under a steady load, restarting it each time:
afterwards every event the test's producer got acknowledged has a Recommendation or a
DeadLetter (zero lost); duplicates (events answered more than once, because a killed worker
had not committed their offsets yet) are counted, and must be zero in exactly-once mode.

Random points: each cycle restarts the worker and, in 3 cycles of 4, waits until it answers
again (a recommendation produced after the restart) and kills it a random 0-3 s later, mid
stream; in the other cycles it kills it a random 0-5 s after the start, during start-up or
the group's rebalance. The seed is printed (``STREAMREC_FAULT_SEED`` replays a run's kill
points). The worker runs with faust's ``BROKER_SESSION_TIMEOUT=6`` (the broker's minimum) so
that the group evicts a killed member in seconds rather than the default 60 s, which would
make 20 cycles take 20 minutes; it changes when the partitions move, not what is processed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from stream.kafka_admin import create_topics
from stream.settings import Settings
from tests.faults._helpers import (
    LiveView,
    SteadyProducer,
    collect_acked,
    duplicate_records,
    report,
    tally,
    traffic,
)
from tests.integration.harness import Services, WorkerProcess
from topics.events import UserEvent
from topics.names import all_topics

KILLS = 20
RATE = 40.0  # events/s, steady through all the cycles
ANSWER_TIMEOUT_S = 90.0  # restart -> first answer (start-up + eviction of the killed member)

# exactly_once only where the setting exists (stream/settings.py).
GUARANTEES = ["at_least_once"]
if "processing_guarantee" in Settings.model_fields:
    GUARANTEES.append("exactly_once")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_kill9_twenty_times_loses_nothing(
    guarantee: str,
    services: Services,
    model_dir: Path,
    tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    seed = int(os.environ.get("STREAMREC_FAULT_SEED", str(time.time_ns() % 2**32)))
    print(f"\nkill -9 ({guarantee}): seed={seed} (STREAMREC_FAULT_SEED={seed} replays it)")
    rng = random.Random(seed)
    _, test = diginetica
    env = {
        "BROKER_SESSION_TIMEOUT": "6",
        "BROKER_HEARTBEAT_INTERVAL": "1",
        "STREAMREC_TEXT_ENCODER": "none",  # views only: no search, faster start-up
    }
    exactly_once = guarantee == "exactly_once"
    if exactly_once:
        env["STREAMREC_PROCESSING_GUARANTEE"] = guarantee
    worker = WorkerProcess(services, model_dir, tmp_path, extra_env=env)
    events_topic, recs_topic, dead_topic = worker.topics
    await create_topics(services.bootstrap, all_topics(worker.prefix))
    producer = SteadyProducer(services.bootstrap, events_topic, RATE)
    stop = asyncio.Event()
    t0 = time.time()
    startup_s: list[float] = []
    kill_points: list[str] = []
    restarts: list[float] = []  # wall times of the worker's starts
    try:
        async with LiveView(services.bootstrap, recs_topic) as view:
            feeding = asyncio.create_task(producer.run(traffic(test), stop=stop))
            for _ in range(KILLS):
                started = time.time()
                restarts.append(started)
                worker.start()
                if rng.random() < 0.75:
                    answering = await view.answered_since(int(started * 1000), ANSWER_TIMEOUT_S)
                    assert answering, (
                        f"no answer after restart {worker.starts}\n{worker.log_tail()}"
                    )
                    startup_s.append(time.time() - started)
                    delay = rng.uniform(0, 3)
                    await asyncio.sleep(delay)
                    kill_points.append(f"answering+{delay:.1f}s")
                else:
                    delay = rng.uniform(0, 5)
                    await asyncio.sleep(delay)
                    kill_points.append(f"start+{delay:.1f}s")
                assert worker.alive(), worker.log_tail()
                assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
            worker.start()  # the survivor drains what is left
            stop.set()
            await feeding
        got = await collect_acked(
            services.bootstrap,
            recs_topic,
            dead_topic,
            producer.acked,
            linger_s=3,
            isolation_level="read_committed" if exactly_once else "read_uncommitted",
        )
        assert worker.alive(), worker.log_tail()
    finally:
        worker.stop()
    t = tally(producer.acked, got)
    report(
        f"kill9[{guarantee}]",
        t.line(
            kills=KILLS,
            restarts=worker.starts - 1,
            resent=producer.resent,
            restart_to_answer_s=f"{min(startup_s, default=0):.1f}-{max(startup_s, default=0):.1f}",
            seconds=f"{time.time() - t0:.0f}",
            seed=seed,
        ),
    )
    print("kill points: " + ", ".join(kill_points))
    assert t.lost == 0, f"lost {t.lost} events, e.g. {t.lost_ids[:10]}\n{worker.log_tail()}"
    assert t.reasons.get("processing_error", 0) == 0, t.reasons
    if exactly_once and t.duplicated:
        dups = await duplicate_records(
            services.bootstrap, recs_topic, isolation_level="read_committed"
        )
        sample = dict(list(dups.items())[:10])
        raise AssertionError(
            f"exactly-once: {t.duplicated} duplicates; (partition, offset, produced_at_ms) "
            f"of some: {sample}; restarts at {[round(s, 3) for s in restarts]}; "
            f"log {worker.log_path}\n" + worker.log_tail(80)
        )
