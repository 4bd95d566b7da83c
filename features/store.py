"""Async Redis adapter for user state: a whole micro-batch in one pipelined round trip.

Each event becomes one ``EVALSHA`` of ``UPDATE_LUA`` (the rule of ``user_state.apply_event``,
run inside Redis) that returns the updated state, so read + update of B events is a single
pipeline: no read-modify-write race between workers and no second round trip. Events of the
same user in one batch are applied in order, because Redis runs a pipeline in order.

Updates are idempotent per event: the script keeps the hashes of each user's last
``replay_window`` applied events in a sibling key (``features.keys.applied_key``, same TTL,
same cluster slot, written in the same script call) and leaves the state alone for an event
whose hash is among them, answering it with the current state and a replay flag. Why
``REPLAY_WINDOW`` = 256 suffices: a redelivery (worker killed before committing offsets,
rebalance, a batch retried after a Redis error) replays at most the uncommitted tail of a
partition, which is what the worker consumed since its last offset commit: faust commits
every ``broker_commit_interval`` (2.8 s) and the worker acknowledges a batch only after its
outputs are on the broker, so the tail is a few seconds of traffic plus the batches in flight
(``stream_buffer_maxsize``). One user's events in such a tail are the few a person produces
in seconds; and the traffic-anomaly guard (``STREAMREC_ANOMALY_USER_EVENTS_PER_MIN``, default
120) keeps a user above its bound out of state updates altogether, so 256 covers more than two
minutes of a user at that bound, against a tail of seconds. A replayed event older than its
user's last 256 applied events would be applied again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from features.keys import applied_key, user_key

REPLAY_WINDOW = 256  # applied event hashes kept per user (see the module docstring)

# KEYS[1] user key, KEYS[2] the user's applied-events key
# ARGV: now_ms, session_hash(8 bytes), item_hash(8 bytes or ""), weight,
#       embedding(float32 LE bytes or ""), half_life_ms, ttl_ms, max_recent, space_id,
#       event_hash(8 bytes, or "": no replay check), replay_window
# Reply: {state after the event, 1 if the event was already applied (state unchanged) else 0}
UPDATE_LUA = r"""
local HDR = '<BBBBHHdc8I4I4'
local event = ARGV[10]
local applied = ''
if #event == 8 then
  applied = redis.call('GET', KEYS[2]) or ''
  if #applied % 8 ~= 0 then applied = '' end
  local init = 1
  while true do  -- a match must start a hash (offset multiple of 8)
    local p = string.find(applied, event, init, true)
    if not p then break end
    if (p - 1) % 8 == 0 then return {redis.call('GET', KEYS[1]) or '', 1} end
    init = p + 1
  end
end
local blob = redis.call('GET', KEYS[1])
local now = tonumber(ARGV[1])
local session = ARGV[2]
local item = ARGV[3]
local weight = tonumber(ARGV[4])
local emb = ARGV[5]
local half_life = tonumber(ARGV[6])
local ttl = tonumber(ARGV[7])
local max_recent = tonumber(ARGV[8])
local space = tonumber(ARGV[9])

local n, n_session, dim, updated, old_session, events, old_space = 0, 0, 0, 0, '', 0, 0
local vec = {}
local recent = {}
-- A value of another layout (or a corrupt one) is replaced by a fresh state rather than
-- stalling the partition: state is a cache of recent behaviour, not a record.
if blob and #blob >= 32 and string.byte(blob, 1) == 1 then
  local ver, flags, reserved
  ver, n, n_session, flags, dim, reserved, updated, old_session, events, old_space =
    struct.unpack(HDR, blob)
  if #blob ~= 32 + 4 * dim + 8 * n then n, dim, n_session, events, old_space = 0, 0, 0, 0, 0 end
  if dim > 0 then vec = {struct.unpack('<' .. string.rep('f', dim), blob, 33)} end
  local start = 33 + 4 * dim
  for i = 1, n do recent[i] = string.sub(blob, start + 8 * (i - 1), start + 8 * i - 1) end
end

local edim = #emb / 4
if edim > 0 then
  if old_space ~= space or dim ~= edim then
    vec = {}
    for i = 1, edim do vec[i] = 0.0 end
    dim = edim
    updated = now
  end
  local decay = 1.0
  if half_life > 0 then
    local dt = now - updated
    if dt < 0 then dt = 0 end
    decay = math.pow(0.5, dt / half_life)
  end
  local e = {struct.unpack('<' .. string.rep('f', dim), emb)}
  for i = 1, dim do vec[i] = decay * vec[i] + weight * e[i] end
  if now > updated then updated = now end
  old_space = space
end

if session ~= old_session then n_session = 0 end
if #item == 8 then
  table.insert(recent, 1, item)
  while #recent > max_recent do table.remove(recent) end
  n_session = math.min(n_session + 1, max_recent)
end

