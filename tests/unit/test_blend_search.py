"""Choosing blend weights from captured validation signals: hand-computed ranks."""

from __future__ import annotations

import numpy as np

from models.blend_search import blend_metrics, capture, search_blend, target_ranks
from models.serving import BlendWeights


def _two_examples() -> object:
    # Row 0: target 3. Neural prefers 1, co-visitation strongly prefers 3.
    # Row 1: target 5, seen item 4 has the best scores but must not count; 6 is a duplicate.
    candidates = np.array([[1, 2, 3, 0], [4, 6, 5, 6]], dtype=np.int64)
    neural = np.array([[3.0, 1.0, 2.0, 9.0], [9.0, 1.0, 0.5, 1.0]], dtype=np.float32)
    covisit = np.array([[0.0, 0.0, np.e**2 - 1, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    return capture(candidates, [set(), {4}], np.array([3, 5]), {"neural": neural,
                   "covisit": covisit, "knn": None})  # fmt: skip


def test_ranks_skip_padding_seen_and_duplicates() -> None:
    data = _two_examples()
    assert data.target_col.tolist() == [2, 2]  # type: ignore[attr-defined]
    assert data.valid.tolist() == [  # type: ignore[attr-defined]
        [True, True, True, False],
        [False, True, True, False],
    ]
    assert set(data.features) == {"neural", "covisit"}  # type: ignore[attr-defined]
    # Neural only: row 0 target behind item 1; row 1 target behind item 6 (once).
    assert target_ranks(data, BlendWeights()).tolist() == [1, 1]  # type: ignore[arg-type]
    # covisit weight 2 adds 2 * log1p(e^2 - 1) = 4 to item 3: 6 > 3.
    assert target_ranks(data, BlendWeights(covisit=2.0)).tolist() == [0, 1]  # type: ignore[arg-type]


def test_metrics_and_search_pick_the_better_blend() -> None:
    data = _two_examples()
    hr, mrr = blend_metrics(data, BlendWeights(), 1)  # type: ignore[arg-type]
    assert (hr, mrr) == (0.0, 0.0)
    hr, mrr = blend_metrics(data, BlendWeights(), 2)  # type: ignore[arg-type]
    assert (hr, mrr) == (1.0, 0.5)
    best, summary = search_blend(data, 1, grid=(0.0, 0.25, 2.0), coarse_grid=(0.0, 0.25))  # type: ignore[arg-type]
    # The coarse pass finds nothing (0.25 lifts item 3 to 2.5 < 3); refining finds 2.0.
    assert best.covisit == 2.0 and best.knn == 0.0
    assert summary["hr@1"] == 0.5 and summary["neural_only_hr@1"] == 0.0


def test_an_unretrieved_target_ranks_beyond_every_list() -> None:
    data = capture(np.array([[1, 2]]), [set()], np.array([7]), {"neural": np.ones((1, 2))})
    assert target_ranks(data, BlendWeights()).tolist() == [2**40]
    assert blend_metrics(data, BlendWeights(), 20) == (0.0, 0.0)
