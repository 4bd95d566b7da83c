"""FAISS retrieval: nearest items by cosine, index row -> item index mapping, padding."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from models.retrieval import Retriever, l2_normalise


def _table() -> np.ndarray:
    """Items 1..4 point along +x, +y, -x and (+x+y) (long, to show that length is ignored)."""
    return np.array(
        [[0, 0], [1, 0], [0, 1], [-1, 0], [10, 10]],
        dtype=np.float32,
    )


def test_returns_nearest_items_by_cosine_as_item_indices() -> None:
    retriever = Retriever.build(_table())
    scores, items = retriever.search(np.array([[1, 0.1], [0, 5], [-3, 0]], np.float32), k=2)
    assert items.dtype == np.int64 and scores.dtype == np.float32
    assert items.tolist() == [[1, 4], [2, 4], [3, 2]]
    assert scores[0, 0] == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)
    assert scores[2].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_padding_row_is_not_indexed_and_short_results_are_zero() -> None:
    retriever = Retriever.build(_table())
    assert retriever.n_items == 4 and retriever.dim == 2
    scores, items = retriever.search(np.array([[0, -1]], np.float32), k=6)
    assert sorted(items[0, :4].tolist()) == [1, 2, 3, 4]
    assert items[0, 4:].tolist() == [0, 0]
    assert np.isneginf(scores[0, 4:]).all()


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "items.faiss"
    Retriever.build(_table()).save(path)
    _, items = Retriever.load(path).search(np.array([[0, 1]], np.float32), k=1)
    assert items.tolist() == [[2]]


def test_threads_setting_and_bad_inputs() -> None:
    Retriever.build(_table(), threads=1)
    assert faiss.omp_get_max_threads() == 1
    retriever = Retriever.build(_table(), threads=2)
    assert faiss.omp_get_max_threads() == 2
    with pytest.raises(ValueError, match="shape"):
        retriever.search(np.zeros((1, 3), np.float32), k=1)
    with pytest.raises(ValueError, match="inner-product"):
        Retriever(faiss.IndexFlatL2(2))
    faiss.omp_set_num_threads(1)


def test_l2_normalise_keeps_zero_rows() -> None:
    out = l2_normalise(np.array([[3, 4], [0, 0]], np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
