"""Online co-visitation and trending popularity in Redis, updated once per micro-batch.

The worker feeds every micro-batch's same-session transitions (``src -> dst``) and interactions
into Redis, so the neighbours and the trending items it serves follow the traffic before any
retraining. ``RedisCovisitStore`` applies a whole batch and reads back what the batch needs in
one ``EVALSHA`` (one round trip); ``features.memory_covisit.InMemoryCovisitStore`` is its twin for
offline evaluation, with the same semantics and, on one machine, bit-identical weights.

Semantics (both stores):

- A batch's reads see the store as it was *before* the batch's updates: an event's answer
  never depends on events after it that happen to share its micro-batch (in a replay of
  history, the very next item of the session is often one of them).

- A transition ``src -> dst`` adds 1 to ``dst`` in ``src``'s neighbour list and
  ``back_weight`` to ``src`` in ``dst``'s list (association, weaker). Self-transitions and
  hash 0 (the empty slot) are ignored. An interaction adds its weight to the item's trending
  score; weights must be >= 0 (0 changes nothing).
- Exponential decay with half-life ``half_life_ms`` by *event time*, as forward decay in log
  space: an increment ``w`` at time ``t`` is stored as ``log2(w) + (t - EPOCH_MS) / H`` and
  merged with the stored value by ``log2(2^a + 2^b)``; a read at ``now`` returns
  ``2^(L - (now - EPOCH_MS) / H)``. Old entries are never touched, and the ordering by ``L``
  is the ordering by decayed weight at any ``now``. Log space is what makes replays work: a
  linear forward-decay score ``2^((t - epoch) / H)`` passes 2^1024 (double overflow) after
  1024 half-lives, 8.4 years at H = 3 days, so no fixed epoch covers MovieLens (1996-2018) and
  today; ``L`` instead is an ordinary number (about 122 per year of event time at H = 3 days)
  that neither overflows nor underflows for any finite time. ``EPOCH_MS`` (2000-01-01) is fixed
  so that every process and run agrees without coordination; its only effect is precision:
  ``L`` has ulp ``|L| * 2^-52``, so each stored merge may be off by a relative ``0.7 * |L| *
  2^-52`` in weight, below float32 resolution while ``|t - EPOCH_MS| / H < 2^28`` (2 million
  years at H = 3 days, 8.5 years at H = 1 s). ``half_life_ms = inf``: no decay, plain counts.
- Bounded memory: a neighbour list keeps the ``keep`` heaviest entries, trimmed when it grows
  past ``trim_at`` (``trim_factor * keep``), so a newcomer gets some time to gain weight before
  it competes; the trending list likewise with ``keep_trending``. Decay lets new traffic
  displace old entries: a new increment outweighs an old entry after enough half-lives.
- Order is heaviest first, and ties are broken the same way in both stores (so their outputs
  are identical, ties included): after a batch, a list is the stable sort by weight of the
  entries the batch left alone, in their previous order, followed by the entries it changed or
  added, in the order of their member hashes (``uint64`` ascending).

Redis layout (Redis >= 2.6.12; every key the script touches is passed in ``KEYS``)::

    sr:{namespace}:cv:n:{item hash hex}   an item's neighbours, TTL refreshed on write
    sr:{namespace}:cv:pop                 trending items, TTL refreshed on write

Each value is a string of 16-byte records ``(member: 8 raw hash bytes, log2 weight: float64
LE)`` sorted heaviest first (``RECORD`` below). The hex is that of the 8 hash bytes, i.e.
``features.keys.id_hash(item_id).hex()``. Why a packed string rather than a sorted set: a batch
reads about Q * M entries (768 * 50 in the benchmark), and a sorted set hands each one to Lua as
a formatted double: ``ZRANGE ... WITHSCORES`` of 768 * 50 entries alone took 42 ms on the
development host (Redis 7.0), a whole batch here (updates included) 21-24 ms. A packed list is
read with one ``GETRANGE`` per query, and a batch rewrites each list it changes once (find,
binary search, one concatenation) over at most ``trim_at`` records.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from features.store import StateStoreError

DAY_MS = 86_400_000
EPOCH_MS = 946_684_800_000.0  # 2000-01-01T00:00:00Z: reference time of the log2 weights
RECORD = np.dtype([("member", "<u8"), ("log2w", "<f8")])  # 16 bytes, the stored record
LN2 = math.log(2.0)
_F32_MAX = float(np.finfo(np.float32).max)

# KEYS[1] trending key, KEYS[2 .. 1+K] neighbour keys to update, KEYS[2+K .. 1+K+Q] to read
# ARGV[1] K, ARGV[2] Q, ARGV[3] number of increments per updated key ('<I4' each),
# ARGV[4] their members (8 bytes each, grouped by key), ARGV[5] their log2 increments ('<d'),
# ARGV[6] trending members, ARGV[7] their log2 increments, ARGV[8] keep, ARGV[9] trim_at,
# ARGV[10] keep_trending, ARGV[11] trim_trending_at, ARGV[12] ttl_ms, ARGV[13] top_m,
# ARGV[14] top_p
COVISIT_LUA = r"""
local LN2 = math.log(2)

