"""FAISS retrieval by catalogue size: flat up to the threshold, IVF above it with nprobe tuned
to a recall target, memory-mapped loading, and the row -> item mapping (row r = item r + 1).

Small synthetic catalogues (a few thousand items, the threshold lowered to match) keep this
to about a second; no services."""

from __future__ import annotations

import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from models.retrieval import (
    Retriever,
    ann_recall,
    ivf_nlist,
    l2_normalise,
    serving_like_queries,
)

N, D, THRESHOLD = 3000, 16, 1000


def _table(n: int = N, dim: int = D, seed: int = 0) -> np.ndarray:
    """Item table ``float32[n + 1, dim]`` (row 0 padding, zero) of clustered embeddings, as
    trained item embeddings are: 40 centres, items spread around them, lengths varied."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    items = centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, dim))
    items *= rng.uniform(0.5, 3.0, (n, 1))
    return np.vstack([np.zeros((1, dim)), items]).astype(np.float32)


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return _table()


@pytest.fixture(scope="module")
def ivf(table: np.ndarray) -> Retriever:
    return Retriever.build(table, flat_max_items=THRESHOLD, recall_target=0.97)


def _nlist(retriever: Retriever) -> int:
    assert retriever.nlist is not None, "an IVF index"
    return retriever.nlist


def _fresh_queries(table: np.ndarray, n: int = 400, seed: int = 99) -> np.ndarray:
    """Queries the tuning did not see (another seed), shaped like the worker's."""
    return serving_like_queries(l2_normalise(table[1:]), n, np.random.default_rng(seed))


def test_index_type_switches_at_the_threshold() -> None:
    at = Retriever.build(_table(THRESHOLD), flat_max_items=THRESHOLD)
    above = Retriever.build(_table(THRESHOLD + 1), flat_max_items=THRESHOLD)
    assert at.kind == "flat" and isinstance(at.index, faiss.IndexFlatIP)
    assert at.nprobe is None and "nlist" not in at.info
    assert above.kind == "ivf" and isinstance(above.index, faiss.IndexIVFFlat)
    assert above.index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert above.info["nlist"] == ivf_nlist(THRESHOLD + 1) == _nlist(above)
    assert above.nprobe is not None and above.info["nprobe"] == above.nprobe
    assert 1 <= above.nprobe <= _nlist(above)
    assert Retriever.build(_table(200)).kind == "flat"  # the default threshold is 100k


def test_nlist_rule() -> None:
    assert ivf_nlist(1_000_000) == 4000
    assert ivf_nlist(250_000) == 2000
    assert ivf_nlist(3000) == 3000 // 39  # capped so k-means has 39 points per list
    assert ivf_nlist(10) == 1


def test_ivf_recall_reaches_the_target_on_queries_it_was_not_tuned_on(
    ivf: Retriever, table: np.ndarray
) -> None:
    assert ivf.info["recall"] >= ivf.info["recall_lower"] >= 0.97 and ivf.info["k"] == 20
    assert ivf.nprobe is not None and ivf.nprobe < _nlist(ivf)  # not an exhaustive scan
    assert ann_recall(ivf, table, _fresh_queries(table), 20) >= 0.95
    flat = Retriever.build(table, flat_max_items=THRESHOLD * 10)
    assert ann_recall(flat, table, _fresh_queries(table), 20) == pytest.approx(1.0)


def test_ann_recall_measures_what_a_smaller_nprobe_loses(table: np.ndarray) -> None:
    retriever = Retriever.build(table, flat_max_items=THRESHOLD)
    queries = _fresh_queries(table)
    retriever.nprobe = 1
    low = ann_recall(retriever, table, queries, 20)
    retriever.nprobe = _nlist(retriever)  # every list: exact up to ties
    assert low < 0.95 <= ann_recall(retriever, table, queries, 20) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="nprobe"):
        retriever.nprobe = 0
    with pytest.raises(ValueError, match="items"):
        ann_recall(retriever, table[:-1], queries, 20)


def _mapped(path: Path) -> bool:
    return any(str(path) in line for line in Path("/proc/self/maps").read_text().splitlines())


@pytest.mark.parametrize("threshold", [THRESHOLD * 10, THRESHOLD], ids=["flat", "ivf"])
def test_save_load_with_mmap_keeps_results_identical(
    tmp_path: Path, table: np.ndarray, threshold: int
) -> None:
    built = Retriever.build(table, flat_max_items=threshold)
    path = tmp_path / "items.faiss"
    built.save(path)
    queries = _fresh_queries(table, 128)
    expected = built.search(queries, 20)
    mapped = Retriever.load(path)
    copied = Retriever.load(path, mmap=False)
    for loaded in (mapped, copied):
        assert loaded.kind == built.kind and loaded.nprobe == built.nprobe
        assert loaded.n_items == N and loaded.dim == D
        scores, items = loaded.search(queries, 20)
        np.testing.assert_array_equal(items, expected[1])
        np.testing.assert_array_equal(scores, expected[0])
    assert mapped.info["mmap"] is True and copied.info["mmap"] is False
    if sys.platform == "linux":  # the vectors live in the file's pages, not in a copy
        assert _mapped(path)
        del mapped
        assert not _mapped(path)


def test_rows_map_to_items_and_padding_is_left_out(ivf: Retriever, table: np.ndarray) -> None:
    assert ivf.n_items == N  # row 0 (padding) is not indexed
    nprobe = ivf.nprobe
    assert nprobe is not None
    ivf.nprobe = _nlist(ivf)  # exhaustive: each item's own row must come first
    try:
        scores, items = ivf.search(table[1:], 1)
        _, every = ivf.search(table[1:2], N + 5)  # more than N asked: padding 0 after N
    finally:
        ivf.nprobe = nprobe
    np.testing.assert_array_equal(items[:, 0], np.arange(1, N + 1))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert every[0, N:].tolist() == [0] * 5
    assert sorted(every[0, :N].tolist()) == list(range(1, N + 1))
    # With the tuned nprobe only the visited lists answer: the rest is padding, score -inf.
    some_scores, some = ivf.search(table[1:2], N)
    found = some[0] > 0
    assert 20 <= found.sum() < N and not found[found.sum() :].any()
    assert np.isneginf(some_scores[0, ~found]).all()
    assert len(set(some[0, found].tolist())) == found.sum()
