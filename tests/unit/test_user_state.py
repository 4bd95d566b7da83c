"""User state: byte layout v1 and the pure update rule (the Lua twin is checked against it in
tests/integration/test_state_store.py)."""

from __future__ import annotations

import numpy as np
import pytest

from features.keys import id_hash, item_hashes_u64, user_key
from features.user_state import (
    HEADER_SIZE,
    StateFormatError,
    UserState,
    apply_event,
    decay_factor,
    decode_state,
    encode_state,
)


def _apply(
    state: UserState,
    item: str | None,
    session: str = "s1",
    *,
    emb: np.ndarray | None = None,
    now: float = 0.0,
    weight: float = 1.0,
    space: int = 1,
    max_recent: int = 3,
) -> UserState:
    return apply_event(
        state,
        now_ms=now,
        session_hash=id_hash(session),
        item_hash=id_hash(item) if item else None,
        weight=weight,
        embedding=emb,
        half_life_ms=1000.0,
        max_recent=max_recent,
        space_id=space,
    )


def test_layout_round_trip_and_size() -> None:
    state = UserState(
        np.arange(4, dtype=np.float32), [id_hash("a"), id_hash("b")], 1, id_hash("s"), 12.5, 3, 9
    )
    blob = encode_state(state)
    assert len(blob) == HEADER_SIZE + 4 * 4 + 8 * 2
    back = decode_state(blob)
    assert back.recent == state.recent and back.n_session == 1 and back.space_id == 9
    np.testing.assert_array_equal(back.vector, state.vector)


def test_decode_empty_and_corrupt() -> None:
    assert decode_state(None).recent == []
    with pytest.raises(StateFormatError):
        decode_state(b"\x01" * 10)
    blob = bytearray(encode_state(UserState()))
    blob[0] = 2
    with pytest.raises(StateFormatError):
        decode_state(bytes(blob))


def test_recent_items_newest_first_and_capped() -> None:
    s = UserState()
    for item in ["a", "b", "c", "d"]:
        s = _apply(s, item)
    assert s.recent == [id_hash(x) for x in ["d", "c", "b"]]
    assert s.events == 4


def test_new_session_resets_session_items_only() -> None:
    s = _apply(_apply(UserState(), "a", "s1"), "b", "s1")
    assert s.session_items == [id_hash("b"), id_hash("a")]
    s = _apply(s, "c", "s2")
    assert s.session_items == [id_hash("c")]
    assert len(s.recent) == 3


def test_vector_decays_by_half_life_and_weights() -> None:
    e1, e2 = np.array([1, 0], np.float32), np.array([0, 1], np.float32)
    s = _apply(UserState(), "a", emb=e1, now=0.0, weight=2.0)
    s = _apply(s, "b", emb=e2, now=1000.0, weight=1.0)  # one half-life later
    np.testing.assert_allclose(s.vector, [1.0, 1.0], rtol=1e-6)
    assert decay_factor(0, 2000, 1000) == pytest.approx(0.25)
    assert decay_factor(5000, 1000, 1000) == 1.0  # out-of-order events never inflate


def test_unknown_item_updates_recent_not_vector() -> None:
    s = _apply(UserState(), "a", emb=np.ones(2, np.float32))
    s2 = _apply(s, "unknown", emb=None, now=5000.0)
    np.testing.assert_array_equal(s2.vector, s.vector)
    assert s2.recent[0] == id_hash("unknown")


def test_vector_of_another_space_is_discarded() -> None:
    s = _apply(UserState(), "a", emb=np.array([5, 5], np.float32), space=1)
    s = _apply(s, "b", emb=np.array([1, 0], np.float32), space=2)
    np.testing.assert_allclose(s.vector, [1, 0])
    assert s.space_id == 2


def test_keys_and_hashes_are_stable() -> None:
    assert user_key("prod", "u1") == "sr:prod:u:u1"
    assert id_hash("81766") == id_hash("81766") and len(id_hash("x")) == 8
    h = item_hashes_u64(["a", "b"])
    assert h.dtype == np.uint64 and h[0] == int.from_bytes(id_hash("a"), "little")
