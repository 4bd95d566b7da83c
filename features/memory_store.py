"""An in-process user-state store with the interface of ``UserStateStore``.

Offline evaluation replays hundreds of thousands of events through ``recommend_batch``; doing
that against Redis would measure Redis, not the recommender. This store applies the same rule
(``user_state.apply_event``, the reference the Lua script is tested against) to states kept in
a dict, and returns the same encoded bytes, so the pipeline cannot tell the two apart. TTLs are
not modelled: offline, time is event time and nothing expires.
"""

from __future__ import annotations

import numpy as np

from features.store import StateUpdate
from features.user_state import UserState, apply_event, encode_state


class InMemoryStateStore:
    """User states keyed by ``(namespace, user_id)``; ``apply_batch`` as in Redis."""

    def __init__(
        self, *, namespace: str, half_life_ms: float, max_recent: int, space_id: int
    ) -> None:
        self.namespace = namespace
        self.half_life_ms = half_life_ms
        self.max_recent = max_recent
        self.space_id = space_id
        self.states: dict[str, UserState] = {}

    async def load_script(self) -> None:
        """Nothing to load; present so callers can treat both stores alike."""

    async def apply_batch(self, updates: list[StateUpdate]) -> list[bytes]:
        out: list[bytes] = []
        for u in updates:
            state = self.states.get(u.user_id) or UserState()
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
        return out

    async def get(self, user_id: str) -> bytes | None:
        state = self.states.get(user_id)
        return encode_state(state) if state is not None else None

    async def delete(self, user_id: str) -> int:
        return 1 if self.states.pop(user_id, None) is not None else 0
