"""Hot swap on real Kafka + Redis: a worker serving v1 hears a ModelUpdate for v2 while events
stream through it, swaps between micro-batches without losing or duplicating an event, and
refuses a tampered v3 while v2 keeps serving."""

from __future__ import annotations

import asyncio
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from models.bundle import derive_bundle, latest_bundle, promote
from stream.model_updates import announce
from stream.replay import produce
from tests.integration.harness import Services, WorkerProcess, wait_until
from topics.dead_letter import DeadLetter
from topics.events import EventType, UserEvent
from topics.model_updates import ModelUpdate
from topics.names import model_updates_topic
from topics.recommendations import Recommendation


@dataclass
class Arrivals:
    """Every record of the output topics with its arrival time and partition."""

    recs: list[tuple[float, int, Recommendation]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


async def follow(bootstrap: str, recs_topic: str, dead_topic: str, out: Arrivals) -> None:
    consumer = AIOKafkaConsumer(
        recs_topic,
        dead_topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=50, max_records=1000)
            now = time.time()
            for tp, records in batches.items():
                for r in records:
                    if r.value is None:
                        continue
                    if tp.topic == dead_topic:
                        out.dead.append(DeadLetter.from_bytes(r.value))
                    else:
                        out.recs.append((now, tp.partition, Recommendation.from_bytes(r.value)))
    finally:
        await consumer.stop()


async def until(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


def metric(port: int, name: str, label: str) -> float | None:
    """The value of the sample of ``name`` whose labels include ``label`` (``k="v"``)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line.split("}", 1)[0]:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture()
def own_models(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the session's bundle directory: promoting here leaves other tests on v1."""
    root = tmp_path / "models"
    shutil.copytree(model_dir, root)
    return root


@pytest.fixture()
def swap_worker(services: Services, own_models: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    # The periodic CURRENT check is off, so the swap measured here is the announcement's.
    w = WorkerProcess(
        services, own_models, tmp_path / "logs", extra_env={"STREAMREC_MODEL_POLL_S": "0"}
    )
    w.start()
    yield w
    w.stop()


async def test_announced_version_is_hot_swapped_without_losing_an_event(
    swap_worker: WorkerProcess,
    services: Services,
    own_models: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    worker = swap_worker
    v1 = latest_bundle(own_models)
    assert v1 is not None
    v2 = derive_bundle(v1, {"note": "v2"})
    v3 = derive_bundle(v1, {"note": "v3"})
    emb = v3 / "embeddings.npy"
    data = bytearray(emb.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: the manifest's checksum no longer matches
    emb.write_bytes(bytes(data))

    topic, recs_topic, dead_topic = worker.topics
    updates = model_updates_topic(worker.prefix)
    out = Arrivals()
    follower = asyncio.create_task(follow(services.bootstrap, recs_topic, dead_topic, out))
    try:
        # Ready: one recommendation served by v1, and the model-updates consumer assigned.
        warm = UserEvent("warm-0", EventType.VIEW, "wu", "ws", 1_464_000_000_000, item_id="81766")
        await produce(services.bootstrap, topic, [(b"wu", warm.to_bytes())])
        assert await until(lambda: len(out.recs) >= 1, 120), worker.log_tail()
        assert out.recs[0][2].model_version == v1.name
        assert wait_until(lambda: "following model updates" in worker.log_tail(200), 60), (
            worker.log_tail()
        )

        _, test = diginetica
        stream = test[:300]
        tail = test[300:320]
        streaming = asyncio.create_task(
            produce(
                services.bootstrap,
                topic,
                [(e.user_id.encode(), e.to_bytes()) for e in stream],
                rate=100,
            )
        )
        await asyncio.sleep(1.0)  # ~100 events in: swap mid-stream
        promote(own_models, v2.name)
        announced = time.time()
        await announce(
            services.bootstrap,
            updates,
            ModelUpdate(v2.name, str(own_models), "promote", int(announced * 1000)),
        )
        assert await until(lambda: any(r.model_version == v2.name for _, _, r in out.recs), 10), (
            worker.log_tail()
        )
        first_v2 = min(t for t, _, r in out.recs if r.model_version == v2.name)
        swap_s = first_v2 - announced
        print(f"\nannounce -> first v2 recommendation: {swap_s * 1000:.0f} ms")
        assert swap_s < 10

        # A tampered bundle is refused; v2 keeps serving.
        await announce(
            services.bootstrap,
            updates,
            ModelUpdate(v3.name, None, "promote", int(time.time() * 1000)),
        )
        assert wait_until(
            lambda: (
                f"{v3.name} refused" in worker.log_tail(400)
                or "refused (integrity" in worker.log_tail(400)
            ),
            30,
        ), worker.log_tail()
        await streaming
        await produce(services.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in tail])
        expect = 1 + len(stream) + len(tail)
        assert await until(lambda: len(out.recs) + len(out.dead) >= expect, 90), worker.log_tail()
        await asyncio.sleep(1.0)  # late duplicates would show up here
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)

    assert worker.alive(), worker.log_tail()
    ids = [r.event_id for _, _, r in out.recs]
    assert out.dead == []
    assert len(ids) == len(set(ids)) == expect  # exactly one recommendation per event
    assert set(ids) == {"warm-0"} | {e.event_id for e in stream + tail}
    # Per partition (records of a partition arrive in order), v1 until the swap, then v2 only.
    for partition in {p for _, p, _ in out.recs}:
        versions = [r.model_version for _, p, r in out.recs if p == partition]
        assert set(versions) <= {v1.name, v2.name}
        if v2.name in versions:
            first = versions.index(v2.name)
            assert set(versions[first:]) == {v2.name}, partition
    by_id = {r.event_id: r for _, _, r in out.recs}
    assert {by_id[e.event_id].model_version for e in tail} == {v2.name}
    port = worker.metrics_port
    assert metric(port, "streamrec_model_swap_failures_total", 'reason="integrity"') == 1
    assert metric(port, "streamrec_model_info", f'version="{v2.name}"') == 1
    assert metric(port, "streamrec_model_info", f'version="{v1.name}"') == 0


async def test_a_missed_announcement_is_caught_up_by_the_current_check(
    services: Services, own_models: Path, tmp_path: Path
) -> None:
    """No announcement at all: the periodic check of CURRENT swaps to the promoted version."""
    worker = WorkerProcess(
        services, own_models, tmp_path / "logs", extra_env={"STREAMREC_MODEL_POLL_S": "1"}
    )
    v1 = latest_bundle(own_models)
    assert v1 is not None
    v2 = derive_bundle(v1, {"note": "v2"})
    worker.start()
    try:
        assert wait_until(lambda: "following model updates" in worker.log_tail(200), 120), (
            worker.log_tail()
        )
        promote(own_models, v2.name)
        assert wait_until(
            lambda: f"serving model {v2.name} (was {v1.name})" in worker.log_tail(200), 15
        ), worker.log_tail()
        assert metric(worker.metrics_port, "streamrec_model_info", f'version="{v2.name}"') == 1
    finally:
        worker.stop()


async def test_a_version_whose_live_hit_rate_drops_is_rolled_back(
    services: Services,
    own_models: Path,
    tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    """v2 ranks upside down (neural weight -1, no other signal): its live HR@20 collapses
    against v1's, and the worker goes back to v1 on its own."""
    guard = {"STREAMREC_MODEL_POLL_S": "0", "STREAMREC_GUARD_MIN_JUDGED": "60",
             "STREAMREC_GUARD_WINDOW": "400", "STREAMREC_GUARD_MARGIN": "0.02"}  # fmt: skip
    worker = WorkerProcess(services, own_models, tmp_path / "logs", extra_env=guard)
    v1 = latest_bundle(own_models)
    assert v1 is not None
    v2 = derive_bundle(v1, {"blend": {"neural": -1.0}}, version="inverted")
    _, test = diginetica
    before, after = test[:700], test[700:1400]
    topic, recs_topic, dead_topic = worker.topics
    worker.start()
    out = Arrivals()
    follower = asyncio.create_task(follow(services.bootstrap, recs_topic, dead_topic, out))
    try:
        assert wait_until(lambda: "following model updates" in worker.log_tail(200), 120), (
            worker.log_tail()
        )
        await produce(services.bootstrap, topic,
                      [(e.user_id.encode(), e.to_bytes()) for e in before], rate=500)  # fmt: skip
        assert await until(lambda: len(out.recs) >= len(before), 60), worker.log_tail()
        promote(own_models, v2.name)
        await announce(services.bootstrap, model_updates_topic(worker.prefix),
                       ModelUpdate(v2.name, str(own_models), "promote", 0))  # fmt: skip
        assert wait_until(lambda: f"serving model {v2.name}" in worker.log_tail(200), 30)
        await produce(services.bootstrap, topic,
                      [(e.user_id.encode(), e.to_bytes()) for e in after], rate=500)  # fmt: skip
        assert wait_until(lambda: f"rolling back {v2.name} -> {v1.name}" in worker.log_tail(400),
                          60), worker.log_tail()  # fmt: skip
        assert wait_until(
            lambda: f"serving model {v1.name} (was {v2.name})" in worker.log_tail(400), 30
        ), worker.log_tail()
        label = f'from_version="{v2.name}"'
        assert metric(worker.metrics_port, "streamrec_model_rollbacks_total", label) == 1
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        worker.stop()
    assert out.dead == []
