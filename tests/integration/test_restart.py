"""A stopped worker restarts and continues from its committed offsets."""

from __future__ import annotations

from stream.replay import collect, produce
from tests.integration.harness import Services, WorkerProcess
from topics.events import UserEvent


async def test_restart_continues_from_committed_offsets(
    worker: WorkerProcess, services: Services, diginetica: tuple[list[UserEvent], list[UserEvent]]
) -> None:
    _, test = diginetica
    first, second = test[:60], test[60:120]
    topic, recs_topic, dead_topic = worker.topics
    await produce(services.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in first])
    got = await collect(services.bootstrap, recs_topic, dead_topic, expect=len(first), timeout_s=90)
    assert len(got.recommendations) == len(first), worker.log_tail()

    assert worker.stop() == 0, worker.log_tail()  # graceful: commits its offsets
    # Produced while no worker runs: must be picked up after the restart, nothing earlier.
    await produce(services.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in second])
    worker.start()
    total = len(first) + len(second)
    got = await collect(
        services.bootstrap, recs_topic, dead_topic, expect=total, timeout_s=90, linger_s=3
    )
    assert set(got.recommendations) == {e.event_id for e in first + second}, worker.log_tail()
    assert got.duplicates == 0, "the restarted worker re-processed committed events"
