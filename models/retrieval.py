"""Candidate retrieval: inner-product search over L2-normalised item embeddings (FAISS).

Serving-side, never imports torch. Embeddings are normalised before indexing (and queries at
search time) so that the score is a cosine: popular items with long embedding vectors would
otherwise crowd every result list.

Index type by catalogue size (``Retriever.build``):

- up to ``FLAT_MAX_ITEMS`` (100k) items: exact ``IndexFlatIP``. It needs no training or
  tuning, and is fast enough there (64 queries: about 2 ms over 6k items, 13 ms over 100k).
- above: ``IndexIVFFlat`` (inner product), ``nlist ≈ 4·√N`` lists from k-means on a sample of
  the normalised embeddings. ``nprobe`` is the smallest number of lists to visit (within 1/16)
  for which recall@K of the ANN stage against exact search reaches ``recall_target`` (0.95 by
  default, K = 20) with 95% confidence on held-out queries shaped like the serving ones; it is
  stored in the index file (FAISS writes ``nprobe`` with an IVF index) and in
  ``Retriever.info``. ``ann_recall`` measures that recall for any retriever. A flat search
  scans all N rows per query, IVF about ``nprobe / nlist`` of them: over 1M items shaped like
  the trained ones (clustered), nprobe 17 of 4000 lists and 6 ms per 64 queries instead of
  133 ms. Random vectors have no clusters and are IVF's worst case: nprobe ~430 and only
  1.5x faster than flat (bench/memory.py).

Loading (``Retriever.load``) memory-maps the index file by default, so the workers of a host
share one copy of the vectors in the page cache instead of each reading its own. In
faiss-cpu 1.15 the flag that does this for *both* index types is ``IO_FLAG_MMAP_IFC``: the
older ``IO_FLAG_MMAP`` maps an IVF index's lists (as ``OnDiskInvertedLists``) but silently
reads a flat index into private memory, and the two flags together fail for IVF. The mapping
is read-only and lives as long as the index: a bundle's ``items.faiss`` must never be
rewritten in place (bundles are written once and renamed into place, models/bundle.py;
deleting a mapped file is safe on Linux).

Index rows are items without the padding row: FAISS row ``r`` is item index ``r + 1``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

FLAT_MAX_ITEMS = 100_000  # above this many items, Retriever.build makes an IVF index
RECALL_TARGET = 0.95  # recall@RECALL_K of the IVF stage vs exact search that nprobe must reach
RECALL_K = 20  # the K of that recall: the served top-K
TUNE_QUERIES = 500  # held-out queries the nprobe search uses
# nprobe must reach the target with this one-sided confidence (z of 95%): the mean over 500
# queries alone, at the smallest nprobe that reaches it, fell to 0.946 on other queries.
CONFIDENCE_Z = 1.645
KMEANS_ITERATIONS = 10  # FAISS's default for an IVF quantizer
KMEANS_POINTS_PER_LIST = 64  # training sample: 64 points per list (FAISS warns below 39)
# What Retriever.load passes to faiss.read_index to memory-map the vectors (see above).
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of ``float32[M, D]``; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def ivf_nlist(n_items: int) -> int:
    """Number of IVF lists for ``n_items`` vectors: ``round(4·√N)``, capped at ``N / 39`` so
    that k-means has the 39 points per centroid below which FAISS warns (and never below 1)."""
    return max(1, min(round(4 * math.sqrt(n_items)), n_items // 39))


def serving_like_queries(items: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``float32[n, D]`` queries shaped like the worker's: ``0.7 · a + 0.3 · b`` for random
    rows ``a``, ``b`` of the normalised ``items`` ``float32[M, D]`` (stream/pipeline.py mixes
    the newest item with the long-term vector), normalised. Not items themselves, whose own
    row would be an easy first hit."""
    a = items[rng.integers(0, len(items), n)]
    b = items[rng.integers(0, len(items), n)]
    return l2_normalise(0.7 * a + 0.3 * b)


def _per_query_recall(found: np.ndarray, exact: np.ndarray, k: int) -> np.ndarray:
    """``float64[B]``: for each row of ``exact`` ``int64[B, k]`` (FAISS rows, -1 = none), the
    share of it that the same row of ``found`` ``int64[B, k']`` holds: recall@k per query."""
    return np.array(
        [
            len(set(f[f >= 0].tolist()) & set(e[e >= 0].tolist())) / max(1, int((e >= 0).sum()))
            for f, e in zip(found[:, :k], exact[:, :k], strict=True)
        ],
        dtype=np.float64,
    )


