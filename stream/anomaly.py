"""What the worker does with flagged traffic (features/traffic.py finds it).

A flagged event is still answered, so that nothing is lost and a consumer never waits for a
list that will not come, but the answer is computed without touching Redis: the bundle's
popular items ranked as for a user with no history, the same list for every flagged event of
one model version, marked ``flagged``. The event changes no user state, no online
co-visitation and no trending, and is not judged by the online HR@K.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from features.traffic import RateBounds, TrafficMonitor
from models.serving import ServingModel
from models.topk import top_k_excluding
from stream.pipeline import Trigger, make_recommendation
from stream.settings import Settings
from topics.events import EventType, Limits, UserEvent
from topics.recommendations import Recommendation


def rate_bounds(settings: Settings) -> RateBounds:
    return RateBounds(
        user=settings.anomaly_user_events_per_min,
        session=settings.anomaly_session_events_per_min,
        item=settings.anomaly_item_events_per_min,
        max_keys=settings.anomaly_max_keys,
    )


def input_limits(settings: Settings) -> Limits:
    """The ``Limits`` of user events from the settings (workers and training agent alike)."""
    return Limits(
        max_bytes=settings.max_event_bytes,
        max_query_chars=settings.max_query_chars,
        max_items=settings.max_items_per_event,
        max_future_ms=settings.max_event_future_s * 1000,
    )


def check_event(monitor: TrafficMonitor, event: UserEvent) -> list[str]:
    """Count ``event`` in ``monitor``; the kinds (user, session, item) over their bound.
    Impressions are not counted: the front end sends one per list shown, so they would
    double a human's rate, and they change no state anyway. The workers and the training
    agent both call this, on the same events in the same per-key order (a user's and a
    session's events share a partition), so they flag alike."""
    if event.event_type is EventType.IMPRESSION:
        return []
    return monitor.check(event.user_id, event.session_id, event.item_id, float(event.timestamp_ms))


@dataclass(slots=True)
class Fallback:
    """The non-personalised list of each model version (computed once per version: one
    ONNX call over the bundle's popular items with an empty history, what a cold user's
    ranking starts from, minus the stream's trending, which is read through Redis)."""

    k: int
    n_candidates: int
    _lists: dict[str, tuple[list[str], list[float]]] = field(default_factory=dict)

    def list_for(self, model: ServingModel) -> tuple[list[str], list[float]]:
        cached = self._lists.get(model.version)
        if cached is not None:
            return cached
        n = max(self.n_candidates, self.k)
        candidates = model.popular[:n][None, :]  # int64[1, n]
        recent = np.zeros((1, model.max_recent), dtype=np.int64)
        user_vec = np.zeros((1, model.dim), dtype=np.float32)
        scores = model.scorer.score(recent, user_vec, candidates)
        idx, top = top_k_excluding(np.round(scores, 5), candidates, None, self.k)
        result = ([model.item_ids[i - 1] for i in idx[0]], top[0])
        self._lists = {model.version: result}  # one version at a time (A/B: per batch)
        return result

    def answer(
        self, triggers: list[Trigger], model: ServingModel, now_ms: float
    ) -> list[Recommendation]:
        """One flagged Recommendation per trigger, in order."""
        items, scores = self.list_for(model)
        out = []
        for t in triggers:
            rec = make_recommendation(t, list(items), list(scores), model.version, now_ms)
            rec.flagged = True
            out.append(rec)
        return out


def merge_in_order(
    flags: list[bool],
    normal_ids: list[str],
    normal: list[Recommendation],
    flagged: list[Recommendation],
) -> list[Recommendation]:
    """The batch's records in trigger order: ``flags[i]`` says whether trigger ``i`` was
    flagged; ``normal`` answers the unflagged triggers (``normal_ids``, their event ids, in
    order) but may lack some (dead-lettered as ``processing_error``), ``flagged`` answers
    every flagged one. One user's records stay in the order of their events."""
    out: list[Recommendation] = []
    f = n = r = 0
    for is_flagged in flags:
        if is_flagged:
            out.append(flagged[f])
            f += 1
            continue
        if r < len(normal) and normal[r].event_id == normal_ids[n]:
            out.append(normal[r])
            r += 1
        n += 1
    return out
