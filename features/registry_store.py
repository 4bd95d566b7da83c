"""Model promotions mirrored into Redis, so that dashboards and workers without access to the
bundle directory can see which version serves and how it got there.

Redis layout (no TTL: a record, not a cache)::

    sr:{namespace}:models:current   string: the promoted version
    sr:{namespace}:models:history   list, oldest first: JSON {version, action, at_ms, previous}

The filesystem (``<model_dir>/CURRENT`` and ``HISTORY.jsonl``, models/registry.py) stays the
record of truth; this is a mirror, written after the filesystem and allowed to fail.
``InMemoryRegistryStore`` is its twin for tests.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis

HISTORY_MAXLEN = 10_000  # promotions kept in Redis; the full history is HISTORY.jsonl


def current_key(namespace: str) -> str:
    return f"sr:{namespace}:models:current"


def history_key(namespace: str) -> str:
    return f"sr:{namespace}:models:history"


def promotion_entry(version: str, action: str, at_ms: int, previous: str | None) -> dict[str, Any]:
    """The JSON object one promotion is stored as."""
    return {"version": version, "action": action, "at_ms": at_ms, "previous": previous}


class RegistryStore(Protocol):
    async def record(self, version: str, action: str, at_ms: int, previous: str | None) -> None:
        """Set the current version and append the promotion to the history, together."""
        ...

    async def current(self) -> str | None: ...

    async def history(self) -> list[dict[str, Any]]: ...


class RedisRegistryStore:
    """``RegistryStore`` on Redis: one MULTI/EXEC, so a reader never sees the current version
    change without its history entry."""

    def __init__(self, client: aioredis.Redis, *, namespace: str) -> None:
        self._client = client
        self._current = current_key(namespace)
        self._history = history_key(namespace)

    async def record(self, version: str, action: str, at_ms: int, previous: str | None) -> None:
        entry = orjson.dumps(promotion_entry(version, action, at_ms, previous))
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._current, version)
            pipe.rpush(self._history, entry)
            pipe.ltrim(self._history, -HISTORY_MAXLEN, -1)
            await pipe.execute()

    async def current(self) -> str | None:
        value = await self._client.get(self._current)
        return None if value is None else value.decode() if isinstance(value, bytes) else value

    async def history(self) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in await self._client.lrange(self._history, 0, -1)]


class InMemoryRegistryStore:
    """``RegistryStore`` in a dict, for tests and runs without Redis."""

    def __init__(self) -> None:
        self._current: str | None = None
        self._history: list[dict[str, Any]] = []

    async def record(self, version: str, action: str, at_ms: int, previous: str | None) -> None:
        self._current = version
        self._history.append(promotion_entry(version, action, at_ms, previous))
        del self._history[:-HISTORY_MAXLEN]

    async def current(self) -> str | None:
        return self._current

    async def history(self) -> list[dict[str, Any]]:
        return list(self._history)
