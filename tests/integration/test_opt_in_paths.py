"""The worker's opt-in speed paths on real Kafka + Redis: the latency-budget batcher
(STREAMREC_LATENCY_BUDGET_MS) and the hot-result cache (STREAMREC_RESULT_CACHE_TTL_MS) answer
every event exactly once, and repeated contexts are served from the cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.replay import collect, produce
from tests.integration.harness import Services, WorkerProcess
from tests.integration.test_metrics_endpoint import scrape
from topics.events import EventType, UserEvent


@pytest.fixture()
def opt_in_worker(services: Services, model_dir: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(services, model_dir, tmp_path, extra_env={
        "STREAMREC_LATENCY_BUDGET_MS": "25", "STREAMREC_RESULT_CACHE_TTL_MS": "60000",
    })  # fmt: skip
    w.start()
    yield w
    w.stop()


async def test_budget_batcher_and_result_cache_answer_every_event_once(
    opt_in_worker: WorkerProcess, services: Services
) -> None:
    worker = opt_in_worker
    topic, recs_topic, dead_topic = worker.topics
    # Twenty new users whose first event is the same item: one context, so after the first
    # list is computed the others can be served from the cache (same model version).
    first = [UserEvent(f"c-{i}", EventType.VIEW, f"cu{i}", f"cs{i}", 1_464_000_000_000 + i,
                       item_id="81766") for i in range(20)]  # fmt: skip

    def messages(events: list[UserEvent]) -> list[tuple[bytes | None, bytes]]:
        return [(e.user_id.encode(), e.to_bytes()) for e in events]

    await produce(services.bootstrap, topic, messages(first[:1]))
    await collect(services.bootstrap, recs_topic, dead_topic, expect=1, timeout_s=120)
    await produce(services.bootstrap, topic, messages(first[1:]))
    got = await collect(services.bootstrap, recs_topic, dead_topic, expect=20, timeout_s=90,
                        linger_s=1.0)  # fmt: skip
    assert got.dead_letters == [] and got.duplicates == 0
    assert sorted(got.recommendations) == sorted(e.event_id for e in first)
    recs = list(got.recommendations.values())
    lists = {tuple(r.items) for r in recs}
    assert len(lists) == 1, worker.log_tail()  # one context, one list, cached or not
    m = scrape(worker.metrics_port)
    assert m.get("streamrec_result_cache_lookups_total{result=hit}", 0) >= 1, m
    closed = sum(v for k, v in m.items() if k.startswith("streamrec_batches_closed_total{"))
    assert closed >= 2 and m["streamrec_batch_wait_ms_count{}"] >= 2