def _exact_rows(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` FAISS rows ``int64[B, k]`` of normalised ``queries`` ``float32[B, D]``
    over normalised ``items`` ``float32[N, D]``: brute force, without building an index."""
    _, rows = faiss.knn(
        np.ascontiguousarray(queries), np.ascontiguousarray(items), min(k, len(items)),
        metric=faiss.METRIC_INNER_PRODUCT,
    )  # fmt: skip
    return np.asarray(rows, dtype=np.int64)


class Retriever:
    """A FAISS inner-product index over normalised item embeddings, exact or IVF.

    ``threads`` sets FAISS's OpenMP thread count, which is process-wide: the default of 1
    keeps a batch search from taking both cores of the 2-core asyncio worker.

    FAISS switches a flat search to one BLAS matrix product only from
    ``distance_compute_blas_threshold`` queries on (128000 in faiss 1.15), so a micro-batch
    was searched query by query; at 16 a 64-query search over 6k items takes 2.2 ms instead
    of 4.3 ms with identical results (measured, bench/batching.py). The IVF quantizer's
    search over its centroids benefits in the same way.

    ``info`` says what the index is: ``kind`` ("flat" or "ivf"), ``n_items``, and for IVF
    ``nlist``, ``nprobe`` and, when this process built it, the tuning's measured recall
    (``recall``, at ``k``, target ``recall_target``, on ``tune_queries`` queries): what a
    bundle's metadata should record.
    """

    BLAS_THRESHOLD = 16

    def __init__(
        self, index: faiss.Index, *, threads: int = 1, info: dict[str, Any] | None = None
    ) -> None:
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("Retriever needs an inner-product FAISS index")
        faiss.omp_set_num_threads(threads)
        faiss.cvar.distance_compute_blas_threshold = self.BLAS_THRESHOLD
        self.index = index
        self._ivf = faiss.try_extract_index_ivf(index)
        self.info: dict[str, Any] = {"kind": "ivf" if self._ivf is not None else "flat"}
        self.info["n_items"] = self.n_items
        if self._ivf is not None:
            self.info.update(nlist=int(self._ivf.nlist), nprobe=int(self._ivf.nprobe))
        self.info.update(info or {})

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        *,
        threads: int = 1,
        flat_max_items: int = FLAT_MAX_ITEMS,
        recall_target: float = RECALL_TARGET,
        recall_k: int = RECALL_K,
        tune_queries: np.ndarray | None = None,
        seed: int = 0,
    ) -> Retriever:
        """Index the item table ``float32[N + 1, D]`` as a bundle stores it: row 0 (padding) is
        left out, rows ``1..N`` are normalised and become FAISS rows ``0..N-1``.

        ``N <= flat_max_items``: exact ``IndexFlatIP``. Above: ``IndexIVFFlat`` with
        ``ivf_nlist(N)`` lists, trained on up to 64 points per list, and ``nprobe`` tuned until
        recall@``recall_k`` against exact search is at least ``recall_target`` on
        ``tune_queries`` ``float32[Q, D]`` (default: ``TUNE_QUERIES`` serving-like queries mixed
        from items outside the k-means sample, drawn with ``seed``). Building is
        deterministic for a given ``seed`` and thread count.
        """
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] < 2:
            raise ValueError(f"need an item table of shape (N + 1, D), got {embeddings.shape}")
        items = np.ascontiguousarray(l2_normalise(embeddings[1:]))
        n, dim = items.shape
        if n <= flat_max_items:
            flat = faiss.IndexFlatIP(dim)
            flat.add(items)
            return cls(flat, threads=threads)
        faiss.omp_set_num_threads(threads)
        faiss.cvar.distance_compute_blas_threshold = cls.BLAS_THRESHOLD
        rng = np.random.default_rng(seed)
        nlist = ivf_nlist(n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = KMEANS_ITERATIONS
        index.cp.seed = seed
        n_train = min(n, KMEANS_POINTS_PER_LIST * nlist)
        order = rng.permutation(n)
        index.train(np.ascontiguousarray(items[np.sort(order[:n_train])]))
        index.add(items)
        if tune_queries is None:
            held_out = items[order[n_train:]] if n - n_train >= 2 else items
            tune_queries = serving_like_queries(held_out, TUNE_QUERIES, rng)
        queries = np.ascontiguousarray(l2_normalise(tune_queries))
        exact = _exact_rows(items, queries, recall_k)
        _, recall, lower = _tune_nprobe(index, queries, exact, recall_k, recall_target)
        info = {
            "recall": round(recall, 4),
            "recall_lower": round(lower, 4),
            "k": recall_k,
            "recall_target": recall_target,
            "tune_queries": len(queries),
        }
        return cls(index, threads=threads, info=info)

    @classmethod
    def load(cls, path: Path | str, *, threads: int = 1, mmap: bool = True) -> Retriever:
        """Read an index written by ``save``; ``mmap`` maps its vectors read-only from the file
        (``MMAP_FLAGS``) instead of copying them into this process, so processes that load the
        same file share its pages. Where mapping fails (a filesystem without mmap) the file is
        read into memory."""
        index = None
        if mmap:
            try:
                index = faiss.read_index(str(path), MMAP_FLAGS)
            except RuntimeError:
                index = None
        mapped = index is not None
        if index is None:
            index = faiss.read_index(str(path))
        return cls(index, threads=threads, info={"mmap": mapped})

    def save(self, path: Path | str) -> None:
        faiss.write_index(self.index, str(path))

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        """``"flat"`` (exact) or ``"ivf"``."""
        return str(self.info["kind"])

    @property
    def nlist(self) -> int | None:
        """Number of IVF lists (``None`` for a flat index)."""
        return None if self._ivf is None else int(self._ivf.nlist)

    @property
    def nprobe(self) -> int | None:
        """IVF lists visited per query (``None`` for a flat index)."""
        return None if self._ivf is None else int(self._ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self._ivf is None:
            raise ValueError("a flat index has no nprobe")
        if not 1 <= value <= self._ivf.nlist:
            raise ValueError(f"nprobe must be in 1..{self._ivf.nlist}, got {value}")
        self._ivf.nprobe = int(value)
        self.info["nprobe"] = int(value)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each query in ``float32[B, D]``, in one FAISS call.

        Returns ``(scores float32[B, k], indices int64[B, k])``: cosine similarities, best first,
        and item indices ``1..N``. Where FAISS has fewer than ``k`` results (``k > N``, or an
        IVF search whose visited lists hold fewer) the index is 0 (padding) and the score
        ``-inf``. An all-zero query (a user with no vector yet) scores every item 0, so its
        result order carries no meaning.
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries have shape {queries.shape}, expected (B, {self.dim})")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores, rows = self.index.search(np.ascontiguousarray(l2_normalise(queries)), k)
        missing = rows < 0
        indices = np.where(missing, 0, rows + 1).astype(np.int64)
        scores = np.where(missing, -np.inf, scores).astype(np.float32)
        return scores, indices


def _tune_nprobe(
    index: faiss.IndexIVF, queries: np.ndarray, exact: np.ndarray, k: int, target: float
) -> tuple[int, float, float]:
    """Smallest ``nprobe`` (to within 1/16) whose recall@``k`` against ``exact`` ``int64[B, k]``
    on ``queries`` ``float32[B, D]`` reaches ``target`` with 95% confidence (the mean minus
    ``CONFIDENCE_Z`` standard errors), so that other queries from the same distribution reach
    it too: doubling from 1, then bisection. Sets it on ``index`` and returns ``(nprobe, mean
    recall, its lower bound)``; ``nprobe = nlist`` is an exhaustive search (recall 1 up to
    ties)."""

    def recall_at(nprobe: int) -> tuple[float, float]:
        index.nprobe = nprobe
        _, rows = index.search(queries, k)
        per_query = _per_query_recall(np.asarray(rows, dtype=np.int64), exact, k)
        mean = float(per_query.mean())
        sem = float(per_query.std(ddof=1)) / np.sqrt(len(per_query)) if len(per_query) > 1 else 0.0
        return mean, mean - CONFIDENCE_Z * sem

    lo, hi = 0, 1
    recall, lower = recall_at(hi)
    while lower < target and hi < index.nlist:
        lo, hi = hi, min(2 * hi, int(index.nlist))
        recall, lower = recall_at(hi)
    while hi - lo > max(1, hi // 16):
        mid = (lo + hi) // 2
        r, r_lower = recall_at(mid)
        if r_lower >= target:
            hi, recall, lower = mid, r, r_lower
        else:
            lo = mid
    index.nprobe = hi
    return hi, recall, lower


def ann_recall(
    index_retriever: Retriever, embeddings: np.ndarray, queries: np.ndarray, k: int
) -> float:
    """Recall@``k`` of ``index_retriever`` against exact search: the mean share of each
    query's exact top-``k`` items (by cosine over rows ``1..N`` of the item table
    ``embeddings`` ``float32[N + 1, D]``, the one the index was built from) that the index
    returns in its top-``k``, over ``queries`` ``float32[B, D]``. 1.0 for a flat index up to
    ties; pure apart from FAISS's thread setting."""
    items = np.ascontiguousarray(l2_normalise(np.asarray(embeddings, dtype=np.float32)[1:]))
    if items.shape[0] != index_retriever.n_items:
        raise ValueError(f"{items.shape[0]} items in the table, {index_retriever.n_items} indexed")
    normalised = np.ascontiguousarray(l2_normalise(queries))
    exact = _exact_rows(items, normalised, k)
    _, found = index_retriever.search(normalised, k)
    return float(_per_query_recall(found - 1, exact, k).mean())
