"""Item text index: item id -> unit text embedding, searched by inner product (FAISS).

Serving-side, never imports torch. Items come from the catalogue topic while the worker runs,
so the index grows: an exact ``IndexFlatIP`` behind an ``IndexIDMap2`` keyed by the item's
8-byte id hash (``features.keys.id_hash``, as ``uint64`` viewed as ``int64``). Keys rather than
positions let a re-titled item be replaced (one ``remove_ids`` per batch, O(items)) and let
search results be mapped straight to model indices (``ServingModel.indices_of`` takes the same
hashes) or, for items only the catalogue knows, to their ids. Exact search costs about
``Q x items x dim`` flops: a batch of 64 queries over 50k titles at 384 dims is 1.2 GFLOP, a
few ms with BLAS; past a few hundred thousand items an IVF index would be the next step.

Vectors are L2-normalised on the way in, so a score is a cosine in ``[-1, 1]``. The index
holds vectors of one encoder (``name``): vectors of different encoders are not comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from features.keys import item_hashes_u64
from models.retrieval import Retriever, l2_normalise


class ItemTextIndex:
    """Titles of catalogue items as unit vectors ``float32[dim]``, keyed by item id hash.

    Not thread-safe: the worker adds and searches from its event loop only.
    """

    def __init__(self, dim: int, name: str) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.name = name
        # Same BLAS switch as the item retriever: a micro-batch of queries is one matrix
        # product instead of one scan per query.
        faiss.cvar.distance_compute_blas_threshold = Retriever.BLAS_THRESHOLD
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._ids: dict[int, str] = {}  # int64 key -> item id

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @staticmethod
    def keys_of(hashes: np.ndarray) -> np.ndarray:
        """FAISS keys ``int64[N]`` of item hashes ``uint64[N]`` (the same 64 bits)."""
        return np.ascontiguousarray(hashes, dtype=np.uint64).view(np.int64)

    def upsert(self, item_ids: Sequence[str], vectors: np.ndarray) -> int:
        """Add ``item_ids`` with their embeddings ``float32[N, dim]``; an id already present
        (or repeated within the call: the last copy wins) is replaced. One ``remove_ids`` (only
        when something is replaced) and one ``add_with_ids`` per call. Returns how many ids
        were new."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(item_ids), self.dim):
            expected = (len(item_ids), self.dim)
            raise ValueError(f"vectors have shape {vectors.shape}, expected {expected}")
        if not item_ids:
            return 0
        keys = self.keys_of(item_hashes_u64(list(item_ids)))
        last: dict[int, int] = {}
        for pos, key in enumerate(keys.tolist()):
            last[key] = pos
        rows = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        keys = keys[rows]
        known = np.fromiter((k in self._ids for k in keys.tolist()), dtype=bool, count=keys.size)
        if known.any():
            self.index.remove_ids(np.ascontiguousarray(keys[known]))  # type: ignore[arg-type]
        self.index.add_with_ids(np.ascontiguousarray(l2_normalise(vectors[rows])), keys)
        for key, row in zip(keys.tolist(), rows.tolist(), strict=True):
            self._ids[key] = item_ids[row]
        return int((~known).sum())

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items for each query of ``float32[Q, dim]``, in one FAISS call.

        Returns ``(scores float32[Q, n], hashes uint64[Q, n])``: cosines, best first, and item
        id hashes. Where fewer than ``n`` items exist the hash is 0 and the score ``-inf``
        (a real hash of 0 or 2^64 - 1 has probability 2^-63 and is not special-cased).
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries have shape {queries.shape}, expected (Q, {self.dim})")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        scores, keys = self.index.search(np.ascontiguousarray(l2_normalise(queries)), n)
        missing = keys == -1
        hashes = np.where(missing, 0, keys).astype(np.int64).view(np.uint64)
        return np.where(missing, -np.inf, scores).astype(np.float32), hashes

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """``bool[N]``: which item hashes ``uint64[N]`` are in the index."""
        keys = self.keys_of(hashes).tolist()
        return np.fromiter((k in self._ids for k in keys), dtype=bool, count=len(keys))

    def vectors_of(self, hashes: np.ndarray) -> np.ndarray:
        """Stored unit vectors ``float32[N, dim]`` of item hashes ``uint64[N]``, all of which
        must be in the index (``contains``)."""
        keys = np.ascontiguousarray(self.keys_of(hashes))
        if keys.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self.index.reconstruct_batch(keys), dtype=np.float32)

    def item_id(self, item_hash: int) -> str:
        """The item id of a hash from ``search`` (``KeyError`` when it is not indexed)."""
        return self._ids[int(np.uint64(item_hash).view(np.int64))]
