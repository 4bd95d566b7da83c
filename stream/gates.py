"""Checking a candidate version against the current one before promotion (models/gates.py).

Both versions replay the same recent events through the serving code
(``stream.evaluate.served_recommendations``: same state warm-up, same online store), so the
quality numbers are prequential for a candidate trained before those events, and the
consistency numbers compare what the two would show the same users for the same events.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.gates import GateConfig, GateReport, decide, overlap_at_k, score_drift
from models.serving import ServingModel
from stream.evaluate import build_test_pairs, run_sync, score_lists, served_recommendations
from stream.settings import Settings
from topics.events import UserEvent
from topics.recommendations import Recommendation

GATE_K = 20


def gate_config(settings: Settings) -> GateConfig:
    """The gate bounds of ``STREAMREC_GATE_*``."""
    return GateConfig(
        max_hr_drop=settings.gate_max_hr_drop,
        max_mrr_drop=settings.gate_max_mrr_drop,
        min_overlap=settings.gate_min_overlap,
        max_score_drift=settings.gate_max_score_drift,
    )


def check_candidate(
    current: ServingModel,
    candidate: ServingModel,
    warm: Sequence[UserEvent],
    recent: Sequence[UserEvent],
    cfg: GateConfig | None = None,
    *,
    canary_events: int = 2000,
) -> GateReport:
    """Gate ``candidate`` against ``current`` on ``recent`` events (state warmed with
    ``warm``): quality over every next-item example of ``recent`` whose target both versions
    know, consistency over the first ``canary_events`` of them that both answered."""
    cfg = cfg or GateConfig()
    recs = _replay(current, candidate, warm, recent)
    known = set(current.item_ids) & set(candidate.item_ids)
    pairs = build_test_pairs(recent, known)
    catalogue = sorted(known)
    metrics = {}
    for name, by_event in recs.items():
        lists = [by_event[t].items if t in by_event else [] for t in pairs.trigger_ids]
        metrics[name] = score_lists(lists, pairs, catalogue, np.zeros(len(catalogue) + 1),
                                    (GATE_K,))  # fmt: skip
    overlap, drift, n = _agreement(recs, recent, canary_events)
    report = decide(metrics["current"], metrics["candidate"], overlap, drift, cfg, k=GATE_K)
    report.metrics.update(examples=float(len(pairs)), canary_events=float(n))
    return report


def canary_consistency(
    current: ServingModel,
    candidate: ServingModel,
    warm: Sequence[UserEvent],
    recent: Sequence[UserEvent],
    *,
    canary_events: int = 2000,
) -> tuple[float, float, int]:
    """``(overlap@20, score drift, events compared)`` of the two versions' lists for the same
    ``recent`` events: the consistency gate alone, for a candidate that has trained on
    ``recent`` (the training agent judges its quality prequentially instead)."""
    return _agreement(_replay(current, candidate, warm, recent), recent, canary_events)


def _replay(
    current: ServingModel,
    candidate: ServingModel,
    warm: Sequence[UserEvent],
    recent: Sequence[UserEvent],
) -> dict[str, dict[str, Recommendation]]:
    return {
        name: run_sync(served_recommendations(model, warm, recent, k=GATE_K))
        for name, model in (("current", current), ("candidate", candidate))
    }


def _agreement(
    recs: dict[str, dict[str, Recommendation]], recent: Sequence[UserEvent], canary_events: int
) -> tuple[float, float, int]:
    both = [e.event_id for e in recent if e.event_id in recs["current"]
            and e.event_id in recs["candidate"]][:canary_events]  # fmt: skip
    a = [recs["current"][i] for i in both]
    b = [recs["candidate"][i] for i in both]
    overlap = overlap_at_k([r.items for r in a], [r.items for r in b], GATE_K)
    drift = score_drift([r.items for r in a], [r.scores for r in a],
                        [r.items for r in b], [r.scores for r in b])  # fmt: skip
    return overlap, drift, len(both)


__all__ = ["GATE_K", "canary_consistency", "check_candidate", "gate_config"]
