"""Candidate retrieval: exact inner-product search over L2-normalised item embeddings (FAISS).

Serving-side, never imports torch. Embeddings are normalised before indexing (and queries at
search time) so that the score is a cosine: popular items with long embedding vectors would
otherwise crowd every result list. The catalogue is thousands to tens of thousands of items,
so an exact ``IndexFlatIP`` (about 2 ms for 64 queries over 6k items) needs no training or
tuning; an IVF index for larger catalogues is future work.

Index rows are items without the padding row: FAISS row ``r`` is item index ``r + 1``.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of ``float32[M, D]``; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


class Retriever:
    """A FAISS inner-product index over normalised item embeddings.

    ``threads`` sets FAISS's OpenMP thread count, which is process-wide: the default of 1
    keeps a batch search from taking both cores of the 2-core asyncio worker.

    FAISS switches a flat search to one BLAS matrix product only from
    ``distance_compute_blas_threshold`` queries on (128000 in faiss 1.15), so a micro-batch
    was searched query by query; at 16 a 64-query search over 6k items takes 2.2 ms instead
    of 4.3 ms with identical results (measured, bench/batching.py).
    """

    BLAS_THRESHOLD = 16

    def __init__(self, index: faiss.Index, *, threads: int = 1) -> None:
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("Retriever needs an inner-product FAISS index")
        faiss.omp_set_num_threads(threads)
        faiss.cvar.distance_compute_blas_threshold = self.BLAS_THRESHOLD
        self.index = index

    @classmethod
    def build(cls, embeddings: np.ndarray, *, threads: int = 1) -> Retriever:
        """Index the item table ``float32[N + 1, D]`` as a bundle stores it: row 0 (padding) is
        left out, rows ``1..N`` are normalised and become FAISS rows ``0..N-1``."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] < 2:
            raise ValueError(f"need an item table of shape (N + 1, D), got {embeddings.shape}")
        index = faiss.IndexFlatIP(int(embeddings.shape[1]))
        index.add(np.ascontiguousarray(l2_normalise(embeddings[1:])))
        return cls(index, threads=threads)

    @classmethod
    def load(cls, path: Path | str, *, threads: int = 1) -> Retriever:
        return cls(faiss.read_index(str(path)), threads=threads)

    def save(self, path: Path | str) -> None:
        faiss.write_index(self.index, str(path))

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each query in ``float32[B, D]``, in one FAISS call.

        Returns ``(scores float32[B, k], indices int64[B, k])``: cosine similarities, best first,
        and item indices ``1..N``. Where FAISS has fewer than ``k`` results (``k > N``) the index
        is 0 (padding) and the score ``-inf``. An all-zero query (a user with no vector yet)
        scores every item 0, so its result order carries no meaning.
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
