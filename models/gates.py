"""Gates a candidate model version must pass before it replaces the current one.

Two questions, answered on the same recent events for both versions (stream/gates.py replays
them through the serving code):

* **Quality**: does the candidate rank the next item at least about as well? Its HR@K and
  MRR@K may fall below the current version's by at most a configured margin.
* **Consistency**: does it agree with what users are being shown now? On a canary set of
  recent events, the mean overlap of the two top-K lists must stay above a bound and the
  score drift below one. Scores of two models have no common scale, so drift compares each
  list's scores min-max normalised within the list, over the items both lists contain.

Pure functions over lists and arrays; the verdict carries every number so that it can be
recorded with the version and exported as metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class GateConfig:
    """Bounds of the two gates (absolute differences of metrics in [0, 1])."""

    max_hr_drop: float = 0.01
    max_mrr_drop: float = 0.01
    min_overlap: float = 0.3
    max_score_drift: float = 0.35


@dataclass(slots=True)
class GateReport:
    """The verdict and the numbers it rests on."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def overlap_at_k(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]], k: int) -> float:
    """Mean ``|top-k(a) ∩ top-k(b)| / n`` over aligned lists, ``n`` the longer list's length
    up to ``k`` (short lists from a small catalogue can still agree fully); 1.0 = identical
    sets, and for two empty lists."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} lists vs {len(b)}")
    if not a:
        return 1.0
    shares = []
    for x, y in zip(a, b, strict=True):
        n = min(k, max(len(x), len(y)))
        shares.append(len(set(x[:k]) & set(y[:k])) / n if n else 1.0)
    return float(np.mean(shares))


def _unit(scores: Sequence[float]) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = (s.min(), s.max()) if s.size else (0.0, 0.0)
    return (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)


def score_drift(
    items_a: Sequence[Sequence[str]],
    scores_a: Sequence[Sequence[float]],
    items_b: Sequence[Sequence[str]],
    scores_b: Sequence[Sequence[float]],
) -> float:
    """Mean absolute difference of the list-normalised scores of items present in both lists
    (0 = same relative scores; 0 when no list pair shares an item)."""
    diffs: list[float] = []
    for ia, sa, ib, sb in zip(items_a, scores_a, items_b, scores_b, strict=True):
        na = dict(zip(ia, _unit(sa), strict=True))
        nb = dict(zip(ib, _unit(sb), strict=True))
        diffs += [abs(na[i] - nb[i]) for i in na.keys() & nb.keys()]
    return float(np.mean(diffs)) if diffs else 0.0


def decide(
    current: dict[str, float],
    candidate: dict[str, float],
    overlap: float,
    drift: float,
    cfg: GateConfig,
    *,
    k: int = 20,
) -> GateReport:
    """Apply both gates to the metrics of the two versions (``HR@k`` / ``MRR@k`` keys)."""
    reasons: list[str] = []
    hr, mrr = f"HR@{k}", f"MRR@{k}"
    if candidate[hr] < current[hr] - cfg.max_hr_drop:
        reasons.append(f"quality: {hr} {candidate[hr]:.4f} < {current[hr]:.4f} - {cfg.max_hr_drop}")
    if candidate[mrr] < current[mrr] - cfg.max_mrr_drop:
        reasons.append(
            f"quality: {mrr} {candidate[mrr]:.4f} < {current[mrr]:.4f} - {cfg.max_mrr_drop}"
        )
    if overlap < cfg.min_overlap:
        reasons.append(f"consistency: overlap@{k} {overlap:.3f} < {cfg.min_overlap}")
    if drift > cfg.max_score_drift:
        reasons.append(f"consistency: score drift {drift:.3f} > {cfg.max_score_drift}")
    metrics = {
        f"current_{hr}": current[hr],
        f"current_{mrr}": current[mrr],
        f"candidate_{hr}": candidate[hr],
        f"candidate_{mrr}": candidate[mrr],
        f"overlap@{k}": overlap,
        "score_drift": drift,
    }
    return GateReport(not reasons, reasons, metrics)


__all__ = ["GateConfig", "GateReport", "decide", "overlap_at_k", "score_drift"]
