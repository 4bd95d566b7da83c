"""Ranking metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from models.evaluation import coverage, hit_rate_at_k, mrr_at_k, ndcg_at_k, target_ranks

RANKED = [[3, 1, 2], [5, 6, 4], [9, 8, 7]]
TARGETS = [1, 4, 10]


def test_hit_rate() -> None:
    assert hit_rate_at_k(RANKED, TARGETS, 3) == pytest.approx(2 / 3)
    assert hit_rate_at_k(RANKED, TARGETS, 2) == pytest.approx(1 / 3)
    assert hit_rate_at_k(RANKED, TARGETS, 1) == 0.0


def test_mrr() -> None:
    assert mrr_at_k(RANKED, TARGETS, 3) == pytest.approx((1 / 2 + 1 / 3) / 3)
    assert mrr_at_k(RANKED, TARGETS, 2) == pytest.approx((1 / 2) / 3)


def test_ndcg() -> None:
    expected = (1 / math.log2(3) + 1 / math.log2(4)) / 3
    assert ndcg_at_k(RANKED, TARGETS, 3) == pytest.approx(expected)
    assert ndcg_at_k([[7]], [7], 1) == 1.0


def test_duplicates_do_not_take_a_slot() -> None:
    assert target_ranks([[3, 3, 3, 1]], [1], 2).tolist() == [2]
    assert mrr_at_k([[3, 3, 1]], [1], 2) == pytest.approx(1 / 2)


def test_coverage_counts_distinct_items_in_top_k_without_padding() -> None:
    assert coverage([[1, 2, 3], [2, 0, 4]], n_items=10, k=2) == pytest.approx(2 / 10)
    assert coverage([[1, 2, 3], [2, 4, 5]], n_items=10, k=3) == pytest.approx(5 / 10)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="no examples"):
        hit_rate_at_k([], [], 5)
    with pytest.raises(ValueError, match="targets"):
        mrr_at_k([[1]], [1, 2], 5)
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k([[1]], [1], 0)
