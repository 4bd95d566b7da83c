"""Final top-k selection over scored candidates, vectorised over the micro-batch.

Serving-side, pure numpy. Candidates come from several sources (FAISS neighbours, popular
items, the session's co-views), so a row can contain padding (index 0), items the user has
already seen, and the same item twice; all three must be removed before taking the top k,
otherwise a recommendation list repeats an item or shows what the user just viewed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

Exclude = np.ndarray | Sequence[Collection[int]] | None


def exclusion_mask(candidates: np.ndarray, exclude: Exclude) -> np.ndarray:
    """``bool[B, C]``: True where ``candidates[b, c]`` is excluded.

    ``exclude`` is either a ready ``bool[B, C]`` mask or one collection of item indices per row.
    Per-row sets are matched with a single ``np.isin`` on ``row * M + item`` keys, so the cost
    does not grow with a Python loop over B x C cells.
    """
    batch = candidates.shape[0]
    if exclude is None:
        return np.zeros(candidates.shape, dtype=bool)
    if isinstance(exclude, np.ndarray):
        if exclude.shape != candidates.shape or exclude.dtype != bool:
            raise ValueError(f"exclude mask must be bool{candidates.shape}, got {exclude.dtype}")
        return exclude
    if len(exclude) != batch:
        raise ValueError(f"need one exclusion set per row: {len(exclude)} sets for {batch} rows")
    lengths = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=batch)
    if lengths.sum() == 0:
        return np.zeros(candidates.shape, dtype=bool)
    items = np.fromiter((i for e in exclude for i in e), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(batch, dtype=np.int64), lengths)
    low = min(int(candidates.min(initial=0)), int(items.min()))
    span = max(int(candidates.max(initial=0)), int(items.max())) - low + 1
    cand_keys = np.arange(batch, dtype=np.int64)[:, None] * span + (candidates - low)
    return np.isin(cand_keys, rows * span + (items - low))


def duplicate_mask(candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``bool[B, C]``: True for every repeat of a candidate within its row except the copy
    with the highest score (what survives is one entry per item, at its best score)."""
    order = np.lexsort((-scores, candidates), axis=1)
    ordered = np.take_along_axis(candidates, order, axis=1)
    dup_sorted = np.zeros(candidates.shape, dtype=bool)
    dup_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup


def top_k_excluding(
    scores: np.ndarray, candidates: np.ndarray, exclude: Exclude, k: int
) -> tuple[list[list[int]], list[list[float]]]:
    """Best ``k`` items per row of ``scores[B, C]`` over ``candidates[B, C]`` (int64 indices).

    Dropped before ranking: padding and other non-positive indices, ``exclude``d items (see
    ``exclusion_mask``), duplicates (the best-scored copy stays) and non-finite scores.
    Returns ``(items, scores)``: per row a Python list of item indices (not column positions)
    and their scores, sorted by score descending. A row with fewer than ``k`` valid candidates
    yields a shorter list; no padding value is returned. Ties come out in arbitrary order.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.asarray(scores, dtype=np.float32)
    candidates = np.asarray(candidates, dtype=np.int64)
    if scores.shape != candidates.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and candidates {candidates.shape} must match")
    batch, width = scores.shape
    if width == 0:
        return [[] for _ in range(batch)], [[] for _ in range(batch)]
    valid = (candidates > 0) & np.isfinite(scores) & ~exclusion_mask(candidates, exclude)
    masked = np.where(valid, scores, -np.inf).astype(np.float32)
    masked[duplicate_mask(candidates, masked)] = -np.inf
    kk = min(k, width)
    if kk < width:
        top = np.argpartition(-masked, kk - 1, axis=1)[:, :kk]
    else:
        top = np.broadcast_to(np.arange(width), (batch, width))
    top_scores = np.take_along_axis(masked, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    top_scores = np.take_along_axis(top_scores, order, axis=1)
    top_items = np.take_along_axis(candidates, top, axis=1)
    counts = np.isfinite(top_scores).sum(axis=1)
    items_out = [row[:n] for row, n in zip(top_items.tolist(), counts.tolist(), strict=True)]
    scores_out = [row[:n] for row, n in zip(top_scores.tolist(), counts.tolist(), strict=True)]
    return items_out, scores_out
