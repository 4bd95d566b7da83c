"""``streamrec replay --topic``: a range of a live topic, replayed in isolation.

The "production" here is a pipeline of its own (prefix, namespace and group ``prod-<id>``,
set in the environment exactly as a production worker would have them), so that a replay that
leaked into production's topics or Redis namespace would be seen, not hidden among other tests.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from models.bundle import Bundle, latest_bundle
from stream.cli import main
from stream.kafka_admin import create_topics
from stream.replay import RangeBound, TopicRangeError, read_topic_range
from stream.replay_job import score_replay
from tests.integration.harness import Services
from topics.events import UserEvent
from topics.names import DAY_MS, TopicSpec, all_topics, topic_names

HOUR_MS = 3600 * 1000


async def _send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int]]) -> None:
    """Produce ``(key, value, record time)`` as a producer of ``user-events`` would have."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, ts in records:
            await producer.send(topic, value=value, key=key, timestamp_ms=ts)
        await producer.flush()
    finally:
        await producer.stop()


async def _end_offsets(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def _groups_with_offsets_on(bootstrap: str, topic: str) -> dict[str, object]:
    """Every consumer group that has a committed offset on ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        out: dict[str, object] = {}
        for group in await admin.list_consumer_groups():
            offsets = await admin.list_consumer_group_offsets(group[0])
            hits = {tp: o for tp, o in offsets.items() if tp.topic == topic}
            if hits:
                out[group[0]] = hits
        return out
    finally:
        await admin.close()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def test_topic_range_replays_only_the_range_and_leaves_production_untouched(
    services: Services,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    prod = f"prod-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", services.bootstrap)
    monkeypatch.setenv("REDIS_URL", services.redis_url)
    monkeypatch.setenv("STREAMREC_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("STREAMREC_TOPIC_PREFIX", f"{prod}.")
    monkeypatch.setenv("STREAMREC_NAMESPACE", prod)
    monkeypatch.setenv("STREAMREC_GROUP_ID", prod)
    events_topic, recs_topic, dead_topic = topic_names(f"{prod}.")
    asyncio.run(create_topics(services.bootstrap, all_topics(f"{prod}.")))

    test = sorted(diginetica[1], key=lambda e: e.timestamp_ms)
    before, inside, after = test[:10], test[10:50], test[50:60]
    base = int(datetime.now(UTC).timestamp() * 1000) - 3 * HOUR_MS  # within retention
    records = [(e.user_id.encode(), e.to_bytes(), base + i) for i, e in enumerate(before)]
    records += [
        (e.user_id.encode(), e.to_bytes(), base + HOUR_MS + i) for i, e in enumerate(inside)
    ]
    records.insert(15, (b"u-bad", b'{"event_type": "view", "user_id": ', base + HOUR_MS + 5))
    dup = inside[3]
    records.insert(30, (dup.user_id.encode(), dup.to_bytes(), base + HOUR_MS + 20))
    records += [
        (e.user_id.encode(), e.to_bytes(), base + 2 * HOUR_MS + i) for i, e in enumerate(after)
    ]
    asyncio.run(_send(services.bootstrap, events_topic, records))

    out, report = tmp_path / "recs.jsonl", tmp_path / "report.json"
    argv = ["replay", "--topic", events_topic, "--from", _iso(base + HOUR_MS)]
    argv += ["--to", str(base + 2 * HOUR_MS), "--out", str(out), "--report", str(report)]
    assert main(argv) == 0

    # Exactly the range, each valid event once, in record-time order; nothing else.
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [line["event_id"] for line in lines] == [e.event_id for e in inside]
    got = orjson.loads(report.read_bytes())
    source = got["source"]
    assert source["kind"] == "topic" and source["topic"] == events_topic
    assert source["records"] == len(inside) + 2
    assert source["bad"] == {"malformed_json": 1} and source["duplicates"] == 1
    assert got["events"] == got["recommendations"] == len(inside) and got["unanswered"] == 0

    # Scored as the offline evaluation scores: the shared function on the written lines.
    bundle = Bundle.load(latest_bundle(model_dir))  # type: ignore[arg-type]
    expected = score_replay(
        out.read_bytes().splitlines(), inside, bundle.item_ids, bundle.popularity
    )
    assert got["examples"] == expected["examples"] > 0
    assert got["metrics"] == pytest.approx(expected["metrics"])
    assert {"HR@5", "MRR@10", "NDCG@20"} <= set(got["metrics"])

    # Production untouched: no record on its outputs, no key in its namespace, no offsets
    # committed on the source topic by anyone; the replay's own namespace did get state.
    assert asyncio.run(_end_offsets(services.bootstrap, recs_topic)) == 0
    assert asyncio.run(_end_offsets(services.bootstrap, dead_topic)) == 0
    client = redis.Redis.from_url(services.redis_url)
    try:
        assert list(client.scan_iter(match=f"sr:{prod}:*")) == []
        assert list(client.scan_iter(match=f"sr:{source['run']}:u:*"))
    finally:
        client.close()
    assert asyncio.run(_groups_with_offsets_on(services.bootstrap, events_topic)) == {}


def test_offset_bounds_are_per_partition_and_half_open(services: Services) -> None:
    topic = f"range-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(services.bootstrap, (TopicSpec(topic, 2, DAY_MS, "test"),)))

    async def fill() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=services.bootstrap)
        await producer.start()
        try:
            for p, n in ((0, 10), (1, 3)):
                for i in range(n):
                    await producer.send(topic, value=f"{p}-{i}".encode(), partition=p)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(fill())

    def read(start: RangeBound, stop: RangeBound) -> dict[int, list[bytes | None]]:
        got = asyncio.run(
            read_topic_range(services.bootstrap, topic, start, stop, group_id=f"{topic}-reader")
        )
        return {p: [r.value for r in recs] for p, recs in got.records.items()}

    some = read(RangeBound("offset", 2), RangeBound("offset", 6))
    assert some == {0: [b"0-2", b"0-3", b"0-4", b"0-5"], 1: [b"1-2"]}  # p1 ends at 3
    every = read(RangeBound("earliest"), RangeBound("latest"))
    assert [len(v) for v in every.values()] == [10, 3]
    with pytest.raises(TopicRangeError, match="no topic"):
        asyncio.run(
            read_topic_range(
                services.bootstrap,
                f"{topic}-missing",
                RangeBound("earliest"),
                RangeBound("latest"),
                group_id="x",
            )
        )


def test_an_empty_range_replays_nothing_and_exits_1(
    services: Services,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", services.bootstrap)
    monkeypatch.setenv("REDIS_URL", services.redis_url)
    monkeypatch.setenv("STREAMREC_MODEL_DIR", str(model_dir))
    topic = f"empty-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(services.bootstrap, (TopicSpec(topic, 1, DAY_MS, "test"),)))
    asyncio.run(_send(services.bootstrap, topic, [(b"k", b"{", 1_700_000_000_000)]))
    report = tmp_path / "report.json"
    argv = ["replay", "--topic", topic, "--from", "earliest", "--to", "latest"]
    assert main([*argv, "--report", str(report)]) == 1
    assert "nothing to replay" in capsys.readouterr().out
    got = orjson.loads(report.read_bytes())
    assert got["events"] == 0 and got["source"]["bad"] == {"malformed_json": 1}
    assert main(["replay", "--topic", f"{topic}-missing", *argv[3:]]) == 2
