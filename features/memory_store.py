"""An in-process user-state store with the interface of ``UserStateStore``.

Offline evaluation replays hundreds of thousands of events through ``recommend_batch``; doing
that against Redis would measure Redis, not the recommender. This store applies the same rule
(``user_state.apply_event``, the reference the Lua script is tested against) to states kept in
a dict, and returns the same encoded bytes, so the pipeline cannot tell the two apart. TTLs are
not modelled: offline, time is event time and nothing expires. The replay check
(``user_state.remember_event``) is off unless ``replay_window`` > 0: offline inputs are read
once, and 2 KB of hashes per user would dominate the memory of a long evaluation.
"""

from __future__ import annotations

import numpy as np

from features.store import Applied, StateUpdate
from features.user_state import UserState, apply_event, encode_state, remember_event


class InMemoryStateStore:
    """User states keyed by ``(namespace, user_id)``; ``apply_batch`` as in Redis."""

    def __init__(
        self,
        *,
        namespace: str,
        half_life_ms: float,
        max_recent: int,
        space_id: int,
        replay_window: int = 0,
    ) -> None:
        self.namespace = namespace
        self.half_life_ms = half_life_ms
        self.max_recent = max_recent
        self.space_id = space_id
        self.replay_window = replay_window
        self.states: dict[str, UserState] = {}
        self.applied: dict[str, bytes] = {}  # user -> applied event hashes, newest first

    async def load_script(self) -> None:
        """Nothing to load; present so callers can treat both stores alike."""

    async def apply_batch(self, updates: list[StateUpdate]) -> list[bytes]:
        return (await self.apply(updates)).states

    async def apply(self, updates: list[StateUpdate]) -> Applied:
        out: list[bytes] = []
        replayed: list[bool] = []
        for u in updates:
            state = self.states.get(u.user_id) or UserState()
            if self.replay_window > 0 and u.event_hash:
                seen, hashes = remember_event(
                    self.applied.get(u.user_id, b""), u.event_hash, self.replay_window
                )
                replayed.append(seen)
                if seen:
                    out.append(encode_state(state) if u.user_id in self.states else b"")
                    continue
                self.applied[u.user_id] = hashes
            else:
                replayed.append(False)
            embedding = np.frombuffer(u.embedding, dtype="<f4") if u.embedding else None
            state = apply_event(
                state,
                now_ms=u.now_ms,
                session_hash=u.session_hash,
                item_hash=u.item_hash,
                weight=u.weight,
                embedding=embedding,
                half_life_ms=self.half_life_ms,
                max_recent=self.max_recent,
                space_id=self.space_id,
            )
            self.states[u.user_id] = state
            out.append(encode_state(state))
        return Applied(out, replayed)

    async def get(self, user_id: str) -> bytes | None:
        state = self.states.get(user_id)
        return encode_state(state) if state is not None else None

    async def delete(self, user_id: str) -> int:
        self.applied.pop(user_id, None)
        return 1 if self.states.pop(user_id, None) is not None else 0
