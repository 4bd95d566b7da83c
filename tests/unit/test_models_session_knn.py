"""Batched session kNN (served) against the VSKNN baseline it must reproduce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import session_knn
from models.knn import VSKNN
from models.session_knn import SessionIndex, knn_scores, sparse_lookup


def _random_sessions(rng: np.random.Generator, n_sessions: int, n_items: int) -> list[list[int]]:
    # Skewed item draws so that neighbours overlap and the sample cut matters.
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    p /= p.sum()
    return [
        (rng.choice(n_items, size=int(rng.integers(2, 7)), p=p) + 1).tolist()
        for _ in range(n_sessions)
    ]


def _batch(prefixes: list[list[int]], r: int) -> tuple[np.ndarray, np.ndarray]:
    recent = np.zeros((len(prefixes), r), dtype=np.int64)
    for i, p in enumerate(prefixes):
        tail = p[-r:]
        recent[i, r - len(tail) :] = tail
    return recent, np.array([len(p) for p in prefixes], dtype=np.int64)


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize(("sample_size", "k_neighbours"), [(0, 100), (30, 10), (500, 100)])
def test_knn_scores_rank_like_the_vsknn_baseline(
    sample_size: int, k_neighbours: int, dense: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not dense:  # the sort-based path that large catalogues take
        monkeypatch.setattr(session_knn, "DENSE_CELLS", 0)
    rng = np.random.default_rng(7)
    n_items = 60
    sessions = _random_sessions(rng, 400, n_items)
    index = SessionIndex.build(sessions, n_items)
    baseline = VSKNN(k_neighbours=k_neighbours, sample_size=sample_size)
    baseline.fit([[str(i) for i in s] for s in sessions], list(range(len(sessions))))
    prefixes = [(rng.integers(1, n_items + 1, size=int(rng.integers(1, 6)))).tolist()
                for _ in range(40)]  # fmt: skip
    recent, lengths = _batch(prefixes, r=8)
    scores = knn_scores(index, recent, lengths, k_neighbours=k_neighbours,
                        sample_size=sample_size)  # fmt: skip
    catalogue = np.arange(1, n_items + 1)
    dense_scores = scores.lookup(np.tile(catalogue, (len(prefixes), 1)))
    compared = 0
    for row, prefix in enumerate(prefixes):
        scored = np.flatnonzero(dense_scores[row] > 0)
        # The baseline's tie rule: training popularity rank, i.e. its own item index.
        tie = np.array([baseline.index.get(str(i + 1), 10**9) for i in scored])
        ours = scored[np.lexsort((tie, -np.round(dense_scores[row, scored], 5)))] + 1
        expected = baseline.recommend([str(i) for i in prefix], len(ours))
        assert ours.astype(str).tolist() == expected, (prefix, ours, expected)
        compared += len(ours) > 0
    assert compared > 30
    # top() agrees with the ranking above (ties: lower index).
    tops = scores.top(5)
    for row in range(len(prefixes)):
        scored = np.flatnonzero(dense_scores[row] > 0)
        best = scored[np.lexsort((scored, -np.round(dense_scores[row, scored], 9)))][:5] + 1
        assert tops[row, : len(best)].tolist() == best.tolist()
        assert not tops[row, len(best) :].any()


def test_only_the_current_session_counts() -> None:
    # Sessions: 1 -> 2 and 3 -> 4. The state holds [1, 3] but only 3 is in the session.
    index = SessionIndex.build([[1, 2], [3, 4]], 4)
    recent = np.array([[0, 1, 3]], dtype=np.int64)
    scores = knn_scores(index, recent, np.array([1]))
    dense = scores.lookup(np.array([[1, 2, 3, 4]]))
    assert dense[0, 1] == 0 and dense[0, 3] > 0
    assert scores.top(2)[0].tolist()[0] in (3, 4)


def test_empty_inputs_score_nothing() -> None:
    index = SessionIndex.build([[1, 2]], 3)
    assert knn_scores(index, np.zeros((2, 4), np.int64), np.array([0, 0])).keys.size == 0
    assert knn_scores(SessionIndex.empty(3), np.array([[1]]), np.array([1])).keys.size == 0
    assert knn_scores(index, np.zeros((0, 4), np.int64), np.zeros(0, np.int64)).rows == 0


def test_top_and_lookup_pad_with_zero() -> None:
    keys = np.array([0 * 5 + 2, 0 * 5 + 4, 1 * 5 + 1], dtype=np.int64)
    values = np.array([1.0, 3.0, 2.0])
    out = sparse_lookup(keys, values, 5, np.array([[4, 2, 0, 3], [1, 1, 4, 0]]))
    assert out.tolist() == [[3.0, 1.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0]]


def test_index_round_trips_through_a_file(tmp_path: Path) -> None:
    index = SessionIndex.build([[1, 2, 2], [3, 1]], 3)
    assert index.session_items.tolist() == [1, 2, 1, 3]
    assert index.item_sessions[index.item_ptr[1] : index.item_ptr[2]].tolist() == [0, 1]
    index.save(tmp_path / "knn.npz")
    loaded = SessionIndex.load(tmp_path / "knn.npz", 3)
    assert loaded.item_ptr.tolist() == index.item_ptr.tolist()
    with pytest.raises(ValueError, match="3 items, not 4"):
        SessionIndex.load(tmp_path / "knn.npz", 4)
