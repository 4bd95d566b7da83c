"""Pure parts of the pipeline: mapping states to model inputs, retrieval queries, candidates."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from features.keys import id_hash, item_hashes_u64
from features.user_state import UserState
from models.retrieval import Retriever
from models.serving import BlendWeights
from models.session_knn import SessionIndex
from stream.pipeline import build_arrays, candidates_for, retrieval_queries, state_updates
from topics.events import EventType, UserEvent

ITEMS = ["a", "b", "c", "d", "e"]


def fake_model(max_recent: int = 4) -> SimpleNamespace:
    """The attributes of models.serving.ServingModel that the pipeline reads."""
    emb = np.zeros((6, 3), np.float32)
    emb[1:] = [[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1], [0, 0.9, 0.1]]
    hashes = item_hashes_u64(ITEMS)
    order = np.argsort(hashes)

    def indices_of(h: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(hashes[order], h), len(ITEMS) - 1)
        return np.where(hashes[order][pos] == h, order[pos] + 1, 0).astype(np.int64)

    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return SimpleNamespace(
        max_recent=max_recent,
        dim=3,
        space_id=5,
        indices_of=indices_of,
        embeddings=emb,
        normalised_embeddings=np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0),
        popular=np.array([3, 1, 2, 4, 5], np.int64),
        retriever=Retriever.build(emb),
        event_weights={"view": 1.0, "purchase": 3.0},
        blend=BlendWeights(),
        session_index=SessionIndex.empty(len(ITEMS)),
        token_encoder=None,
        covisit_neighbours=np.zeros((6, 0), np.int64),
        covisit_weights=np.zeros((6, 0), np.float32),
    )


def test_build_arrays_orders_chronologically_and_marks_session_items() -> None:
    model = fake_model()
    state = UserState(
        np.array([1, 2, 3], np.float32),
        [id_hash("c"), id_hash("zzz"), id_hash("a")],
        n_session=2,
        space_id=5,
    )
    arrays = build_arrays([state, UserState()], model)  # type: ignore[arg-type]
    assert arrays.recent.tolist() == [[0, 1, 0, 3], [0, 0, 0, 0]]  # left-padded, newest last
    assert arrays.last.tolist() == [3, 0]
    assert arrays.seen == [{3}, set()]  # the unknown item maps to nothing
    np.testing.assert_array_equal(arrays.user_vec[0], [1, 2, 3])


def test_vector_from_another_space_is_re_encoded_from_recent_items() -> None:
    """A vector written under another version's embedding space is never mixed with this
    model's: the user's known recent items are summed in this model's space instead."""
    other = UserState(np.ones(3, np.float32), [id_hash("c"), id_hash("zzz"), id_hash("a")], 1,
                      space_id=99)  # fmt: skip
    nothing = UserState(np.ones(3, np.float32), [id_hash("zzz")], 1, space_id=99)
    arrays = build_arrays([other, nothing], fake_model())  # type: ignore[arg-type]
    np.testing.assert_allclose(arrays.user_vec[0], [1, 1, 0])  # e(c) + e(a); "zzz" unknown
    assert not arrays.user_vec[1].any()  # no known recent item: no vector


def test_cold_rows_get_popular_and_warm_rows_get_neighbours() -> None:
    model = fake_model()
    warm = UserState(np.zeros(0, np.float32), [id_hash("a")], 1, space_id=5)
    arrays = build_arrays([warm, UserState()], model)  # type: ignore[arg-type]
    _, has_query = retrieval_queries(arrays, model)  # type: ignore[arg-type]
    assert has_query.tolist() == [True, False]
    cands = candidates_for(arrays, model, 3)  # type: ignore[arg-type]
    assert cands[0, :2].tolist() == [1, 2]  # "a" itself, then its nearest neighbour "b"
    assert cands[1].tolist() == [3, 1, 2]  # popular


def test_state_updates_carry_embeddings_only_for_known_items() -> None:
    model = fake_model()
    events = [
        UserEvent("1", EventType.VIEW, "u", "s", 10, item_id="b"),
        UserEvent("2", EventType.PURCHASE, "u", "s", 11, item_id="unknown"),
        UserEvent("3", EventType.SEARCH, "u", "s", 12, query="q"),
    ]
    updates, unknown = state_updates(events, model)  # type: ignore[arg-type]
    assert unknown == 1
    assert np.frombuffer(updates[0].embedding, np.float32).tolist() == model.embeddings[2].tolist()
    assert updates[1].embedding == b"" and updates[1].weight == 3.0
    assert updates[2].item_hash is None and updates[2].weight == 0.0
    assert updates[0].session_hash == id_hash("s")
