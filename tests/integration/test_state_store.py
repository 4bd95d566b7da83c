"""User state in real Redis: one pipelined round trip per batch, TTL, and the Lua update
agreeing with the numpy rule in features/user_state.py."""

from __future__ import annotations

import numpy as np
import redis.asyncio as aioredis

from features.keys import id_hash, user_key
from features.store import StateUpdate, UserStateStore
from features.user_state import UserState, apply_event, decode_state
from stream.replay import collect, produce
from tests.integration.harness import Services, WorkerProcess
from topics.events import EventType, UserEvent


async def test_lua_update_matches_numpy_rule(services: Services) -> None:
    client = aioredis.from_url(services.redis_url)
    store = UserStateStore(
        client, namespace="lua-parity", ttl_ms=60_000, half_life_ms=3.6e6, max_recent=4, space_id=11
    )
    await store.delete("u")
    await store.load_script()
    rng = np.random.default_rng(7)
    expected = UserState()
    updates = []
    for i in range(9):
        known = i % 3 != 2
        emb = rng.normal(size=16).astype(np.float32) if known else None
        update = StateUpdate(
            "u",
            1_000_000.0 * i,
            id_hash("s1" if i < 5 else "s2"),
            id_hash(f"item{i}"),
            1.0 + i % 2,
            emb.tobytes() if known else b"",
        )
        updates.append(update)
        expected = apply_event(
            expected,
            now_ms=update.now_ms,
            session_hash=update.session_hash,
            item_hash=update.item_hash,
            weight=update.weight,
            embedding=emb,
            half_life_ms=3.6e6,
            max_recent=4,
            space_id=11,
        )
    blobs = await store.apply_batch(updates)  # one pipeline, applied in order
    got = decode_state(blobs[-1])
    assert got.recent == expected.recent and got.n_session == expected.n_session
    assert got.events == expected.events == 9 and got.space_id == 11
    np.testing.assert_allclose(got.vector, expected.vector, rtol=1e-5, atol=1e-5)
    assert blobs[-1] == await store.get("u")
    assert 0 < await store.ttl_ms_of("u") <= 60_000
    await client.aclose()


async def test_worker_keeps_state_in_redis_with_ttl(
    worker: WorkerProcess, services: Services
) -> None:
    topic, recs_topic, dead_topic = worker.topics
    items = ["81766", "31331", "32118"]
    events = [
        UserEvent(
            f"st-{i}", EventType.VIEW, "state-user", "state-s", 1_464_000_000_000 + i, item_id=item
        )
        for i, item in enumerate(items)
    ]
    await produce(services.bootstrap, topic, [(b"state-user", e.to_bytes()) for e in events])
    await collect(services.bootstrap, recs_topic, dead_topic, expect=3, timeout_s=90)
    client = aioredis.from_url(services.redis_url)
    key = user_key(worker.namespace, "state-user")
    ttl = await client.pttl(key)
    state = decode_state(await client.get(key))
    await client.aclose()
    assert 0 < ttl <= 600_000  # STREAMREC_STATE_TTL_S=600 in the harness
    assert state.recent == [id_hash(i) for i in reversed(items)]
    assert state.n_session == 3 and state.events == 3
    assert state.vector.shape[0] > 0 and np.linalg.norm(state.vector) > 0


async def test_a_state_of_another_layout_is_replaced_not_fatal(services: Services) -> None:
    client = aioredis.from_url(services.redis_url)
    store = UserStateStore(client, namespace="layout", ttl_ms=60_000, half_life_ms=1.0,
                           max_recent=4, space_id=1)  # fmt: skip
    await store.load_script()
    await client.set(user_key("layout", "v2-user"), b"\x02" + b"\x00" * 40)
    await client.set(user_key("layout", "short-user"), b"\x01" * 35)  # length != header's
    blobs = await store.apply_batch(
        [
            StateUpdate(u, 1.0, id_hash("s"), id_hash("i"), 1.0, b"")
            for u in ("v2-user", "short-user")
        ]
    )
    for blob in blobs:
        state = decode_state(blob)
        assert state.events == 1 and state.recent == [id_hash("i")]
    await client.aclose()
