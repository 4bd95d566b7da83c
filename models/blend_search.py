"""Choosing the served blend weights (models.serving.BlendWeights) on validation data.

The validation period is replayed once through the serving code with every signal computed
(stream.evaluate.served_signals); this module then scores any weight vector on those captured
candidates in a few numpy operations, so a grid of dozens of blends costs seconds instead of
dozens of replays. Only the rank of each example's target among its valid candidates is
needed: HR@K and MRR@K follow from it.

Pure numpy; the test period is never seen here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.serving import BlendWeights

SIGNALS = ("neural", "covisit", "knn", "online")
# Weights tried for every non-neural signal (the neural logit keeps weight 1: it is the scale).
GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
NOT_RETRIEVED = 2**40  # the rank of a target missing from the candidates


@dataclass(slots=True)
class CapturedSignals:
    """Validation examples as the serving code saw them.

    candidates: int64[P, C]       the served candidates of each example's trigger
    valid:      bool[P, C]        candidates the top-K may return (not padding, not seen in the
                                  session, first copy of a duplicate)
    target_col: int64[P]          a column holding the example's target, -1 if not retrieved
    features:   name -> float32[P, C] the transformed signals (neural logit, log1p of others)
    """

    candidates: np.ndarray
    valid: np.ndarray
    target_col: np.ndarray
    features: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.target_col)


def capture(
    candidates: np.ndarray,
    seen: Sequence[set[int]],
    targets: np.ndarray,
    raw: dict[str, np.ndarray | None],
) -> CapturedSignals:
    """Build ``CapturedSignals`` from served rows: ``targets`` ``int64[P]`` item indices,
    ``raw`` the pipeline's signals by name (models.serving.BlendWeights' formula is applied
    here once, so each blend is then a weighted sum)."""
    p, c = candidates.shape
    order = np.argsort(candidates, axis=1, kind="stable")
    ordered = np.take_along_axis(candidates, order, axis=1)
    dup_sorted = np.zeros((p, c), dtype=bool)
    dup_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    seen_mask = np.zeros((p, c), dtype=bool)
    for i, items in enumerate(seen):
        if items:
            seen_mask[i] = np.isin(candidates[i], list(items))
    valid = (candidates > 0) & ~dup & ~seen_mask
    hit = (candidates == targets[:, None]) & valid
    target_col = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    features: dict[str, np.ndarray] = {}
    for name, values in raw.items():
        if values is not None:
            v = values.astype(np.float32)
            features[name] = v if name == "neural" else np.log1p(v)
    return CapturedSignals(candidates, valid, target_col, features)


def target_ranks(data: CapturedSignals, weights: BlendWeights) -> np.ndarray:
    """``int64[P]``: 0-based rank of each target under ``weights`` (ties with earlier columns
    count against it); ``NOT_RETRIEVED`` (beyond any list) when it was not retrieved."""
    p, c = data.valid.shape
    score = np.zeros((p, c), dtype=np.float32)
    for name, values in data.features.items():
        w = getattr(weights, name)
        if w:
            score += np.float32(w) * values
    score = np.round(score, 5)
    found = data.target_col >= 0
    col = np.where(found, data.target_col, 0)
    ts = score[np.arange(p), col][:, None]
    before = np.arange(c)[None, :] < col[:, None]
    ahead = data.valid & ((score > ts) | ((score == ts) & before))
    return np.where(found, ahead.sum(axis=1), NOT_RETRIEVED)


def blend_metrics(data: CapturedSignals, weights: BlendWeights, k: int) -> tuple[float, float]:
    """``(HR@k, MRR@k)`` of the blend over the captured examples."""
    if not len(data):
        return 0.0, 0.0
    ranks = target_ranks(data, weights)
    hit = ranks < k
    return float(hit.mean()), float(np.where(hit, 1.0 / (ranks + 1), 0.0).mean())


def search_blend(
    data: CapturedSignals, k: int, grid: Sequence[float] = GRID
) -> tuple[BlendWeights, dict[str, float]]:
    """The blend with the best HR@k + MRR@k over the grid of every captured non-neural
    signal (ties: the earlier, i.e. lighter, blend). Returns it and a summary of the search.

    Both metrics count because the served list is judged on both: HR alone prefers wide
    recall, MRR alone the head of the list."""
    names = [n for n in SIGNALS[1:] if n in data.features]
    best: tuple[float, float, float, BlendWeights] | None = None
    tried = 0
    for combo in itertools.product(grid, repeat=len(names)):
        w = BlendWeights(neural=1.0, **dict(zip(names, combo, strict=True)))
        hr, mrr = blend_metrics(data, w, k)
        tried += 1
        if best is None or hr + mrr > best[0] + best[1]:
            best = (hr, mrr, 0.0, w)
    assert best is not None
    base_hr, base_mrr = blend_metrics(data, BlendWeights(neural=1.0), k)
    summary = {
        "examples": float(len(data)),
        "blends_tried": float(tried),
        f"hr@{k}": best[0],
        f"mrr@{k}": best[1],
        f"neural_only_hr@{k}": base_hr,
        f"neural_only_mrr@{k}": base_mrr,
    }
    return best[3], summary


__all__ = [
    "GRID",
    "CapturedSignals",
    "blend_metrics",
    "capture",
    "search_blend",
    "target_ranks",
]
