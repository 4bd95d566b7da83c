"""The hot-result cache's Redis adapter against a real redis-server: one MGET per lookup
batch, one EVAL of SET PX per fill batch (written behind; a failed fill is only logged),
entries expire with their TTL (set for each), and
the pipeline with real Redis state reuses a list while still updating every user's state."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from features.keys import id_hash
from features.result_cache import (
    RedisResultCache,
    ResultCacheError,
    decode_result,
    encode_result,
    result_key,
)
from features.store import UserStateStore
from features.user_state import decode_state
from stream.pipeline import Trigger, recommend_batch
from tests.integration.harness import Services
from tests.unit.test_recommend_batch import model_and_store
from topics.events import EventType, UserEvent


@asynccontextmanager
async def _redis(services: Services) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A client and a fresh namespace whose keys are deleted afterwards."""
    client = aioredis.from_url(services.redis_url)
    namespace = f"rc-{uuid.uuid4().hex[:8]}"
    try:
        yield client, namespace
    finally:
        keys = [k async for k in client.scan_iter(f"sr:{namespace}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def _count_sends(client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every packed write to Redis from now on (one per round trip)."""
    sent: list[bytes] = []
    connection_class = client.connection_pool.connection_class
    send = connection_class.send_packed_command

    async def counting(self: AbstractConnection, command: bytes | list[bytes], **kw: bool) -> None:
        sent.append(command if isinstance(command, bytes) else b"".join(command))
        await send(self, command, **kw)

    monkeypatch.setattr(connection_class, "send_packed_command", counting)
    return sent


async def test_fill_and_lookup_are_one_round_trip_each_with_a_ttl(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _redis(services) as (client, namespace):
        cache = RedisResultCache(client, namespace=namespace, ttl_ms=5000)
        await client.ping()  # connects (and handshakes) before counting
        sent = _count_sends(client, monkeypatch)
        keys = [result_key(namespace, "v1", f"ctx{i}") for i in range(50)]
        await cache.put_many([(k, encode_result([f"i{i}"], [float(i)])) for i, k in
                              enumerate(keys[:40])])  # fmt: skip
        await cache.flush()  # fills are written behind; a lookup would wait for them too
        assert len(sent) == 1 and sent[0].upper().count(b"EVAL") == 1  # one command, 40 SETs
        values = await cache.get_many(keys)
        assert len(sent) == 2 and sent[1].upper().count(b"MGET") == 1
        assert [decode_result(v) if v else None for v in values] == [
            (["i" + str(i)], [float(i)]) for i in range(40)
        ] + [None] * 10
        assert await cache.get_many([]) == [] and len(sent) == 2  # nothing to ask: no call
        await cache.put_many([])
        assert len(sent) == 2
        ttl = await client.pttl(keys[0])
        assert 0 < ttl <= 5000


async def test_entries_expire_after_the_ttl(services: Services) -> None:
    async with _redis(services) as (client, namespace):
        cache = RedisResultCache(client, namespace=namespace, ttl_ms=150)
        key = result_key(namespace, "v1", "cold")
        await cache.put_many([(key, encode_result(["a"], [1.0]))])
        assert (await cache.get_many([key]))[0] is not None
        await asyncio.sleep(0.4)
        assert await cache.get_many([key]) == [None]


async def test_a_failed_fill_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        cache = RedisResultCache(client, namespace="nowhere", ttl_ms=1000)
        await cache.put_many([(result_key("nowhere", "v1", "x"), encode_result(["a"], [1.0]))])
        await cache.flush()
        assert "result cache fill of 1 entries failed" in caplog.text
        with pytest.raises(ResultCacheError):
            await cache.get_many(["k"])
    finally:
        await client.aclose()


async def test_a_decoding_client_is_refused(services: Services) -> None:
    async with _redis(services) as (_, namespace):
        client = aioredis.from_url(services.redis_url, decode_responses=True)
        try:
            cache = RedisResultCache(client, namespace=namespace, ttl_ms=1000)
            key = result_key(namespace, "v1", "x")
            await cache.put_many([(key, encode_result(["a"], [1.0]))])
            with pytest.raises(ResultCacheError):
                await cache.get_many([key])
            await client.delete(key)
        finally:
            await client.aclose()


async def test_pipeline_reuses_a_new_users_list_and_updates_state_in_redis(
    services: Services,
) -> None:
    async with _redis(services) as (client, namespace):
        model, _ = model_and_store()
        store = UserStateStore(client, namespace=namespace, ttl_ms=60_000, half_life_ms=1e9,
                               max_recent=4, space_id=5)  # fmt: skip
        await store.load_script()
        cache = RedisResultCache(client, namespace=namespace, ttl_ms=5000)

        async def first_view(eid: str, user: str) -> tuple[list[str], dict[str, int]]:
            event = UserEvent(eid, EventType.VIEW, user, f"s-{user}", 1, item_id="a")
            result = await recommend_batch([Trigger(event, 0.0)], store, model, k=3,
                                           n_candidates=5, cache=cache)  # fmt: skip
            return result.recommendations[0].items, result.cache_lookups

        items1, counts1 = await first_view("1", "u1")
        items2, counts2 = await first_view("2", "u2")
        assert counts1["miss"] == 1 and counts2["hit"] == 1 and items1 == items2
        assert decode_state(await store.get("u2")).recent == [id_hash("a")]
        keys = [k async for k in client.scan_iter(f"sr:{namespace}:rc:*")]
        assert len(keys) == 1 and keys[0].startswith(f"sr:{namespace}:rc:test-v1:".encode())
