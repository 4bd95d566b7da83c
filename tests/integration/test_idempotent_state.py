"""Idempotent state in real Redis: a replayed event (same event_id) changes neither the user
state nor the online co-visitation store, and the Lua replay check agrees with its numpy twin
(features/user_state.py ``remember_event``)."""

from __future__ import annotations

import uuid

import numpy as np
import redis.asyncio as aioredis

from features.keys import applied_key, id_hash, user_key
from features.online_covisit import RedisCovisitStore
from features.store import StateUpdate, UserStateStore
from features.user_state import decode_state, remember_event
from stream.pipeline import Trigger, online_batch, recommend_batch, state_updates
from tests.integration.harness import Services
from tests.unit.test_recommend_batch import model_and_store
from topics.events import EventType, UserEvent


def update(user: str, i: int, event: str) -> StateUpdate:
    emb = np.full(4, float(i), dtype=np.float32).tobytes()
    return StateUpdate(user, 1000.0 * i, id_hash("s"), id_hash(f"item{i}"), 1.0, emb,
                       id_hash(event))  # fmt: skip


async def dump(client: aioredis.Redis, namespace: str) -> dict[bytes, bytes]:
    """Every key of ``namespace`` and its value (byte-identical comparisons)."""
    keys = sorted([k async for k in client.scan_iter(match=f"sr:{namespace}:*")])
    return {k: await client.get(k) for k in keys}


async def test_replayed_batch_leaves_state_byte_identical(services: Services) -> None:
    client = aioredis.from_url(services.redis_url)
    ns = f"idem-{uuid.uuid4().hex[:8]}"
    store = UserStateStore(client, namespace=ns, ttl_ms=60_000, half_life_ms=5000.0,
                           max_recent=4, space_id=3)  # fmt: skip
    await store.load_script()
    batch = [update("u1", 1, "e1"), update("u2", 2, "e2"), update("u1", 3, "e3")]
    first = await store.apply(batch)
    assert first.replayed == [False, False, False]
    before = await dump(client, ns)
    assert decode_state(before[user_key(ns, "u1").encode()]).events == 2

    again = await store.apply(batch)  # the whole batch redelivered
    assert again.replayed == [True, True, True]
    assert await dump(client, ns) == before
    # A replay answers with the user's current state (after e3, also for e1).
    assert again.states[0] == again.states[2] == first.states[2]

    # Replays mixed with a new event in one pipeline: only the new one applies.
    mixed = await store.apply([update("u1", 3, "e3"), update("u1", 4, "e4")])
    assert mixed.replayed == [True, False]
    state = decode_state(mixed.states[1])
    assert state.events == 3
    assert state.recent[:3] == [id_hash("item4"), id_hash("item3"), id_hash("item1")]

    # Without an event hash (offline callers) there is no check: applied every time.
    plain = StateUpdate("u3", 1.0, id_hash("s"), id_hash("a"), 1.0, b"")
    await store.apply_batch([plain, plain])
    assert decode_state(await store.get("u3")).events == 2

    # The applied-events key shares the state's TTL and is removed with the user.
    assert 0 < await client.pttl(applied_key(ns, "u1")) <= 60_000
    assert await store.delete("u1") == 1
    assert await client.exists(user_key(ns, "u1"), applied_key(ns, "u1")) == 0
    await client.aclose()


async def test_lua_replay_window_matches_twin(services: Services) -> None:
    """A window of 3: the fourth-newest event is forgotten and would apply again; the key
    holds exactly the bytes ``remember_event`` computes."""
    client = aioredis.from_url(services.redis_url)
    ns = f"idem-w-{uuid.uuid4().hex[:8]}"
    store = UserStateStore(client, namespace=ns, ttl_ms=60_000, half_life_ms=0.0,
                           max_recent=4, space_id=3, replay_window=3)  # fmt: skip
    await store.load_script()
    twin = b""
    sequence = ["a", "b", "a", "c", "d", "a", "b", "d"]
    got = await store.apply([update("u", i, e) for i, e in enumerate(sequence)])
    expected = []
    for e in sequence:
        seen, twin = remember_event(twin, id_hash(e), 3)
        expected.append(seen)
    assert got.replayed == expected == [False, False, True, False, False, False, False, True]
    assert await client.get(applied_key(ns, "u")) == twin
    assert decode_state(got.states[-1]).events == expected.count(False) == 6
    await client.aclose()


async def test_pipeline_replay_does_not_recount_online_covisit(services: Services) -> None:
    """The same triggers through ``recommend_batch`` twice: the second pass is all replays,
    answered, counted, and the co-visitation and trending lists stay byte-identical."""
    tiny_model, _ = model_and_store()  # fake model: FAISS, a dot-product scorer
    client = aioredis.from_url(services.redis_url)
    ns = f"idem-cv-{uuid.uuid4().hex[:8]}"
    store = UserStateStore(client, namespace=ns, ttl_ms=60_000, half_life_ms=1e9,
                           max_recent=4, space_id=tiny_model.space_id)  # fmt: skip
    online = RedisCovisitStore(client, namespace=ns)
    await store.load_script()
    await online.load_script()
    events = [
        UserEvent("e1", EventType.VIEW, "u1", "s1", 1, item_id="a"),
        UserEvent("e2", EventType.VIEW, "u1", "s1", 2, item_id="b"),
        UserEvent("e3", EventType.PURCHASE, "u2", "s2", 3, item_id="c"),
        UserEvent("e4", EventType.VIEW, "u2", "s2", 4, item_id="a"),
    ]
    triggers = [Trigger(e, 0.0) for e in events]
    first = await recommend_batch(triggers, store, tiny_model, k=2, n_candidates=4,
                                  online=online)  # fmt: skip
    assert first.replayed == 0
    before = await dump(client, ns)
    assert any(b":cv:n:" in k for k in before) and f"sr:{ns}:cv:pop".encode() in before

    second = await recommend_batch(triggers, store, tiny_model, k=2, n_candidates=4,
                                   online=online)  # fmt: skip
    assert second.replayed == len(events)
    assert [r.event_id for r in second.recommendations] == ["e1", "e2", "e3", "e4"]
    assert await dump(client, ns) == before

    # What online_batch would have taught without the flags is not empty: the check matters.
    updates, _ = state_updates(events, tiny_model)
    states = [decode_state(b) for b in (await store.apply(updates)).states]
    assert online_batch(events, states, tiny_model).items.size > 0
    assert online_batch(events, states, tiny_model, replayed=[True] * 4).items.size == 0
    await client.aclose()
