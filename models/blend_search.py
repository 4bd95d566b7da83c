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

SIGNALS = ("neural", "covisit", "sequential", "knn", "online")
# Weights tried for every non-neural signal (the neural logit keeps weight 1: it is the scale).
GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# The first pass tries every combination of these on at most COARSE_EXAMPLES examples.
COARSE_GRID = (0.0, 1.0, 4.0, 16.0, 64.0)
COARSE_EXAMPLES = 5000
REFINE_ROUNDS = 2
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


def subset(data: CapturedSignals, rows: np.ndarray) -> CapturedSignals:
    """The captured examples at ``rows``."""
    return CapturedSignals(
        data.candidates[rows],
        data.valid[rows],
        data.target_col[rows],
        {n: v[rows] for n, v in data.features.items()},
    )


def search_blend(
    data: CapturedSignals,
    k: int,
    grid: Sequence[float] = GRID,
    coarse_grid: Sequence[float] = COARSE_GRID,
    *,
    seed: int = 0,
) -> tuple[BlendWeights, dict[str, float]]:
    """The blend with the best HR@k + MRR@k on the captured examples (ties: the earlier
    tried). Both metrics count because the served list is judged on both: HR alone prefers
    wide recall, MRR alone the head of the list.

    Search: every combination of ``coarse_grid`` over the non-neural signals, on a random
    sample of at most COARSE_EXAMPLES examples; then REFINE_ROUNDS rounds of one-signal-at-
    a-time sweeps over ``grid`` on all examples. Returns the weights and a summary."""
    names = [n for n in SIGNALS[1:] if n in data.features]
    rng = np.random.default_rng(seed)
    sample = data
    if len(data) > COARSE_EXAMPLES:
        sample = subset(data, np.sort(rng.choice(len(data), COARSE_EXAMPLES, replace=False)))
    tried = 0

    def objective(d: CapturedSignals, w: dict[str, float]) -> float:
        nonlocal tried
        tried += 1
        hr, mrr = blend_metrics(d, BlendWeights(neural=1.0, **w), k)
        return hr + mrr

    best_w: dict[str, float] = dict.fromkeys(names, 0.0)
    best = objective(sample, best_w)
    for combo in itertools.product(coarse_grid, repeat=len(names)):
        w = dict(zip(names, combo, strict=True))
        value = objective(sample, w)
        if value > best:
            best, best_w = value, w
    best = objective(data, best_w)
    for _ in range(REFINE_ROUNDS):
        improved = False
        for name in names:
            for value in grid:
                w = {**best_w, name: value}
                if w == best_w:
                    continue
                score = objective(data, w)
                if score > best:
                    best, best_w, improved = score, w, True
        if not improved:
            break
    weights = BlendWeights(neural=1.0, **best_w)
    hr, mrr = blend_metrics(data, weights, k)
    base_hr, base_mrr = blend_metrics(data, BlendWeights(neural=1.0), k)
    summary = {
        "examples": float(len(data)),
        "blends_tried": float(tried),
        f"hr@{k}": hr,
        f"mrr@{k}": mrr,
        f"neural_only_hr@{k}": base_hr,
        f"neural_only_mrr@{k}": base_mrr,
    }
    return weights, summary


__all__ = [
    "GRID",
    "CapturedSignals",
    "blend_metrics",
    "capture",
    "search_blend",
    "subset",
    "target_ranks",
]
