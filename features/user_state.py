"""User state: its byte layout (version 1) and the pure update rule.

A user's state is one Redis string. Layout v1, little-endian, ``32 + 4*D + 8*n`` bytes:

    offset  size  type      field
    0       1     u8        layout version (1)
    1       1     u8        n: number of recent items stored (<= max_recent)
    2       1     u8        how many of the newest recent items belong to the current session
    3       1     u8        flags (0)
    4       2     u16       D: vector dimension (0 = no vector yet)
    6       2     u16       reserved (0)
    8       8     f64       updated_at_ms (event time of the last vector update)
    16      8     bytes[8]  hash of the current session id
    24      4     u32       events applied
    28      4     u32       embedding-space id of the vector (crc32 of the model's space id)
    32      4*D   f32[D]    long-term vector: time-decayed, weighted sum of item embeddings
    32+4D   8*n   bytes[8]  recent item hashes, newest first

The update is applied inside Redis by a Lua script (features/store.py) so that reading and
updating a batch of users costs one pipelined round trip; ``apply_event`` below is the same
rule in numpy, used by unit tests, offline evaluation, and a test that checks the two agree.
A vector written in another embedding space is discarded rather than mixed with the new one.

Replays: besides the state, each user has a list of the 8-byte hashes of their last applied
events (newest first, ``8*k`` bytes, ``k <= window``); an event whose hash is in it is not
applied again. ``remember_event`` is that rule (the script's twin).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

LAYOUT_VERSION = 1
HEADER = struct.Struct("<BBBBHHd8sII")
HEADER_SIZE = HEADER.size  # 32
NO_SESSION = b"\x00" * 8


class StateFormatError(ValueError):
    """Bytes in Redis that are not a user state of a layout this code can read."""


@dataclass(slots=True)
class UserState:
    """Decoded user state. ``vector`` is ``float32[D]`` (``D == 0`` before any known item);
    ``recent`` holds 8-byte item hashes, newest first."""

    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    recent: list[bytes] = field(default_factory=list)
    n_session: int = 0
    session_hash: bytes = NO_SESSION
    updated_at_ms: float = 0.0
    events: int = 0
    space_id: int = 0

    @property
    def session_items(self) -> list[bytes]:
        """Hashes of the items seen in the current session (newest first)."""
        return self.recent[: self.n_session]


def encode_state(state: UserState) -> bytes:
    dim = int(state.vector.shape[0])
    header = HEADER.pack(
        LAYOUT_VERSION,
        len(state.recent),
        state.n_session,
        0,
        dim,
        0,
        float(state.updated_at_ms),
        state.session_hash,
        state.events,
        state.space_id,
    )
    return header + state.vector.astype("<f4").tobytes() + b"".join(state.recent)


def decode_state(blob: bytes | None) -> UserState:
    """Decode a Redis value; ``None`` (no state yet) gives an empty state."""
    if not blob:
        return UserState()
    if len(blob) < HEADER_SIZE:
        raise StateFormatError(f"user state of {len(blob)} bytes is shorter than its header")
    version, n, n_session, _flags, dim, _r, updated, session, events, space = HEADER.unpack_from(
        blob
    )
    if version != LAYOUT_VERSION:
        raise StateFormatError(f"user state layout {version} is not supported")
    expected = HEADER_SIZE + 4 * dim + 8 * n
    if len(blob) != expected:
        raise StateFormatError(f"user state has {len(blob)} bytes, layout says {expected}")
    vector = np.frombuffer(blob, dtype="<f4", count=dim, offset=HEADER_SIZE).astype(np.float32)
    start = HEADER_SIZE + 4 * dim
    recent = [blob[start + 8 * i : start + 8 * (i + 1)] for i in range(n)]
    return UserState(vector, recent, n_session, session, updated, events, space)


def decay_factor(updated_at_ms: float, now_ms: float, half_life_ms: float) -> float:
    """Weight of the old vector after ``now - updated_at`` (event time; never grows it)."""
    if half_life_ms <= 0:
        return 1.0
    dt = max(0.0, now_ms - updated_at_ms)
    return float(0.5 ** (dt / half_life_ms))


def apply_event(
    state: UserState,
    *,
    now_ms: float,
    session_hash: bytes,
    item_hash: bytes | None,
    weight: float,
    embedding: np.ndarray | None,
    half_life_ms: float,
    max_recent: int,
    space_id: int,
) -> UserState:
    """Return the state after one event (the input is not modified).

    - a new session resets the session marker; the recent items themselves persist;
    - an item event puts the item's hash first in ``recent`` (capped at ``max_recent``);
    - a known item (``embedding`` is ``float32[D]``) updates the vector:
      ``v = decay * v + weight * e``; an unknown item leaves the vector alone;
    - a vector from another embedding space (``space_id``) is discarded first.
    """
    vector = state.vector
    updated = state.updated_at_ms
    current_space = state.space_id
    if embedding is not None and embedding.size:
        if current_space != space_id or vector.shape[0] != embedding.shape[0]:
            vector = np.zeros_like(embedding, dtype=np.float32)
            updated = now_ms
        decay = decay_factor(updated, now_ms, half_life_ms)
        vector = (np.float32(decay) * vector + np.float32(weight) * embedding).astype(np.float32)
        updated = max(updated, now_ms)
        current_space = space_id

    n_session = state.n_session if session_hash == state.session_hash else 0
    recent = list(state.recent)
    if item_hash is not None:
        recent = [item_hash, *recent][:max_recent]
        n_session = min(n_session + 1, max_recent)
    return UserState(
        vector=vector,
        recent=recent,
        n_session=n_session,
        session_hash=session_hash,
        updated_at_ms=updated,
        events=state.events + 1,
        space_id=current_space,
    )


def remember_event(applied: bytes, event_hash: bytes, window: int) -> tuple[bool, bytes]:
    """The replay check: ``(True, applied)`` when ``event_hash`` (8 bytes) is one of the
    hashes in ``applied`` (``8*k`` bytes, newest first), else ``(False, new list)`` with it
    prepended and the list cut to ``window`` hashes. A list of another length is treated as
    empty, as the script does."""
    if len(event_hash) != 8:
        raise ValueError(f"an event hash has 8 bytes, not {len(event_hash)}")
    if len(applied) % 8:
        applied = b""
    pos = applied.find(event_hash)
    while pos >= 0:
        if pos % 8 == 0:
            return True, applied
        pos = applied.find(event_hash, pos + 1)
    return False, (event_hash + applied)[: 8 * window]
