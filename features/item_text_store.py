"""Catalogue items and their title embeddings in Redis, so that no worker embeds a title twice.

The worker that consumes a catalogue batch embeds its titles once and writes them here in one
pipelined round trip; a (re)starting worker loads every item in one SCAN pass (one pipelined
``HMGET`` per page of keys) instead of embedding the catalogue again, and the other workers
of the group pick up new items from the change log (``changes_since``, one ``XREAD`` plus one
pipelined ``HMGET``). ``InMemoryItemTextStore`` is its twin for tests and offline runs.

Redis layout (Redis >= 5; nothing here has a TTL: the catalogue is a record, not a cache)::

    sr:{namespace}:item:{item hash hex}   hash: id, title, enc, emb, cat, price, ts
    sr:{namespace}:items:log              stream: one entry per written batch, field h =
                                          the batch's 8-byte item hashes, concatenated

``emb`` is the title's unit vector as little-endian float32 bytes and ``enc`` the name of the
encoder that produced it (``""`` and no ``emb`` when the worker ran without an encoder): a
loader with another encoder embeds those titles again rather than mixing spaces.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from features.keys import HASH_BYTES, id_hash
from features.store import StateStoreError

LOG_MAXLEN = 100_000  # log entries kept (approximately); a worker syncs every second or so
SCAN_COUNT = 1_000
_FIELDS = ("id", "title", "enc", "emb", "cat", "price", "ts")


def item_key(namespace: str, item_id: str) -> str:
    return f"sr:{namespace}:item:{id_hash(item_id).hex()}"


def log_key(namespace: str) -> str:
    return f"sr:{namespace}:items:log"


@dataclass(slots=True)
class StoredItem:
    """A catalogue item as stored: ``vector`` is ``float32[D]`` from encoder ``encoder``, or
    None with ``encoder == ""`` when it was stored without one."""

    item_id: str
    title: str
    timestamp_ms: int
    encoder: str = ""
    vector: np.ndarray | None = None
    category: str | None = None
    price: float | None = None


class ItemTextStore(Protocol):
    """Durable catalogue items; cursors are opaque change-log positions."""

    async def put_batch(self, items: Sequence[StoredItem]) -> str:
        """Write every item (replacing earlier versions) and log the batch; returns its log
        position."""
        ...

    async def load_all(self) -> tuple[list[StoredItem], str]:
        """Every stored item, and the log position from which ``changes_since`` goes on."""
        ...

    async def changes_since(self, cursor: str) -> tuple[list[StoredItem], list[str], str]:
        """Items of the batches logged after ``cursor`` (latest version of each), the log
        positions of those batches, and the new cursor."""
        ...


def _encode(item: StoredItem) -> dict[str, bytes]:
    fields = {
        "id": item.item_id.encode(),
        "title": item.title.encode(),
        "enc": item.encoder.encode(),
        "emb": b"" if item.vector is None else np.asarray(item.vector, "<f4").tobytes(),
        "cat": b"" if item.category is None else item.category.encode(),
        "price": b"" if item.price is None else repr(item.price).encode(),
        "ts": str(item.timestamp_ms).encode(),
    }
    return fields


def _decode(values: Sequence[bytes | None]) -> StoredItem | None:
    """A stored hash from its ``_FIELDS`` values; None when absent or of another layout."""
    raw = dict(zip(_FIELDS, values, strict=True))
    if raw["id"] is None or raw["title"] is None:
        return None
    emb, enc = raw["emb"] or b"", (raw["enc"] or b"").decode()
    vector = np.frombuffer(emb, dtype="<f4").astype(np.float32) if emb and enc else None
    cat, price, ts = raw["cat"], raw["price"], raw["ts"]
    try:
        return StoredItem(
            item_id=raw["id"].decode(),
            title=raw["title"].decode(),
            timestamp_ms=int(ts) if ts else 0,
            encoder=enc if vector is not None else "",
            vector=vector,
            category=cat.decode() if cat else None,
            price=float(price) if price else None,
        )
    except (UnicodeDecodeError, ValueError):
        return None


class RedisItemTextStore:
    """``ItemTextStore`` in Redis under ``sr:{namespace}:item:*`` (layout in the module doc)."""

    def __init__(self, client: aioredis.Redis, *, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.log = log_key(namespace)

    async def put_batch(self, items: Sequence[StoredItem]) -> str:
        if not items:
            return ""
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.hset(item_key(self.namespace, item.item_id), mapping=_encode(item))  # type: ignore[arg-type]
        hashes = b"".join(id_hash(i.item_id) for i in items)
        pipe.xadd(self.log, {"h": hashes}, maxlen=LOG_MAXLEN, approximate=True)
        try:
            results = await pipe.execute(raise_on_error=True)
        except RedisError as exc:
            raise StateStoreError(f"cannot store catalogue items: {exc}") from exc
        return _text(results[-1])

    async def load_all(self) -> tuple[list[StoredItem], str]:
        try:
            # The cursor is taken before the scan: a batch written during the scan is either
            # seen by the scan or logged after the cursor (read again later: harmless).
            last: Any = await self.client.xrevrange(self.log, count=1)
            cursor = _text(last[0][0]) if last else "0-0"
            items: list[StoredItem] = []
            async for keys in self._pages():
                items.extend(await self._read(keys))
        except RedisError as exc:
            raise StateStoreError(f"cannot load catalogue items: {exc}") from exc
        return items, cursor

    async def _pages(self) -> AsyncIterator[list[bytes]]:
        """The item keys, one SCAN page at a time."""
        scan_cursor = 0
        pattern = f"sr:{self.namespace}:item:*"
        while True:
            page: Any = await self.client.scan(scan_cursor, match=pattern, count=SCAN_COUNT)
            scan_cursor, keys = page
            if keys:
                yield keys
            if int(scan_cursor) == 0:
                return

    async def _read(self, keys: Sequence[bytes | str]) -> list[StoredItem]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, _FIELDS)
        rows = await pipe.execute(raise_on_error=True)
        return [item for row in rows if (item := _decode(row)) is not None]

    async def changes_since(self, cursor: str) -> tuple[list[StoredItem], list[str], str]:
        try:
            answer: Any = await self.client.xread({self.log: cursor}, count=1000)
            if not answer:
                return [], [], cursor
            entries: list[tuple[bytes, dict[bytes, bytes]]] = answer[0][1]
            positions = [_text(entry_id) for entry_id, _ in entries]
            keys: dict[bytes, None] = {}
            for _, fields in entries:
                packed = fields.get(b"h", b"")
                for start in range(0, len(packed), HASH_BYTES):
                    keys[packed[start : start + HASH_BYTES]] = None
            prefix = f"sr:{self.namespace}:item:"
            items = await self._read([prefix + h.hex() for h in keys])
        except RedisError as exc:
            raise StateStoreError(f"cannot read catalogue changes: {exc}") from exc
        return items, positions, positions[-1]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class InMemoryItemTextStore:
    """``ItemTextStore`` in process memory, with the same semantics (tests, offline runs)."""

    def __init__(self) -> None:
        self.items: dict[str, StoredItem] = {}
        self.entries: list[list[str]] = []
        self.puts = 0

    async def put_batch(self, items: Sequence[StoredItem]) -> str:
        if not items:
            return ""
        self.puts += 1
        for item in items:
            self.items[item.item_id] = item
        self.entries.append([i.item_id for i in items])
        return str(len(self.entries))

    async def load_all(self) -> tuple[list[StoredItem], str]:
        return list(self.items.values()), str(len(self.entries))

    async def changes_since(self, cursor: str) -> tuple[list[StoredItem], list[str], str]:
        start = int(cursor)
        new = self.entries[start:]
        if not new:
            return [], [], cursor
        ids = dict.fromkeys(i for entry in new for i in entry)
        positions = [str(p) for p in range(start + 1, len(self.entries) + 1)]
        return [self.items[i] for i in ids], positions, positions[-1]
