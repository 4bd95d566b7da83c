"""top_k_excluding: padding, exclusion, de-duplication, ordering and short rows."""

from __future__ import annotations

import numpy as np
import pytest

from models.topk import duplicate_mask, exclusion_mask, top_k_excluding


def test_orders_descending_and_returns_items_not_positions() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7]], np.float32)
    cands = np.array([[10, 20, 30, 40]], np.int64)
    items, top = top_k_excluding(scores, cands, None, k=3)
    assert items == [[20, 40, 30]]
    assert top[0] == pytest.approx([0.9, 0.7, 0.5])


def test_drops_padding_and_excluded_items_per_row() -> None:
    scores = np.array([[5, 4, 3, 2], [5, 4, 3, 2]], np.float32)
    cands = np.array([[0, 7, 8, 9], [7, 8, 0, 9]], np.int64)
    items, _ = top_k_excluding(scores, cands, [{8}, {7, 123}], k=2)
    assert items == [[7, 9], [8, 9]]


def test_bool_mask_exclusion() -> None:
    scores = np.array([[3, 2, 1]], np.float32)
    cands = np.array([[1, 2, 3]], np.int64)
    items, _ = top_k_excluding(scores, cands, np.array([[True, False, False]]), k=5)
    assert items == [[2, 3]]
    with pytest.raises(ValueError, match="bool"):
        top_k_excluding(scores, cands, np.array([[1, 0, 0]]), k=1)


def test_duplicates_keep_their_best_score_once() -> None:
    scores = np.array([[0.2, 0.9, 0.5, 0.8]], np.float32)
    cands = np.array([[5, 6, 5, 6]], np.int64)
    items, top = top_k_excluding(scores, cands, None, k=4)
    assert items == [[6, 5]]
    assert top[0] == pytest.approx([0.9, 0.5])
    assert duplicate_mask(cands, scores).tolist() == [[True, False, False, True]]


def test_short_rows_return_fewer_items_and_non_finite_scores_are_dropped() -> None:
    scores = np.array([[1, np.nan, 3], [1, 2, 3]], np.float32)
    cands = np.array([[1, 2, 0], [4, 5, 6]], np.int64)
    items, top = top_k_excluding(scores, cands, [set(), {6}], k=2)
    assert items == [[1], [5, 4]]
    assert [len(t) for t in top] == [1, 2]
    items, _ = top_k_excluding(np.zeros((2, 0), np.float32), np.zeros((2, 0), np.int64), None, 3)
    assert items == [[], []]


def test_k_below_width_uses_partition_correctly_on_a_large_row() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(8, 300)).astype(np.float32)
    cands = np.tile(np.arange(1, 301), (8, 1))
    items, top = top_k_excluding(scores, cands, None, k=10)
    for row in range(8):
        best = np.argsort(-scores[row])[:10] + 1
        assert items[row] == best.tolist()
        assert top[row] == sorted(top[row], reverse=True)


def test_exclusion_mask_from_sets_is_row_specific() -> None:
    cands = np.array([[1, 2, 3], [1, 2, 3]], np.int64)
    mask = exclusion_mask(cands, [{3, 1}, {2}])
    assert mask.tolist() == [[True, False, True], [False, True, False]]
    with pytest.raises(ValueError, match="one exclusion set per row"):
        exclusion_mask(cands, [{1}])
