"""Online co-visitation in real Redis: the Lua script agrees with the in-memory twin, a batch
is one round trip, keys carry a TTL, lists stay bounded, namespaces are isolated."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from features.keys import id_hash, item_hashes_u64
from features.memory_covisit import InMemoryCovisitStore
from features.online_covisit import (
    CovisitBatch,
    CovisitConfig,
    RedisCovisitStore,
    covisit_key,
    trending_key,
)
from tests.integration.harness import Services

H = 3_600_000.0
T0 = 1_300_000_000_000.0
NONE = np.zeros(0, np.uint64)
SMALL = CovisitConfig(
    half_life_ms=H, keep=6, trim_factor=1.5, keep_trending=8, top_m=10, top_p=10, ttl_ms=60_000
)


@asynccontextmanager
async def _redis(services: Services) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A client and a fresh namespace whose keys are deleted afterwards."""
    client = aioredis.from_url(services.redis_url)
    namespace = f"cv-{uuid.uuid4().hex[:8]}"
    try:
        yield client, namespace
    finally:
        keys = [k async for k in client.scan_iter(f"sr:{namespace}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def _random_batch(rng: np.random.Generator, catalog: np.ndarray, t0: float) -> CovisitBatch:
    """Transitions among a small catalogue at whole seconds: many repeats and exact ties."""
    n = int(rng.integers(0, 40))
    src, dst = rng.choice(catalog, n), rng.choice(catalog, n)
    t = t0 + rng.integers(0, 600, n) * 1000.0
    e = int(rng.integers(0, 40))
    return CovisitBatch(
        src=src,
        dst=dst,
        transition_ms=t,
        items=rng.choice(catalog, e),
        item_ms=t0 + rng.integers(0, 600, e) * 1000.0,
        item_weight=rng.choice([1.0, 3.0], e).astype(np.float32),
        queries=np.concatenate([src, rng.choice(catalog, 30), np.zeros(1, np.uint64)]),
        now_ms=t0 + 600_000.0,
    )


def _updates_removed(batch: CovisitBatch) -> CovisitBatch:
    """The same queries with nothing to update."""
    f64 = np.zeros(0)
    return replace(
        batch,
        src=NONE,
        dst=NONE,
        transition_ms=f64,
        items=NONE,
        item_ms=f64,
        item_weight=f64.astype(np.float32),
    )


async def _lengths(client: aioredis.Redis, keys: Iterable[str]) -> list[int]:
    return [int(await client.strlen(k)) // 16 for k in keys]


async def test_redis_and_in_memory_stores_agree(services: Services) -> None:
    rng = np.random.default_rng(3)
    catalog = item_hashes_u64([f"item-{i}" for i in range(25)])
    memory = InMemoryCovisitStore(config=SMALL)
    async with _redis(services) as (client, namespace):
        store = RedisCovisitStore(client, namespace=namespace, config=SMALL)
        await store.load_script()
        # 40 batches an hour apart, then a replay of 1996 and a jump to 2026: log space must
        # hold both without overflow, and decay must order them the same way in both stores.
        starts = [T0 + i * H for i in range(40)] + [820_454_400_000.0, 1_767_225_600_000.0]
        for i, t0 in enumerate(starts):
            batch = _random_batch(rng, catalog, t0)
            got = await store.update_and_read(batch)
            want = await memory.update_and_read(batch)
            assert got.neighbours.shape == (batch.queries.size, SMALL.top_m)
            np.testing.assert_array_equal(got.neighbours, want.neighbours, err_msg=f"batch {i}")
            np.testing.assert_allclose(got.weights, want.weights, rtol=1e-6, err_msg=f"batch {i}")
            np.testing.assert_array_equal(got.trending, want.trending, err_msg=f"batch {i}")
            np.testing.assert_allclose(got.trending_weights, want.trending_weights, rtol=1e-6)
        assert (got.neighbours[:, 0] != 0).any() and got.trending.size > 0
        lengths = await _lengths(client, [store.key_of(int(i)) for i in catalog])
        assert SMALL.keep <= max(lengths) <= SMALL.trim_at  # lists were trimmed on the way


async def test_a_batch_is_one_evalsha_round_trip(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _redis(services) as (client, namespace):
        store = RedisCovisitStore(client, namespace=namespace, config=SMALL)
        await store.load_script()  # connects (and handshakes) before counting
        sent: list[bytes] = []
        connection_class = client.connection_pool.connection_class
        send = connection_class.send_packed_command

        async def counting(
            self: AbstractConnection, command: bytes | list[bytes], **kw: bool
        ) -> None:
            sent.append(command if isinstance(command, bytes) else b"".join(command))
            await send(self, command, **kw)

        monkeypatch.setattr(connection_class, "send_packed_command", counting)
        rng = np.random.default_rng(5)
        catalog = item_hashes_u64([f"item-{i}" for i in range(50)])
        for i in range(3):
            read = await store.update_and_read(_random_batch(rng, catalog, T0 + i * H))
            assert len(sent) == i + 1 and b"EVALSHA" in sent[-1][:40].upper()
        assert read.trending.size > 0
        empty = replace(_updates_removed(_random_batch(rng, catalog, T0)), queries=NONE)
        assert (await store.update_and_read(empty)).neighbours.shape == (0, SMALL.top_m)
        assert len(sent) == 3  # an empty batch does not call Redis


async def test_keys_get_a_ttl_and_lists_stay_bounded(services: Services) -> None:
    a, *others = (int(v) for v in item_hashes_u64([f"item-{i}" for i in range(40)]))
    async with _redis(services) as (client, namespace):
        store = RedisCovisitStore(client, namespace=namespace, config=SMALL)
        await store.load_script()
        seen = []
        for i, b in enumerate(others):  # a new neighbour of `a` per batch
            batch = CovisitBatch(
                src=np.array([a], np.uint64),
                dst=np.array([b], np.uint64),
                transition_ms=np.array([T0 + i]),
                items=np.array([b], np.uint64),
                item_ms=np.array([T0 + i]),
                item_weight=np.ones(1, np.float32),
                queries=np.array([a], np.uint64),
                now_ms=T0 + i,
            )
            await store.update_and_read(batch)
            seen += await _lengths(client, [store.key_of(a), trending_key(namespace)])
        assert max(seen) <= max(SMALL.trim_at, SMALL.trim_trending_at)
        assert (await _lengths(client, [store.key_of(a)]))[0] <= SMALL.trim_at
        assert SMALL.keep in seen[::2]  # trimmed back to `keep` at least once
        for key in (store.key_of(a), store.key_of(others[-1]), trending_key(namespace)):
            assert 0 < await client.pttl(key) <= SMALL.ttl_ms


async def test_namespaces_are_isolated(services: Services) -> None:
    a, b = (int(v) for v in item_hashes_u64(["x", "y"]))
    batch = CovisitBatch(
        src=np.array([a], np.uint64),
        dst=np.array([b], np.uint64),
        transition_ms=np.array([T0]),
        items=np.array([a], np.uint64),
        item_ms=np.array([T0]),
        item_weight=np.ones(1, np.float32),
        queries=np.array([a, b], np.uint64),
        now_ms=T0,
    )
    async with _redis(services) as (client, namespace), _redis(services) as (_, other):
        store = RedisCovisitStore(client, namespace=namespace, config=SMALL)
        await store.update_and_read(batch)
        read = await store.update_and_read(_updates_removed(batch))
        assert read.neighbours[:, 0].tolist() == [b, a] and read.trending.tolist() == [a]
        other_store = RedisCovisitStore(client, namespace=other, config=SMALL)
        read = await other_store.update_and_read(_updates_removed(batch))
        assert not read.neighbours.any() and read.trending.size == 0
        assert [k async for k in client.scan_iter(f"sr:{other}:*")] == []
        assert (
            await client.exists(covisit_key(namespace, id_hash("x")), trending_key(namespace)) == 2
        )


async def test_script_cache_loss_and_foreign_values_are_survived(services: Services) -> None:
    a, b = (int(v) for v in item_hashes_u64(["p", "q"]))
    batch = CovisitBatch(
        src=np.array([a], np.uint64),
        dst=np.array([b], np.uint64),
        transition_ms=np.array([T0]),
        items=np.zeros(0, np.uint64),
        item_ms=np.zeros(0),
        item_weight=np.zeros(0, np.float32),
        queries=np.array([a], np.uint64),
        now_ms=T0,
    )
    async with _redis(services) as (client, namespace):
        store = RedisCovisitStore(client, namespace=namespace, config=SMALL)
        await client.set(store.key_of(a), b"\x01" * 17)  # not a list of 16-byte records
        await client.script_flush()  # as after a Redis restart: NOSCRIPT, load, retry
        await store.update_and_read(batch)
        read = await store.update_and_read(_updates_removed(batch))
        assert read.neighbours[0, 0] == b and read.weights[0, 0] == pytest.approx(1.0)
