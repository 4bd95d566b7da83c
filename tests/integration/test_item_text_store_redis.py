"""Catalogue items in real Redis (features/item_text_store.py): a load sees every item (across
SCAN pages), the change log carries later batches, nothing has a TTL, and the Redis store
behaves as its in-memory twin."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

from features import item_text_store
from features.item_text_store import InMemoryItemTextStore, RedisItemTextStore, StoredItem
from tests.integration.harness import Services


def items(prefix: str, n: int, dim: int = 8) -> list[StoredItem]:
    rng = np.random.default_rng(0)
    return [
        StoredItem(
            f"{prefix}{i}",
            f"title {i}",
            1_700_000_000_000 + i,
            "enc",
            rng.standard_normal(dim).astype(np.float32),
            "cat" if i % 2 else None,
            float(i) if i % 3 else None,
        )
        for i in range(n)
    ]


def as_tuples(stored: list[StoredItem]) -> list[tuple[object, ...]]:
    return sorted(
        (
            i.item_id,
            i.title,
            i.timestamp_ms,
            i.encoder,
            i.category,
            i.price,
            None if i.vector is None else i.vector.tobytes(),
        )
        for i in stored
    )


async def test_redis_store_round_trips_and_follows_the_log_like_its_twin(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = aioredis.from_url(services.redis_url)
    namespace = f"it-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(item_text_store, "SCAN_COUNT", 7)  # several SCAN pages
    try:
        redis_store = RedisItemTextStore(client, namespace=namespace)
        twin = InMemoryItemTextStore()
        assert await redis_store.load_all() == ([], "0-0")
        first = items("a", 40)
        for store in (redis_store, twin):
            await store.put_batch(first)
        loaded, cursor = await redis_store.load_all()
        assert as_tuples(loaded) == as_tuples((await twin.load_all())[0]) == as_tuples(first)

        update = [StoredItem("a3", "new title", 5), *items("b", 3)]
        written = await redis_store.put_batch(update)
        changed, positions, cursor2 = await redis_store.changes_since(cursor)
        assert positions == [written] == [cursor2]
        assert as_tuples(changed) == as_tuples(update)
        assert await redis_store.changes_since(cursor2) == ([], [], cursor2)
        loaded, _ = await redis_store.load_all()
        assert len(loaded) == 43 and {i.title for i in loaded if i.item_id == "a3"} == {"new title"}
        assert await client.ttl(f"sr:{namespace}:item:" + "0" * 16) == -2  # no such key
        assert all(
            [await client.ttl(k) == -1 async for k in client.scan_iter(f"sr:{namespace}:*")]
        )  # the catalogue is a record: no TTL
    finally:
        keys = [k async for k in client.scan_iter(f"sr:{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
