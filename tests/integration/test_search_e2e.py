"""Search through the real path: catalogue records and search events on Kafka -> the worker
(MiniLM text encoder, item text index, Redis) -> recommendations of kind "search".

The catalogue is 30 real product titles from the Home Depot search relevance data
(/work/shared/datasets/homedepot-search-relevance/train.csv.gz, read as latin-1; product_uid
and product_title), hard-coded below. Item ids are prefixed "hd-" so that none collides with
a DIGINETICA item of the served bundle: every one of them is known only from the catalogue.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from stream.kafka_admin import create_topics
from stream.replay import Collected, collect, produce
from tests.integration.harness import Services, WorkerProcess
from topics.catalogue import CatalogueItem
from topics.events import EventType, UserEvent
from topics.names import all_topics, catalogue_topic

DRILLS = {
    "100105": "RIDGID X4 18-Volt Lithium-Ion Cordless Drill and Impact Driver Combo Kit (2-Tool)",
    "100759": "DEWALT 20-Volt Max Lithium-Ion 3/8 in. Cordless Right Angle Drill (Tool-Only)",
    "101539": "Ryobi ONE+ 18-Volt Lithium-Ion Cordless Drill/Driver and Impact Driver Kit (2-Tool)",
    "101684": "Milwaukee M12 12-Volt Lithium-Ion 3/8 in. Cordless Drill/Driver Kit",
    "102469": "RIDGID 18-Volt Lithium-Ion Cordless Hammer Drill/Driver and Impact Driver Combo Kit",
    "102995": "RIDGID 18-Volt Lithium-Ion 1/2 in. Cordless Compact Drill/Driver Kit",
    "103324": "Milwaukee M12 12-Volt Lithium-Ion Cordless Hammer Drill/Impact Driver Combo Kit "
    "(2-Tool)",
    "100776": "Milwaukee M18 18-Volt Lithium-Ion 3/8 in. Cordless Right Angle Drill Kit",
}
PAINTS = {
    "103788": "Glidden DUO #GLV26-01E Delicious Plum Interior Paint with Primer",
    "103990": "Glidden Premium 1-gal. #HDGCN21D Dark Teal Woods Eggshell Latex Interior Paint "
    "with Primer",
    "104666": "BEHR MARQUEE #330F-5 Golden Bear Exterior Paint",
    "104868": "BEHR Premium Plus 5-gal. Ultra Pure White Eggshell Enamel Zero VOC Interior Paint",
    "105072": "Zinsser 5-gal. Perma-White Mold and Mildew-Proof White Satin Exterior Paint",
    "105356": "BEHR Premium Plus #380B-5 Neon Light Zero VOC Interior Paint",
    "106613": "BEHR Premium Plus 1-gal. Ultra Pure White Satin Enamel Zero VOC Interior Paint",
    "101983": "Rust-Oleum Specialty 30 oz. Ultra Matte Interior Chalked Paint, Serenity Blue "
    "(2-Pack)",
}
FAUCETS = {
    "100125": "Delta Foundations Single-Handle Kitchen Faucet in Chrome",
    "100405": "KOHLER Mistos Single Handle Pull-Out Sprayer Kitchen Faucet in Stainless Steel",
    "100830": "Glacier Bay Series 400 Single-Handle Pull-Down Sprayer Kitchen Faucet in Chrome",
    "101176": "Delta Mandara 8 in. Widespread 2-Handle Bathroom Faucet in Stainless",
    "101436": "MOEN Banbury 8 in. Widespread 2-Handle Bathroom Faucet in Mediterranean Bronze",
    "101810": "Delta Vessona 2-Handle Kitchen Faucet in Stainless",
    "101883": "Delta Foundations 4 in. Centerset Single-Handle Bathroom Faucet in Chrome",
}
MOWERS = {
    "101183": "EGO 20 in. 56-Volt Lithium-ion Cordless Lawn Mower",
    "101622": "Earthwise 18 in. Walk-Behind Corded Electric Lawn Mower",
    "102066": "Ryobi 16 in. 40-Volt Lithium-ion Cordless Walk-Behind Lawn Mower with 2 Batteries",
    "102487": "Worx 14 in. 24-Volt Cordless Walk-Behind Electric Lawn Mower",
    "102668": "Cub Cadet SC100 21 in. 159 cc Gas Walk-Behind Lawn Mower",
    "103381": "Lawn-Boy 21 in. High Wheel Push Gas Lawn Mower with Kohler Engine",
    "110136": "Fiskars StaySharp Max 18 in. Push Reel Lawn Mower (6201)",
}
GRILL = (
    "106620",
    "Weber Spirit E-310 3-Burner Propane Gas Grill (Featuring the Gourmet BBQ System)",
)
CATALOGUE = {**DRILLS, **PAINTS, **FAUCETS, **MOWERS}
T0 = 1_735_689_600_000


def hd(uid: str) -> str:
    return f"hd-{uid}"


def encoder_missing() -> str | None:
    """Why the real MiniLM encoder cannot run here, or None."""
    try:
        from models.text_encoder import MiniLMEncoder
    except ImportError as exc:
        return f"models.text_encoder is not importable ({exc})"
    try:
        MiniLMEncoder(device="cpu")
    except Exception as exc:  # EncoderUnavailableError: a package is not installed
        return f"the MiniLM encoder cannot load ({exc})"
    return None


@pytest.fixture(scope="module")
def minilm() -> Iterator[None]:
    reason = encoder_missing()
    if reason:
        pytest.skip(f"search needs the real text encoder: {reason}")
    yield


def catalogue_records(items: dict[str, str], ts: int = T0) -> list[tuple[bytes, bytes]]:
    return [
        (hd(uid).encode(), CatalogueItem(hd(uid), title, ts).to_bytes())
        for uid, title in items.items()
    ]


def search(eid: str, user: str, query: str, ts: int = T0) -> UserEvent:
    return UserEvent(eid, EventType.SEARCH, user, f"{user}-s", ts, query=query)


async def stored_items(redis_url: str, namespace: str) -> int:
    client = aioredis.from_url(redis_url)
    try:
        return len([k async for k in client.scan_iter(match=f"sr:{namespace}:item:*", count=1000)])
    finally:
        await client.aclose()


async def wait_for_items(services: Services, worker: WorkerProcess, n: int) -> None:
    """Until the worker has stored ``n`` catalogue items (it indexes them right after)."""
    deadline = time.time() + 90
    while time.time() < deadline:
        if await stored_items(services.redis_url, worker.namespace) >= n:
            return
        assert worker.alive(), worker.log_tail()
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {n} catalogue items stored\n{worker.log_tail()}")


class Session:
    """Produces events and collects every answer so far (records accumulate in the topics)."""

    def __init__(self, services: Services, worker: WorkerProcess) -> None:
        self.services = services
        self.worker = worker
        self.expected = 0

    async def send(self, events: list[UserEvent], *, dead: int = 0, rate: float = 0.0) -> Collected:
        topic, recs_topic, dead_topic = self.worker.topics
        messages = [(e.user_id.encode(), e.to_bytes()) for e in events]
        await produce(self.services.bootstrap, topic, messages, rate=rate)
        self.expected += len(events) + dead
        got = await collect(
            self.services.bootstrap, recs_topic, dead_topic, expect=self.expected, timeout_s=90
        )
        assert self.worker.alive(), self.worker.log_tail()
        missing = {e.event_id for e in events} - set(got.recommendations)
        assert not missing, f"no answer for {sorted(missing)[:5]}\n{self.worker.log_tail()}"
        return got


async def test_search_finds_catalogue_titles_and_new_items_in_the_next_batch(
    minilm: None, worker: WorkerProcess, services: Services
) -> None:
    await create_topics(services.bootstrap, all_topics(worker.prefix))
    items_topic = catalogue_topic(worker.prefix)
    bad = b'{"item_id": "hd-bad", "title": "   ", "timestamp_ms": 1}'
    await produce(services.bootstrap, items_topic, [*catalogue_records(CATALOGUE), (b"x", bad)])
    await wait_for_items(services, worker, len(CATALOGUE))
    session = Session(services, worker)

    # A brand-new user searches: the drills come first, by their titles alone.
    got = await session.send([search("q-drill", "shopper-1", "cordless drill")], dead=1)
    rec = got.recommendations["q-drill"]
    assert rec.kind == "search", rec
    assert set(rec.items[:5]) <= {hd(u) for u in DRILLS}, [CATALOGUE.get(i[3:]) for i in rec.items]
    assert [d.reason for d in got.dead_letters] == ["invalid_value"]
    assert got.dead_letters[0].source_topic == items_topic

    # Other topics, in one batch of searches.
    queries = {"q-paint": "white exterior paint", "q-faucet": "kitchen faucet",
               "q-mower": "cordless lawn mower"}  # fmt: skip
    got = await session.send([search(e, f"u-{e}", q) for e, q in queries.items()])
    groups = {"q-paint": PAINTS, "q-faucet": FAUCETS, "q-mower": MOWERS}
    for eid, group in groups.items():
        top3 = got.recommendations[eid].items[:3]
        assert set(top3) <= {hd(u) for u in group}, (eid, [CATALOGUE.get(i[3:]) for i in top3])

    # A view of a catalogue-only drill: its text neighbours (other drills), not itself.
    viewed = hd("101684")
    view = UserEvent("v-drill", EventType.VIEW, "shopper-2", "s2", T0, item_id=viewed)
    got = await session.send([view])
    rec = got.recommendations["v-drill"]
    assert viewed not in rec.items and set(rec.items[:3]) <= {hd(u) for u in DRILLS}

    # An item published in one catalogue batch is found by a search in the next.
    await produce(services.bootstrap, items_topic, catalogue_records(dict([GRILL])))
    await wait_for_items(services, worker, len(CATALOGUE) + 1)
    got = await session.send([search("q-grill", "shopper-3", "propane gas grill")])
    assert got.recommendations["q-grill"].items[0] == hd(GRILL[0])

    # Latency: micro-batches mixing searches and views, as fast as the producer goes.
    words = ["cordless drill", "interior paint", "bathroom faucet", "gas lawn mower", "grill"]
    mixed: list[UserEvent] = []
    for i in range(300):
        user = f"load-{i % 50}"
        if i % 2:
            mixed.append(search(f"l-{i}", user, words[i % len(words)], T0 + i))
        else:
            item = hd(list(CATALOGUE)[i % len(CATALOGUE)])
            mixed.append(UserEvent(f"l-{i}", EventType.VIEW, user, f"{user}-s", T0 + i, item))
    got = await session.send(mixed, rate=500)
    for kind in ("search", "recommend"):
        lat = sorted(
            got.recommendations[e.event_id].latency_ms
            for e in mixed
            if got.recommendations[e.event_id].kind == kind
        )
        p95 = lat[int(0.95 * (len(lat) - 1))]
        print(f"\n{kind}: {len(lat)} answers, latency p50 {statistics.median(lat):.1f} ms, "
              f"p95 {p95:.1f} ms, max {lat[-1]:.1f} ms at 500 events/s")  # fmt: skip


async def test_a_restarted_worker_reloads_the_text_index_from_redis(
    minilm: None, worker: WorkerProcess, services: Services
) -> None:
    await create_topics(services.bootstrap, all_topics(worker.prefix))
    await produce(
        services.bootstrap, catalogue_topic(worker.prefix), catalogue_records(dict([GRILL]))
    )
    await wait_for_items(services, worker, 1)
    session = Session(services, worker)
    got = await session.send([search("before", "u1", "propane gas grill")])
    assert got.recommendations["before"].items[0] == hd(GRILL[0])

    assert worker.stop() == 0
    worker.start()  # same prefix, group and namespace: the catalogue is not consumed again
    got = await session.send([search("after", "u2", "propane gas grill")])
    assert got.recommendations["after"].items[0] == hd(GRILL[0]), worker.log_tail()
    assert "1 catalogue items loaded from redis" in worker.log_path.read_text()
