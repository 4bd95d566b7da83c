"""Offline ranking metrics for next-item prediction (one target per example).

Serving-side in the sense that it never imports torch: the replay evaluator runs it on the
recommendations the stream actually emitted, and training runs it on model predictions, so
both report the same numbers from the same code. Pure Python plus numpy.

``ranked`` is a sequence of B ranked lists (best first) of item indices; ``targets`` holds B
target items. The top k of a list are its first ``k`` DISTINCT entries: a repeated item neither
takes a slot nor pushes the target down. An empty batch raises
``ValueError`` rather than reporting a misleading 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def top_distinct(items: Sequence[int], k: int) -> list[int]:
    """The first ``k`` distinct entries of a ranked list, in order."""
    out: list[int] = []
    seen: set[int] = set()
    for item in items:
        item = int(item)
        if item not in seen:
            seen.add(item)
            out.append(item)
            if len(out) == k:
                break
    return out


def target_ranks(ranked: Sequence[Sequence[int]], targets: Sequence[int], k: int) -> np.ndarray:
    """``int64[B]``: 1-based rank of each target within the top ``k`` of its list, 0 where it
    is absent (a miss)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists for {len(targets)} targets")
    if len(targets) == 0:
        raise ValueError("no examples to evaluate")
    ranks = np.zeros(len(targets), dtype=np.int64)
    for row, (items, target) in enumerate(zip(ranked, targets, strict=True)):
        top = top_distinct(items, k)
        if int(target) in top:
            ranks[row] = top.index(int(target)) + 1
    return ranks


def hit_rate_at_k(ranked: Sequence[Sequence[int]], targets: Sequence[int], k: int) -> float:
    """Fraction of examples whose target is in the top ``k``."""
    return float(np.mean(target_ranks(ranked, targets, k) > 0))


def mrr_at_k(ranked: Sequence[Sequence[int]], targets: Sequence[int], k: int) -> float:
    """Mean reciprocal rank of the target, counting 0 where it is outside the top ``k``."""
    ranks = target_ranks(ranked, targets, k)
    return float(np.mean(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0)))


def ndcg_at_k(ranked: Sequence[Sequence[int]], targets: Sequence[int], k: int) -> float:
    """Mean NDCG@k with one relevant item: ``1 / log2(rank + 1)`` (the ideal DCG is 1)."""
    ranks = target_ranks(ranked, targets, k)
    gains = [1.0 / math.log2(r + 1) if r > 0 else 0.0 for r in ranks.tolist()]
    return float(np.mean(gains))


def coverage(ranked: Sequence[Sequence[int]], n_items: int, k: int) -> float:
    """Share of the catalogue (``n_items`` items, indices 1..N) that appears in at least one
    top-``k`` list; padding (index <= 0) does not count. Low coverage means the model keeps
    recommending the same few (usually popular) items."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    shown = {i for items in ranked for i in top_distinct(items, k) if i > 0}
    return len(shown) / n_items


def popularity_bias(ranked: Sequence[Sequence[int]], popularity: np.ndarray, k: int) -> float:
    """Average recommendation popularity (ARP): the mean training popularity of recommended
    items, as a share of the most popular item's (0..1). High values mean the lists lean on
    the head of the catalogue. ``popularity`` is indexed by item (``float[N + 1]``)."""
    top = float(np.max(popularity)) if len(popularity) else 0.0
    if top <= 0:
        return 0.0
    shown = [i for items in ranked for i in top_distinct(items, k) if 0 < i < len(popularity)]
    if not shown:
        return 0.0
    return float(np.mean(popularity[np.asarray(shown)]) / top)
