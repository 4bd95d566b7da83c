"""A click flood from one user, through a real worker: the flood is flagged, answered
non-personalised and counted in /metrics, and the other users' recommendations are exactly
what they are without it.

Two workers side by side (own topics and Redis namespaces), the same model:

* flood run: the bot sends 2,000 views in 20 s of event time (6,000 a minute, against the
  default bound of 120): the first 120 alternate between the two items the other users view
  most, the rest between the next two, so that, were the flagged share learnt, it would put
  those two on top of trending and link them in online co-visitation;
* baseline run: the bot sends only the first 120 of those views, the share a rate bound lets
  through before it can tell (the detector counts in event time from a minute boundary, so
  exactly the first 120 are under the bound).

Then 150 held-out DIGINETICA events of other users go to both workers one at a time (each
sent when the previous one is answered, so both runs see the same order across users and the
same micro-batches, one event each) and their recommendations must be identical: the 1,880
flagged events changed nothing anyone else sees. With detection off on the flooded worker, 1
of the 150 lists differs (checked by hand; docs/security.md): the test does see a leak.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.kafka_admin import create_topics
from stream.replay import collect, produce, wait_ready
from tests.integration.harness import Services, WorkerProcess
from topics.events import EventType, UserEvent
from topics.names import all_topics
from topics.recommendations import Recommendation

FLOOD = 2000
BOUND = 120  # STREAMREC_ANOMALY_USER_EVENTS_PER_MIN (the default, set explicitly)
OTHERS = 150


def flood_events(start_ms: int, items: list[str], n: int) -> list[UserEvent]:
    """``n`` views by one user, 10 ms apart: the first BOUND alternate between ``items[0:2]``,
    the rest (the share to be flagged) between ``items[2:4]``, so that what the flagged share
    would teach (trending, co-visitation of two other items) shows if it leaks."""
    item = [items[i % 2] if i < BOUND else items[2 + i % 2] for i in range(n)]
    at = [start_ms + i * 10 for i in range(n)]
    return [UserEvent(f"bot-{i}", EventType.VIEW, "bot", "bot-s", at[i], item_id=item[i])
            for i in range(n)]  # fmt: skip


async def answer_one_by_one(
    services: Services, worker: WorkerProcess, events: list[UserEvent]
) -> dict[str, Recommendation]:
    """Send each event once the previous one is answered; the answers by event id."""
    topic, recs_topic, _ = worker.topics
    consumer = AIOKafkaConsumer(recs_topic, bootstrap_servers=services.bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=services.bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    got: dict[str, Recommendation] = {}
    try:
        for e in events:
            await producer.send_and_wait(topic, e.to_bytes(), key=e.user_id.encode())
            deadline = time.time() + 60
            while e.event_id not in got:
                assert time.time() < deadline, f"no answer to {e.event_id}: {worker.log_tail()}"
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for r in records:
                        if r.value is not None:
                            rec = Recommendation.from_bytes(r.value)
                            got[rec.event_id] = rec
    finally:
        await producer.stop()
        await consumer.stop()
    return {e.event_id: got[e.event_id] for e in events}


def metric(port: int, name: str, kind: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'^{name}\{{kind="{kind}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else -1.0


@pytest.mark.timeout(300)
async def test_a_flooding_user_is_flagged_and_leaves_other_users_unaffected(
    services: Services,
    model_dir: Path,
    tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    _, test = diginetica
    others = test[:OTHERS]
    items = [i for i, _ in Counter(e.item_id for e in others).most_common(4) if i is not None]
    start = others[0].timestamp_ms // 60_000 * 60_000  # a minute boundary of event time
    env = {"STREAMREC_TEXT_ENCODER": "none", "STREAMREC_ANOMALY_USER_EVENTS_PER_MIN": str(BOUND),
           "STREAMREC_ANOMALY_SESSION_EVENTS_PER_MIN": str(BOUND)}  # fmt: skip
    flood_run = WorkerProcess(services, model_dir, tmp_path, extra_env=env)
    baseline = WorkerProcess(services, model_dir, tmp_path, extra_env=env)
    for w in (flood_run, baseline):
        await create_topics(services.bootstrap, all_topics(w.prefix))
        w.start()
    try:
        await asyncio.gather(*(wait_ready(services.bootstrap, w.topics, timeout_s=180)
                               for w in (flood_run, baseline)))  # fmt: skip

        async def bot(w: WorkerProcess, n: int) -> list[Recommendation]:
            events = flood_events(start, items, n)
            topic, recs_topic, dead_topic = w.topics
            await produce(services.bootstrap, topic, [(b"bot", e.to_bytes()) for e in events])
            got = await collect(services.bootstrap, recs_topic, dead_topic, expect=n + 1,
                                timeout_s=90)  # fmt: skip
            return [got.recommendations[e.event_id] for e in events]

        flooded, prefix = await asyncio.gather(bot(flood_run, FLOOD), bot(baseline, BOUND))
        keys_during = metric(flood_run.metrics_port, "streamrec_anomalous_keys", "user")
        with_flood, without = await asyncio.gather(
            answer_one_by_one(services, flood_run, others),
            answer_one_by_one(services, baseline, others),
        )
        flagged_total = metric(flood_run.metrics_port, "streamrec_anomalous_events_total", "user")
        # the others' events are days later in event time: the bot's minute is over
        keys_after = metric(flood_run.metrics_port, "streamrec_anomalous_keys", "user")
        alive = flood_run.alive() and baseline.alive()
    finally:
        flood_run.stop()
        baseline.stop()

    assert alive
    # The flood: answered in full; the first BOUND unflagged, the rest flagged.
    assert [r.flagged for r in flooded] == [False] * BOUND + [True] * (FLOOD - BOUND)
    assert not any(r.flagged for r in prefix)
    assert len({tuple(r.items) for r in flooded[BOUND:]}) == 1  # one non-personalised list
    assert flagged_total == FLOOD - BOUND
    assert (keys_during, keys_after) == (1, 0)  # flagged while flooding, calm afterwards
    # Everyone else: the same lists, item for item and score for score.
    assert set(with_flood) == set(without) == {e.event_id for e in others}
    differ = [
        eid
        for eid in with_flood
        if (with_flood[eid].items, with_flood[eid].scores)
        != (without[eid].items, without[eid].scores)
    ]
    assert not differ, f"{len(differ)} of {len(others)} lists changed by the flood: {differ[:5]}"
    assert not any(r.flagged for r in with_flood.values())
    print(
        f"\nflood: {FLOOD} events, {FLOOD - BOUND} flagged (/metrics {flagged_total:.0f}, "
        f"{keys_during:.0f} key flagged, {keys_after:.0f} after); {len(others)} other users' "
        "lists identical to the baseline"
    )