local parts = {struct.pack(HDR, 1, #recent, n_session, 0, dim, 0, updated, session,
                           events + 1, old_space)}
if dim > 0 then
  parts[#parts + 1] = struct.pack('<' .. string.rep('f', dim), unpack(vec, 1, dim))
end
for i = 1, #recent do parts[#parts + 1] = recent[i] end
local out = table.concat(parts)
redis.call('SET', KEYS[1], out, 'PX', ttl)
if #event == 8 then
  -- newest first, at most replay_window hashes
  local window = tonumber(ARGV[11])
  redis.call('SET', KEYS[2], event .. string.sub(applied, 1, 8 * (window - 1)), 'PX', ttl)
end
return {out, 0}
"""

UPDATE_SHA = hashlib.sha1(UPDATE_LUA.encode()).hexdigest()


class StateStoreError(RuntimeError):
    """Redis could not read or update user state (the batch can be retried)."""


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """One event's effect on its user's state (arguments of the Lua update)."""

    user_id: str
    now_ms: float
    session_hash: bytes
    item_hash: bytes | None
    weight: float
    embedding: bytes  # float32[D] little-endian, or b"" when the item is unknown
    # features.keys.id_hash(event_id); b"": no replay check (applied every time)
    event_hash: bytes = b""


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``apply`` returns for B updates: ``states[i]`` is the state after update i (the
    current state, unchanged, when it was a replay), ``replayed[i]`` whether update i's event
    had already been applied."""

    states: list[bytes]
    replayed: list[bool]

    @property
    def n_replayed(self) -> int:
        return sum(self.replayed)


class StateStore(Protocol):
    """What the pipeline needs from a state store: apply a batch of updates in order, each
    event at most once, and return each event's state after its update (Redis here,
    in-process for offline runs)."""

    async def apply(self, updates: list[StateUpdate]) -> Applied: ...


class UserStateStore:
    """User states under ``sr:{namespace}:u:*`` with a TTL refreshed on every event."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        namespace: str,
        ttl_ms: int,
        half_life_ms: float,
        max_recent: int,
        space_id: int,
        replay_window: int = REPLAY_WINDOW,
    ) -> None:
        if replay_window < 1:
            raise ValueError(f"replay_window must be >= 1, not {replay_window}")
        self.client = client
        self.namespace = namespace
        self.ttl_ms = ttl_ms
        self.half_life_ms = half_life_ms
        self.max_recent = max_recent
        self.space_id = space_id
        self.replay_window = replay_window

    async def load_script(self) -> None:
        try:
            await self.client.script_load(UPDATE_LUA)
        except RedisError as exc:
            raise StateStoreError(f"cannot load the state update script: {exc}") from exc

    async def apply_batch(self, updates: list[StateUpdate]) -> list[bytes]:
        """Apply every update in order; return each event's state after its update."""
        return (await self.apply(updates)).states

    async def apply(self, updates: list[StateUpdate]) -> Applied:
        """Apply every update in order, skipping events already applied (``event_hash``
        among the user's last ``replay_window``), in one round trip."""
        if not updates:
            return Applied([], [])
        try:
            return await self._execute(updates)
        except NoScriptError:
            # Redis restarted or was flushed: the script cache is empty. Load and retry once.
            await self.load_script()
            try:
                return await self._execute(updates)
            except RedisError as exc:
                raise StateStoreError(str(exc)) from exc
        except RedisError as exc:
            raise StateStoreError(str(exc)) from exc

    async def _execute(self, updates: list[StateUpdate]) -> Applied:
        pipe = self.client.pipeline(transaction=False)
        for u in updates:
            pipe.evalsha(
                UPDATE_SHA,
                2,
                user_key(self.namespace, u.user_id),
                applied_key(self.namespace, u.user_id),
                repr(u.now_ms),
                u.session_hash,
                u.item_hash or b"",
                repr(u.weight),
                u.embedding,
                repr(self.half_life_ms),
                self.ttl_ms,
                self.max_recent,
                self.space_id,
                u.event_hash,
                self.replay_window,
            )
        results = await pipe.execute(raise_on_error=True)
        return Applied([bytes(r[0]) for r in results], [bool(r[1]) for r in results])

    async def get(self, user_id: str) -> bytes | None:
        value = await self.client.get(user_key(self.namespace, user_id))
        if isinstance(value, str):  # a client created with decode_responses=True
            raise StateStoreError("the Redis client must not decode responses")
        return bytes(value) if value is not None else None

    async def ttl_ms_of(self, user_id: str) -> int:
        return int(await self.client.pttl(user_key(self.namespace, user_id)))

    async def delete(self, user_id: str) -> int:
        """Delete the user's state and applied-event hashes; 1 if there was a state."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(user_key(self.namespace, user_id))
        pipe.delete(applied_key(self.namespace, user_id))
        deleted, _ = await pipe.execute()
        return int(deleted)
