"""Async Redis adapter for user state: a whole micro-batch in one pipelined round trip.

Each event becomes one ``EVALSHA`` of ``UPDATE_LUA`` (the rule of ``user_state.apply_event``,
run inside Redis) that returns the updated state, so read + update of B events is a single
pipeline: no read-modify-write race between workers and no second round trip. Events of the
same user in one batch are applied in order, because Redis runs a pipeline in order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from features.keys import user_key

# KEYS[1] user key
# ARGV: now_ms, session_hash(8 bytes), item_hash(8 bytes or ""), weight,
#       embedding(float32 LE bytes or ""), half_life_ms, ttl_ms, max_recent, space_id
UPDATE_LUA = r"""
local HDR = '<BBBBHHdc8I4I4'
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
return out
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


class StateStore(Protocol):
    """What the pipeline needs from a state store: apply a batch of updates in order and
    return each event's state after its update (Redis here, in-process for offline runs)."""

    async def apply_batch(self, updates: list[StateUpdate]) -> list[bytes]: ...


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
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl_ms = ttl_ms
        self.half_life_ms = half_life_ms
        self.max_recent = max_recent
        self.space_id = space_id

    async def load_script(self) -> None:
        try:
            await self.client.script_load(UPDATE_LUA)
        except RedisError as exc:
            raise StateStoreError(f"cannot load the state update script: {exc}") from exc

    async def apply_batch(self, updates: list[StateUpdate]) -> list[bytes]:
        """Apply every update in order; return each event's state after its update."""
        if not updates:
            return []
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

    async def _execute(self, updates: list[StateUpdate]) -> list[bytes]:
        pipe = self.client.pipeline(transaction=False)
        for u in updates:
            pipe.evalsha(
                UPDATE_SHA,
                1,
                user_key(self.namespace, u.user_id),
                repr(u.now_ms),
                u.session_hash,
                u.item_hash or b"",
                repr(u.weight),
                u.embedding,
                repr(self.half_life_ms),
                self.ttl_ms,
                self.max_recent,
                self.space_id,
            )
        results = await pipe.execute(raise_on_error=True)
        return [bytes(r) for r in results]

    async def get(self, user_id: str) -> bytes | None:
        value = await self.client.get(user_key(self.namespace, user_id))
        if isinstance(value, str):  # a client created with decode_responses=True
            raise StateStoreError("the Redis client must not decode responses")
        return bytes(value) if value is not None else None

    async def ttl_ms_of(self, user_id: str) -> int:
        return int(await self.client.pttl(user_key(self.namespace, user_id)))

    async def delete(self, user_id: str) -> int:
        return int(await self.client.delete(user_key(self.namespace, user_id)))