-- 1-based offset of member m's record in blob, or nil (a match must start a record).
local function find(blob, m)
  local init = 1
  while true do
    local p = string.find(blob, m, init, true)
    if not p or (p - 1) % 16 == 0 then return p end
    init = p + 1
  end
end

-- Number of records in blob (sorted heaviest first) at least as heavy as w.
local function rank(blob, w)
  local lo, hi = 0, #blob / 16
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if struct.unpack('<d', blob, 16 * mid + 9) >= w then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- A value of another layout is replaced rather than failing the batch: it is a cache.
local function load(key)
  local blob = redis.call('GET', key)
  if not blob or #blob % 16 ~= 0 then return '' end
  return blob
end

-- Apply increments first..last to the list at key. The new list is the stable sort, heaviest
-- first, of the records the batch leaves alone (in their order) followed by those it changes
-- or adds (in the batch's order), cut to keep records once longer than trim_at: built as the
-- old records' runs between cut points and the new records, with one concatenation.
local function update(key, members, incs, first, last, keep, trim_at, ttl)
  local blob = load(key)
  local new, removed = {}, {}
  for i = first, last do
    local m = string.sub(members, 8 * i - 7, 8 * i)
    local w = struct.unpack('<d', incs, 8 * i - 7)
    local p = find(blob, m)
    if p then
      local a, b = struct.unpack('<d', blob, p + 8), w
      if b > a then a, b = b, a end
      w = a + math.log(1 + math.pow(2, b - a)) / LN2
      removed[#removed + 1] = (p - 1) / 16
    end
    new[#new + 1] = {w, i, m .. struct.pack('<d', w)}
  end
  if #new > 1 then
    table.sort(new, function(x, y) return x[1] > y[1] or (x[1] == y[1] and x[2] < y[2]) end)
  end
  table.sort(removed)
  local parts, r, from = {}, 1, 0
  local function copy(to)  -- old records [from, to) except the removed ones
    while removed[r] and removed[r] < to do
      parts[#parts + 1] = string.sub(blob, 16 * from + 1, 16 * removed[r])
      from, r = removed[r] + 1, r + 1
    end
    if to > from then
      parts[#parts + 1] = string.sub(blob, 16 * from + 1, 16 * to)
      from = to
    end
  end
  for _, rec in ipairs(new) do
    copy(rank(blob, rec[1]))
    parts[#parts + 1] = rec[3]
  end
  copy(#blob / 16)
  blob = table.concat(parts)
  if #blob > 16 * trim_at then blob = string.sub(blob, 1, 16 * keep) end
  redis.call('SET', key, blob, 'PX', ttl)
  return blob
end

local n_keys, n_queries = tonumber(ARGV[1]), tonumber(ARGV[2])
local counts, members, incs = ARGV[3], ARGV[4], ARGV[5]
local keep, trim_at = tonumber(ARGV[8]), tonumber(ARGV[9])
local ttl, top_m, top_p = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])

-- The n heaviest records of the list at key.
local function head(key, n)
  if n == 0 then return '' end
  local part = redis.call('GETRANGE', key, 0, 16 * n - 1)
  if #part % 16 ~= 0 then return '' end
  return part
end

-- Reply: {record count per query ('<I4' each), top_p trending records, then the queries' top
-- records in groups of 8 queries}: Lua 5.1 builds one large string slowly (measured 2.3 ms for
-- 600 queries), and the client parses many small replies slowly; groups of 8 cost least.
local reply = {'', head(KEYS[1], top_p)}
local sizes, group = {}, {}
for q = 1, n_queries do
  local part = head(KEYS[1 + n_keys + q], top_m)
  sizes[q] = struct.pack('<I4', #part / 16)
  group[#group + 1] = part
  if #group == 8 or q == n_queries then
    reply[#reply + 1] = table.concat(group)
    group = {}
  end
end
reply[1] = table.concat(sizes)

-- The updates come after the reads: a batch's answers never depend on its own (later) events.
local done = 0
for k = 1, n_keys do
  local c = struct.unpack('<I4', counts, 4 * k - 3)
  update(KEYS[1 + k], members, incs, done + 1, done + c, keep, trim_at, ttl)
  done = done + c
end
if #ARGV[6] > 0 then
  update(KEYS[1], ARGV[6], ARGV[7], 1, #ARGV[6] / 8, tonumber(ARGV[10]), tonumber(ARGV[11]), ttl)
end
return reply
"""

COVISIT_SHA = hashlib.sha1(COVISIT_LUA.encode()).hexdigest()


class CovisitStoreError(StateStoreError):
    """Redis could not apply or read co-visitation (the batch can be retried). A subclass of
    ``StateStoreError`` so that the worker's retry of unavailable Redis covers it too."""


@dataclass(frozen=True, slots=True)
class CovisitConfig:
    """Parameters shared by both stores (they must match for the stores to agree)."""

    half_life_ms: float = 3.0 * DAY_MS
    back_weight: float = 0.5  # weight of dst -> src per transition src -> dst; 0 disables
    keep: int = 100  # neighbours kept per item after a trim
    keep_trending: int = 1000
    trim_factor: float = 2.0  # a list longer than trim_factor * keep is cut back to keep
    top_m: int = 50  # neighbours returned per query
    top_p: int = 100  # trending items returned
    ttl_ms: int = 30 * DAY_MS  # Redis only: idle lists expire (wall-clock, from the last write)

    def __post_init__(self) -> None:
        if not self.half_life_ms > 0:
            raise ValueError(f"half_life_ms must be > 0 (inf: no decay), not {self.half_life_ms}")
        if not (self.back_weight >= 0 and math.isfinite(self.back_weight)):
            raise ValueError(f"back_weight must be finite and >= 0, not {self.back_weight}")
        if min(self.keep, self.keep_trending, self.ttl_ms) < 1 or min(self.top_m, self.top_p) < 0:
            raise ValueError("keep, keep_trending and ttl_ms must be >= 1, top_m and top_p >= 0")
        if not self.trim_factor >= 1:
            raise ValueError(f"trim_factor must be >= 1, not {self.trim_factor}")

    @property
    def trim_at(self) -> int:
        return int(self.keep * self.trim_factor)

    @property
    def trim_trending_at(self) -> int:
        return int(self.keep_trending * self.trim_factor)


@dataclass(frozen=True, slots=True)
class CovisitBatch:
    """One micro-batch's updates and reads; item ids are ``uint64`` item hashes
    (``features.keys.item_hashes_u64``), times are event times in ms."""

    src: np.ndarray  # uint64[T] previous item of a same-session transition
    dst: np.ndarray  # uint64[T] the item that followed it
    transition_ms: np.ndarray  # float64[T] event time of each transition
    items: np.ndarray  # uint64[E] items interacted with (popularity), may repeat
    item_ms: np.ndarray  # float64[E]
    item_weight: np.ndarray  # float32[E] per-event weight (e.g. view 1, purchase 3), >= 0
    queries: np.ndarray  # uint64[Q] items whose top neighbours to read (before the updates)
    now_ms: float  # reference time of the decayed weights returned

    @property
    def is_empty(self) -> bool:
        """Nothing to update and nothing to read: the stores answer without any work."""
        return self.src.size == 0 and self.items.size == 0 and self.queries.size == 0


@dataclass(frozen=True, slots=True)
class CovisitRead:
    """What a batch reads back: the store as it was before the batch's own updates, so an
    event's answer never depends on events after it in the same batch."""

    neighbours: np.ndarray  # uint64[Q, M] top-M neighbours per query, heaviest first, 0 = empty
    weights: np.ndarray  # float32[Q, M] decayed weights at now_ms (0 for empty slots)
    trending: np.ndarray  # uint64[P] most popular items (decayed) at now_ms, heaviest first
    trending_weights: np.ndarray  # float32[P]


class CovisitStore(Protocol):
    """What the pipeline needs: apply one batch and read its neighbours and the trending items
    (Redis in the worker, in-process for offline evaluation)."""

    async def update_and_read(self, batch: CovisitBatch) -> CovisitRead: ...


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch reduced to per-list increments in log space, in the order both stores apply
    them. Increments of the same (list, member) within the batch are already merged."""

    owners: np.ndarray  # uint64[K] items whose neighbour lists change, ascending
    counts: np.ndarray  # int64[K] increments per owner
    members: np.ndarray  # uint64[N] grouped by owner, ascending within an owner
    log2_incs: np.ndarray  # float64[N]
    popular: np.ndarray  # uint64[U] items whose trending score changes, ascending
    popular_log2_incs: np.ndarray  # float64[U]
    unique_queries: np.ndarray  # uint64[Qu] ascending
    query_index: np.ndarray  # int64[Q] row of unique_queries answering each query
    read_offset: float  # (now_ms - EPOCH_MS) / half_life_ms: subtracted from log2 weights


def covisit_key(namespace: str, item_hash: bytes) -> str:
    """Key of an item's neighbour list: ``sr:{namespace}:cv:n:{hash hex}``."""
    return f"sr:{namespace}:cv:n:{item_hash.hex()}"


def trending_key(namespace: str) -> str:
    return f"sr:{namespace}:cv:pop"


def u64_bytes(values: np.ndarray) -> bytes:
    """The 8-byte hashes of ``uint64[N]`` values, concatenated (inverse of ``hashes_to_u64``)."""
    return np.ascontiguousarray(values, dtype="<u8").tobytes()


def log2_weight(weight: np.ndarray, t_ms: np.ndarray, half_life_ms: float) -> np.ndarray:
    """``float64[N]``: the stored form ``log2(w) + (t - EPOCH_MS) / H`` of increments ``w`` at
    times ``t`` (``w > 0``)."""
    return np.log2(weight) + (t_ms - EPOCH_MS) / half_life_ms


def logadd2(a: float, b: float) -> float:
    """``log2(2^a + 2^b)``, written as the Lua script computes it (same libm calls, same
    order), so that both stores produce the same doubles."""
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log(1.0 + math.pow(2.0, lo - hi)) / LN2


def _array(values: np.ndarray, dtype: type[np.generic], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, not of shape {arr.shape}")
    return arr


def _merge(
    owners: np.ndarray, members: np.ndarray, incs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort increments by (owner, member) and merge equal pairs in log space (stable, so the
    merge order is the batch order). Returns (owners, members, log2_incs), one per pair."""
    if owners.size == 0:
        return owners, members, incs
    order = np.lexsort((members, owners))
    owners, members, incs = owners[order], members[order], incs[order]
    new = np.empty(owners.size, dtype=bool)
    new[0] = True
    new[1:] = (owners[1:] != owners[:-1]) | (members[1:] != members[:-1])
    starts = np.flatnonzero(new)
    return owners[starts], members[starts], np.logaddexp2.reduceat(incs, starts)


def prepare(batch: CovisitBatch, config: CovisitConfig) -> PreparedBatch:
    """Validate ``batch`` and reduce it to the increments both stores apply.

    Raises ``ValueError`` for mismatched lengths, non-finite times or weights, and negative
    weights (log space cannot subtract).
    """
    src = _array(batch.src, np.uint64, "src")
    dst = _array(batch.dst, np.uint64, "dst")
    t_ms = _array(batch.transition_ms, np.float64, "transition_ms")
    items = _array(batch.items, np.uint64, "items")
    item_ms = _array(batch.item_ms, np.float64, "item_ms")
    weight = _array(batch.item_weight, np.float64, "item_weight")
    queries = _array(batch.queries, np.uint64, "queries")
    if not src.size == dst.size == t_ms.size:
        raise ValueError(f"src, dst, transition_ms lengths {src.size}, {dst.size}, {t_ms.size}")
    if not items.size == item_ms.size == weight.size:
        sizes = f"{items.size}, {item_ms.size}, {weight.size}"
        raise ValueError(f"items, item_ms, item_weight lengths {sizes}")
    finite = np.isfinite(t_ms).all() and np.isfinite(item_ms).all()
    if not (finite and math.isfinite(batch.now_ms)):
        raise ValueError("event times and now_ms must be finite")
    if not np.isfinite(weight).all() or (weight < 0).any():
        raise ValueError("item weights must be finite and >= 0")
    h = config.half_life_ms

    ok = (src != dst) & (src != 0) & (dst != 0)
    src, dst, base = src[ok], dst[ok], (t_ms[ok] - EPOCH_MS) / h
    owners, members, incs = [src], [dst], [base]
    if config.back_weight > 0:
        owners.append(dst)
        members.append(src)
        incs.append(base + math.log2(config.back_weight))
    own, mem, inc = _merge(np.concatenate(owners), np.concatenate(members), np.concatenate(incs))
    starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]]) if own.size else np.zeros(0, int)
    counts = np.diff(np.r_[starts, own.size]).astype(np.int64)

    ok = (items != 0) & (weight > 0)
    pop_inc = log2_weight(weight[ok], item_ms[ok], h)
    zeros = np.zeros(int(ok.sum()), dtype=np.uint64)
    _, popular, pop_inc = _merge(zeros, items[ok], pop_inc)

    unique_queries, query_index = np.unique(queries, return_inverse=True)
    return PreparedBatch(
        owners=own[starts],
        counts=counts,
        members=mem,
        log2_incs=inc,
        popular=popular,
        popular_log2_incs=pop_inc,
        unique_queries=unique_queries,
        query_index=query_index.astype(np.int64).reshape(-1),
        read_offset=(batch.now_ms - EPOCH_MS) / h,
    )


def _weights(log2w: np.ndarray, offset: float) -> np.ndarray:
    """``float32[...]`` decayed weights from stored log2 weights (clipped below float32 inf)."""
    with np.errstate(over="ignore"):  # entries newer than now_ms by > 128 half-lives
        return np.minimum(np.exp2(log2w - offset), _F32_MAX).astype(np.float32)


def decode_read(
    prepared: PreparedBatch,
    records: np.ndarray,
    sizes: np.ndarray,
    trending: np.ndarray,
    top_m: int,
) -> CovisitRead:
    """Build the answer from ``records`` (``RECORD[sum(sizes)]``: the top records of each
    unique query, concatenated), ``sizes`` (``int[Qu]``) and ``trending`` (``RECORD[P]``)."""
    n_unique = prepared.unique_queries.size
    sizes = sizes.astype(np.int64)
    rows = np.repeat(np.arange(n_unique), sizes)
    cols = np.arange(rows.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    neighbours = np.zeros((n_unique, top_m), dtype=np.uint64)
    weights = np.zeros((n_unique, top_m), dtype=np.float32)
    neighbours[rows, cols] = records["member"]
    weights[rows, cols] = _weights(records["log2w"], prepared.read_offset)
    return CovisitRead(
        neighbours=neighbours[prepared.query_index],
        weights=weights[prepared.query_index],
        trending=trending["member"].astype(np.uint64),
        trending_weights=_weights(trending["log2w"], prepared.read_offset),
    )


def empty_read(n_queries: int, top_m: int) -> CovisitRead:
    return CovisitRead(
        neighbours=np.zeros((n_queries, top_m), dtype=np.uint64),
        weights=np.zeros((n_queries, top_m), dtype=np.float32),
        trending=np.zeros(0, dtype=np.uint64),
        trending_weights=np.zeros(0, dtype=np.float32),
    )


def _hex_keys(prefix: str, values: np.ndarray) -> list[str]:
    """``prefix + hash hex`` for each of ``uint64[N]`` values (one hex conversion for all)."""
    hexes = u64_bytes(values).hex()
    return [prefix + hexes[i : i + 16] for i in range(0, len(hexes), 16)]


class RedisCovisitStore:
    """Co-visitation lists and trending items under ``sr:{namespace}:cv:*``: one ``EVALSHA``
    per batch applies its increments and returns the neighbours of its queries."""

    def __init__(
        self, client: aioredis.Redis, *, namespace: str, config: CovisitConfig | None = None
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.config = config or CovisitConfig()
        self._prefix = f"sr:{namespace}:cv:n:"

    async def load_script(self) -> None:
        try:
            await self.client.script_load(COVISIT_LUA)
        except RedisError as exc:
            raise CovisitStoreError(f"cannot load the co-visitation script: {exc}") from exc

    async def update_and_read(self, batch: CovisitBatch) -> CovisitRead:
        """Apply ``batch`` and read back its queries' neighbours and the trending items, in
        one round trip. An empty batch returns an empty read without calling Redis."""
        c = self.config
        if batch.is_empty:
            return empty_read(0, c.top_m)
        prepared = prepare(batch, c)
        try:
            reply = await self._execute(prepared)
        except NoScriptError:
            # Redis restarted or was flushed: the script cache is empty. Load and retry once.
            await self.load_script()
            try:
                reply = await self._execute(prepared)
            except RedisError as exc:
                raise CovisitStoreError(str(exc)) from exc
        except RedisError as exc:
            raise CovisitStoreError(str(exc)) from exc
        if not all(isinstance(part, bytes) for part in reply[:2]):
            raise CovisitStoreError("the Redis client must not decode responses")
        return decode_read(
            prepared,
            np.frombuffer(b"".join(reply[2:]), dtype=RECORD),
            np.frombuffer(reply[0], dtype="<u4"),
            np.frombuffer(reply[1], dtype=RECORD),
            c.top_m,
        )

    async def _execute(self, p: PreparedBatch) -> list[bytes]:
        c = self.config
        keys = [
            trending_key(self.namespace),
            *_hex_keys(self._prefix, p.owners),
            *_hex_keys(self._prefix, p.unique_queries),
        ]
        args: list[bytes | int] = [
            p.owners.size,
            p.unique_queries.size,
            p.counts.astype("<u4").tobytes(),
            u64_bytes(p.members),
            p.log2_incs.astype("<f8").tobytes(),
            u64_bytes(p.popular),
            p.popular_log2_incs.astype("<f8").tobytes(),
            c.keep,
            c.trim_at,
            c.keep_trending,
            c.trim_trending_at,
            c.ttl_ms,
            c.top_m,
            c.top_p,
        ]
        reply = await self.client.evalsha(COVISIT_SHA, len(keys), *keys, *args)
        return list(reply)

    def key_of(self, item: int) -> str:
        """Key of ``item``'s (a ``uint64`` hash) neighbour list."""
        return _hex_keys(self._prefix, np.array([item], dtype=np.uint64))[0]
