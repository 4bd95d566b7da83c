"""The learned token-id query encoder (hashed-token searches, e.g. DIGINETICA): the centroid
fit, encoding, the bundle file, and token-only searches through ``recommend_batch``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.token_encoder import TokenEncoder
from stream.pipeline import Trigger, recommend_batch
from stream.train_job import token_search_pairs
from tests.unit.test_recommend_batch import model_and_store
from topics.events import EventType, UserEvent

# Unit item vectors of the fake bundle (test_pipeline_arrays.fake_model): a~b, c~e, d alone.
UNIT = np.zeros((6, 3), np.float32)
UNIT[1:] = [[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1], [0, 0.9, 0.1]]
UNIT[1:] /= np.linalg.norm(UNIT[1:], axis=1, keepdims=True)


def test_a_token_is_the_normalised_centroid_of_what_its_searches_led_to() -> None:
    enc = TokenEncoder.fit([[7, 9], [7], [9, 9]], np.array([1, 4, 4]), UNIT)
    assert enc.tokens.tolist() == [7, 9] and enc.dim == 3
    np.testing.assert_allclose(enc.vectors[0], [1 / np.sqrt(2), 0, 1 / np.sqrt(2)], atol=1e-6)
    np.testing.assert_allclose(enc.vectors[1], np.array([1, 0, 1]) / np.sqrt(2), atol=1e-6)
    out = enc.encode(["7", "9 7 12345", "12345", ""])
    np.testing.assert_allclose(out[0], enc.vectors[0], atol=1e-6)
    assert np.linalg.norm(out[1]) == pytest.approx(1.0)
    assert not out[2].any() and not out[3].any()  # unknown or no tokens: a zero row


def test_the_encoder_round_trips_and_refuses_bad_arrays(tmp_path: Path) -> None:
    enc = TokenEncoder.fit([[3], [5]], np.array([1, 3]), UNIT)
    enc.save(tmp_path / "tokens.npz")
    again = TokenEncoder.load(tmp_path / "tokens.npz")
    assert again.name == enc.name and again.tokens.tolist() == [3, 5]
    with pytest.raises(ValueError, match="ascending"):
        TokenEncoder(np.array([5, 3]), np.zeros((2, 3), np.float32))
    empty = TokenEncoder.fit([], np.zeros(0, np.int64), UNIT)
    assert len(empty) == 0 and not empty.encode(["1"]).any()


def test_search_pairs_follow_each_search_to_the_next_known_item() -> None:
    ev = [
        UserEvent("1", EventType.SEARCH, "u", "s", 1, query_tokens=[7]),
        UserEvent("2", EventType.SEARCH, "u", "s", 2, query_tokens=[8, 9]),
        UserEvent("3", EventType.VIEW, "u", "s", 3, item_id="d"),
        UserEvent("4", EventType.SEARCH, "u", "s", 4, query_tokens=[1]),
        UserEvent("5", EventType.VIEW, "u", "s", 5, item_id="unknown"),
        UserEvent("6", EventType.SEARCH, "v", "t", 1, query_tokens=[2]),  # never followed
    ]
    queries, targets = token_search_pairs(ev, ["a", "b", "c", "d", "e"])
    assert queries == [[7], [8, 9]] and targets.tolist() == [4, 4]


async def test_a_token_only_search_returns_what_its_tokens_led_to() -> None:
    model, store = model_and_store()
    # Token 42 led to "d" (alone in embedding space); the user's session is about "a".
    model.token_encoder = TokenEncoder.fit([[42]], np.array([4]), UNIT)
    events = [
        UserEvent("1", EventType.VIEW, "u", "s", 1, item_id="a"),
        UserEvent("2", EventType.SEARCH, "u", "s", 2, query_tokens=[42]),
    ]
    result = await recommend_batch([Trigger(e, 0.0) for e in events], store, model, k=2,
                                   n_candidates=3)  # fmt: skip
    rec = result.recommendations[1]
    assert rec.kind == "search" and rec.items[0] == "d"
    assert result.recommendations[0].items[0] == "b"  # the view is ranked as before
    model.token_encoder = None
    plain = await recommend_batch([Trigger(events[1], 0.0)], store, model, k=2, n_candidates=3)
    assert plain.recommendations[0].items[0] != "d"  # without the encoder: the session's items
