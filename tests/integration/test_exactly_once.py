"""STREAMREC_PROCESSING_GUARANTEE=exactly_once: a worker killed with SIGKILL mid-stream and
restarted, and a second worker joining and leaving; each time a read_committed consumer sees
every event answered exactly once."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from pathlib import Path

from stream.kafka_admin import create_topics
from stream.replay import Collected, collect, produce
from tests.integration.harness import Services, WorkerProcess, wait_until
from topics.events import UserEvent
from topics.names import all_topics

# faust reads its settings from the environment too: a killed worker's partitions are
# reassigned after this session timeout (default 60 s) instead of a minute.
QUICK_SESSION = {"BROKER_SESSION_TIMEOUT": "10"}
EVENTS = 600
RATE = 150.0  # events/s: 4 s of traffic, the kill lands in it


def ready(port: int) -> bool:
    """The worker's /ready answers 200: it has partitions, Redis and a model."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:  # not listening yet, or 503
        return False


async def kill_mid_stream(
    services: Services, model_dir: Path, tmp_path: Path, events: list[UserEvent], guarantee: str
) -> tuple[Collected, Collected]:
    """Produce ``events`` at RATE; SIGKILL the worker once a quarter of them are answered (as
    seen by a read_uncommitted consumer), restart it; return what a read_committed and a
    read_uncommitted consumer read in the end."""
    # Batches of up to 100 ms: a kill likely lands while one is between its first published
    # output and its commit, so the abort path is exercised, not only a clean cut.
    env = {"STREAMREC_PROCESSING_GUARANTEE": guarantee, "STREAMREC_BATCH_MAX": "256",
           "STREAMREC_BATCH_WAIT_MS": "100", **QUICK_SESSION}  # fmt: skip
    worker = WorkerProcess(services, model_dir, tmp_path, extra_env=env)
    topic, recs_topic, dead_topic = worker.topics
    # Their real partition counts (4 for user-events): a batch spans partitions, and its one
    # transaction commits the offsets of all of them.
    await create_topics(services.bootstrap, all_topics(worker.prefix))
    worker.start()
    try:
        seen = 0

        def count(n: int) -> None:
            nonlocal seen
            seen += n

        watching = collect(services.bootstrap, recs_topic, dead_topic, expect=len(events),
                           timeout_s=120, progress=count)  # fmt: skip
        watcher = asyncio.create_task(watching)
        messages = [(e.user_id.encode(), e.to_bytes()) for e in events]
        sending = asyncio.create_task(produce(services.bootstrap, topic, messages, rate=RATE))
        answered = await asyncio.to_thread(wait_until, lambda: seen >= len(events) // 4, 120)
        assert answered, worker.log_tail()
        worker.stop(signal.SIGKILL)
        worker.start()
        await sending
        await watcher
        committed = await collect(
            services.bootstrap, recs_topic, dead_topic, expect=len(events), timeout_s=60,
            linger_s=5, isolation_level="read_committed",
        )  # fmt: skip
        uncommitted = await collect(services.bootstrap, recs_topic, dead_topic,
                                    expect=len(events), timeout_s=10)  # fmt: skip
        return committed, uncommitted
    finally:
        assert worker.stop() == 0, worker.log_tail()


async def test_exactly_once_survives_sigkill(
    services: Services, model_dir: Path, tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:  # fmt: skip
    _, test = diginetica
    events = test[:EVENTS]
    committed, uncommitted = await kill_mid_stream(services, model_dir, tmp_path, events,
                                                   "exactly_once")  # fmt: skip
    lost = {e.event_id for e in events} - set(committed.recommendations)  # all valid events
    aborted = uncommitted.duplicates  # outputs of aborted transactions, visible uncommitted
    print(
        f"\nexactly_once, SIGKILL mid-stream: sent {len(events)}, "
        f"answered {len(committed.recommendations)}, dead-lettered {len(committed.dead_letters)}, "
        f"lost {len(lost)}, duplicated {committed.duplicates} (read_committed); "
        f"{aborted} aborted duplicates visible to read_uncommitted"
    )
    assert not lost
    assert committed.duplicates == 0


async def test_exactly_once_through_a_join_and_leave(
    services: Services, model_dir: Path, tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:  # fmt: skip
    """A second worker joins and leaves under load (80 events/s; two rebalances, partitions
    moving both ways): read_committed sees every event answered once. Without renewing the producer
    of a partition that comes back (stream/transactions.py ``run``), a run lost 361 of 1200."""
    _, test = diginetica
    events = test[:1200]
    env = {"STREAMREC_PROCESSING_GUARANTEE": "exactly_once", **QUICK_SESSION}
    first = WorkerProcess(services, model_dir, tmp_path, extra_env=env)
    second = WorkerProcess(services, model_dir, tmp_path, extra_env=env, run_id=first.run_id)
    topic, recs_topic, dead_topic = first.topics
    await create_topics(services.bootstrap, all_topics(first.prefix))
    first.start()
    try:
        seen = 0

        def count(n: int) -> None:
            nonlocal seen
            seen += n

        watching = collect(services.bootstrap, recs_topic, dead_topic, expect=len(events),
                           timeout_s=120, progress=count)  # fmt: skip
        watcher = asyncio.create_task(watching)
        messages = [(e.user_id.encode(), e.to_bytes()) for e in events]
        sending = asyncio.create_task(produce(services.bootstrap, topic, messages, rate=80))
        assert await asyncio.to_thread(wait_until, lambda: seen >= 150, 120), first.log_tail()
        second.start()  # joins: a rebalance gives it partitions
        joined = await asyncio.to_thread(wait_until, lambda: ready(second.metrics_port), 120)
        assert joined, second.log_tail()
        mark = seen
        assert await asyncio.to_thread(wait_until, lambda: seen >= mark + 100, 120)
        assert second.stop() == 0, second.log_tail()  # leaves: another rebalance
        await sending
        await watcher
        committed = await collect(
            services.bootstrap, recs_topic, dead_topic, expect=len(events), timeout_s=60,
            linger_s=5, isolation_level="read_committed",
        )  # fmt: skip
    finally:
        second.stop()
        assert first.stop() == 0, first.log_tail()
    lost = {e.event_id for e in events} - set(committed.recommendations)
    print(
        f"\nexactly_once, a worker joins and leaves: sent {len(events)}, "
        f"answered {len(committed.recommendations)}, dead-lettered {len(committed.dead_letters)}, "
        f"lost {len(lost)}, duplicated {committed.duplicates} (read_committed)"
    )
    assert not lost
    assert committed.duplicates == 0
