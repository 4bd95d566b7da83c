"""Item-to-item co-visitation: a candidate source and a ranking feature, built at training
time and shipped in the bundle.

Session-based studies find that rules over item pairs (sequential and association rules) are
hard to beat on short sessions; our own evaluation agreed (docs/quality.md). So the served
ranking adds, to the ANN candidates, the items that followed or accompanied the session's
newest items in training sessions, and blends their co-visitation score with the ranker's.

Weights: for items ``a`` at position ``i`` and ``b`` at ``j > i`` of one session with
``j - i <= window``: ``w(a -> b) += 1 / (j - i)`` (sequential) and ``w(b -> a) +=
back_weight / (j - i)`` (association, weaker). Each item keeps its ``top_m`` heaviest
neighbours. Pure numpy, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.session_knn import sparse_lookup


def build_covisitation(
    sessions: Sequence[Sequence[int]],
    n_items: int,
    *,
    window: int = 5,
    back_weight: float = 0.5,
    top_m: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """``(neighbours int64[N+1, M], weights float32[N+1, M])`` from sessions of item indices
    (1..N). Row 0 and unused slots hold index 0 with weight 0; rows are sorted by weight."""
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    wts: list[np.ndarray] = []
    for s in sessions:
        arr = np.asarray(s, dtype=np.int64)
        for d in range(1, min(window, len(arr) - 1) + 1):
            a, b = arr[:-d], arr[d:]
            keep = a != b
            a, b = a[keep], b[keep]
            src += [a, b]
            dst += [b, a]
            wts += [np.full(a.size, 1.0 / d), np.full(a.size, back_weight / d)]
    neighbours = np.zeros((n_items + 1, top_m), dtype=np.int64)
    weights = np.zeros((n_items + 1, top_m), dtype=np.float32)
    if not src:
        return neighbours, weights
    pair = np.concatenate(src) * (n_items + 1) + np.concatenate(dst)
    keys, inverse = np.unique(pair, return_inverse=True)
    total = np.bincount(inverse, weights=np.concatenate(wts))
    s_idx, d_idx = keys // (n_items + 1), keys % (n_items + 1)
    order = np.lexsort((-total, s_idx))  # by source, heaviest first
    s_idx, d_idx, total = s_idx[order], d_idx[order], total[order]
    starts = np.searchsorted(s_idx, np.arange(n_items + 1))
    rank = np.arange(s_idx.size) - starts[s_idx]
    keep = rank < top_m
    neighbours[s_idx[keep], rank[keep]] = d_idx[keep]
    weights[s_idx[keep], rank[keep]] = total[keep]
    return neighbours, weights


def covisit_scores(
    recent: np.ndarray,
    candidates: np.ndarray,
    neighbours: np.ndarray,
    weights: np.ndarray,
    *,
    depth: int = 3,
) -> np.ndarray:
    """``float32[B, C]``: co-visitation of each candidate with the session's newest ``depth``
    items, the newest counting most (1, 1/2, 1/3 ...). ``recent`` is ``int64[B, R]``
    chronological with the newest last (model input layout).

    The neighbour entries of the batch are summed per (row, item) once and each candidate is
    found by binary search: O((B*M*depth + B*C) log) instead of comparing every candidate with
    every neighbour (measured 4.6 ms -> 1.4 ms for 64 x 250 candidates, M = 50).
    """
    b, _ = candidates.shape
    span = np.int64(max(int(neighbours.max(initial=0)), int(candidates.max(initial=0))) + 1)
    rows = np.arange(b, dtype=np.int64)[:, None]
    keys, vals = [], []
    for p in range(1, min(depth, recent.shape[1]) + 1):
        src = recent[:, -p]
        keys.append((rows * span + neighbours[src]).ravel())
        vals.append((weights[src] / p).ravel())
    if not keys:
        return np.zeros(candidates.shape, dtype=np.float32)
    uniq, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    total = np.bincount(inverse, weights=np.concatenate(vals))
    # Padding neighbours (index 0, weight 0) add nothing; a padding candidate scores 0.
    return sparse_lookup(uniq, total, int(span), candidates)


def covisit_candidates(recent: np.ndarray, neighbours: np.ndarray, *, depth: int = 3) -> np.ndarray:
    """``int64[B, depth * M]``: the neighbours of the session's newest ``depth`` items (0 =
    padding; duplicates are resolved by the final top-K)."""
    cols = [neighbours[recent[:, -p]] for p in range(1, min(depth, recent.shape[1]) + 1)]
    return np.concatenate(cols, axis=1)
