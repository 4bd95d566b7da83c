"""The hot-result cache's Redis adapter: one ``MGET`` per batch for lookups, one ``EVAL`` of
``SET ... PX`` for each fill per batch, never a call per event. Fills are written behind: the
batch does not wait for them, the next lookup does.

What may be cached and under which context is decided by ``stream/result_cache_policy.py``;
this module only stores bytes under keys with a short TTL. ``InMemoryResultCache`` is its
in-process twin for tests (as ``features.memory_covisit`` is for the online store).

Key layout::

    sr:{namespace}:rc:{model version}:{context}   orjson [items, scores], PX = the TTL

The model version is part of every key, so entries written under one version are never read
under another: a hot swap or a rollback invalidates the cache without deleting anything (the
old entries expire within the TTL). ``context`` is a digest of everything the cached list
depends on (the policy module's ``context_digests``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

# KEYS: the entries' keys; ARGV[1]: TTL in ms, ARGV[1 + i]: the value of KEYS[i]. One command
# rather than a pipeline of SETs: the same single round trip, but redis-py packs and parses
# one command instead of one per entry (20 entries of 500 B: 0.19 vs 0.85 ms of client CPU,
# measured on the development host), and the fills are what a miss-heavy batch pays for.
log = logging.getLogger("streamrec.worker")

FILL_LUA = """
local ttl = ARGV[1]
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ttl) end
return #KEYS
"""


class ResultCacheError(RuntimeError):
    """Redis could not read or write cached results. The caller serves the batch without the
    cache (a cache must never stall serving, and user state is already updated by then, so
    retrying the batch would apply its events twice)."""


def result_key(namespace: str, version: str, context: str) -> str:
    """``sr:{namespace}:rc:{version}:{context}``."""
    return f"sr:{namespace}:rc:{version}:{context}"


def encode_result(items: Sequence[str], scores: Sequence[float]) -> bytes:
    """A recommendation list as stored: ``[[item ids], [scores]]`` in orjson (~25 B per item)."""
    return orjson.dumps([list(items), list(scores)])


def decode_result(blob: bytes) -> tuple[list[str], list[float]] | None:
    """``(items, scores)`` of a stored value; None for anything malformed (served as a miss)."""
    try:
        value = orjson.loads(blob)
    except orjson.JSONDecodeError:
        return None
    if not (isinstance(value, list) and len(value) == 2):
        return None
    items, scores = value
    if not (isinstance(items, list) and isinstance(scores, list) and len(items) == len(scores)):
        return None
    if not all(isinstance(i, str) for i in items):
        return None
    if not all(isinstance(s, int | float) and not isinstance(s, bool) for s in scores):
        return None
    return items, [float(s) for s in scores]


class ResultCache(Protocol):
    """What the pipeline needs: batched lookups and fills of opaque values under keys of one
    namespace, each fill living ``ttl_ms``."""

    namespace: str
    ttl_ms: int

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def put_many(self, entries: Sequence[tuple[str, bytes]]) -> None: ...


class RedisResultCache:
    """Cached results under ``sr:{namespace}:rc:*``, each with a TTL of ``ttl_ms``."""

    def __init__(self, client: aioredis.Redis, *, namespace: str, ttl_ms: int) -> None:
        if ttl_ms < 1:
            raise ValueError(f"ttl_ms must be >= 1 (0 means no cache at all), not {ttl_ms}")
        self.client = client
        self.namespace = namespace
        self.ttl_ms = ttl_ms
        self._pending: asyncio.Future[None] | None = None  # the fill in flight

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """One ``MGET`` for all ``keys``; None where a key is absent (or expired). Waits for
        the fill in flight first, so that a worker reads what it wrote."""
        await self.flush()
        if not keys:
            return []
        try:
            values = await self.client.mget(list(keys))
        except RedisError as exc:
            raise ResultCacheError(str(exc)) from exc
        out: list[bytes | None] = []
        for v in values:
            if isinstance(v, str):
                raise ResultCacheError("the Redis client must not decode responses")
            out.append(bytes(v) if v is not None else None)
        return out

    async def put_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """``SET key value PX ttl_ms`` for every entry, in one ``EVAL`` (``FILL_LUA``; Redis
        keeps the compiled script, so the text is all that is sent again), written behind:
        this returns at once and the batch goes on to be published meanwhile (a fill is an
        optimisation, and its round trip would otherwise add to every batch's latency). A
        failed fill is logged; the entries are then simply not there."""
        if not entries:
            return
        keys = [k for k, _ in entries]
        values = [v for _, v in entries]
        self._pending = asyncio.ensure_future(self._fill(self._pending, keys, values))

    async def _fill(
        self, previous: asyncio.Future[None] | None, keys: list[str], values: list[bytes]
    ) -> None:
        if previous is not None:  # fills land in the order they were made
            await previous
        try:
            await self.client.eval(FILL_LUA, len(keys), *keys, self.ttl_ms, *values)
        except RedisError as exc:
            log.warning("result cache fill of %d entries failed: %s", len(keys), exc)

    async def flush(self) -> None:
        """Wait for the fills in flight (before a lookup; tests and shutdown)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending


class InMemoryResultCache:
    """``RedisResultCache``'s semantics in a dict, with an injectable clock (ms) so that tests
    can step past the TTL. ``get_calls`` / ``put_calls`` count the batched calls (each would
    be one Redis round trip)."""

    def __init__(
        self,
        *,
        namespace: str = "test",
        ttl_ms: int = 2000,
        clock_ms: Callable[[], float] | None = None,
    ) -> None:
        if ttl_ms < 1:
            raise ValueError(f"ttl_ms must be >= 1 (0 means no cache at all), not {ttl_ms}")
        self.namespace = namespace
        self.ttl_ms = ttl_ms
        self.clock_ms = clock_ms or (lambda: time.monotonic() * 1000)
        self.entries: dict[str, tuple[float, bytes]] = {}
        self.get_calls = 0
        self.put_calls = 0

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        self.get_calls += 1
        now = self.clock_ms()
        out: list[bytes | None] = []
        for key in keys:
            entry = self.entries.get(key)
            if entry is not None and entry[0] <= now:
                del self.entries[key]
                entry = None
            out.append(entry[1] if entry is not None else None)
        return out

    async def put_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """Written at once (the Redis adapter writes behind; its next lookup waits for it,
        so the two read alike)."""
        if not entries:
            return
        self.put_calls += 1
        expires = self.clock_ms() + self.ttl_ms
        for key, value in entries:
            self.entries[key] = (expires, value)
