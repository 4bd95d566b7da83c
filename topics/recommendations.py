"""The Recommendation record published to ``recommendations`` (keyed by ``user_id``).

One record answers one trigger event. ``event_id`` is the trigger's id, so a consumer can
de-duplicate under at-least-once delivery. ``latency_ms`` is trigger-to-publish: from the
trigger's Kafka record timestamp (when the producer sent it) to ``produced_at_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

SCHEMA_VERSION = 1


@dataclass(slots=True)
class Recommendation:
    user_id: str
    session_id: str
    event_id: str
    kind: str  # "recommend" for item events, "search" for search events
    items: list[str]
    scores: list[float]
    model_version: str
    produced_at_ms: int
    trigger_timestamp_ms: int
    latency_ms: float
    schema_version: int = SCHEMA_VERSION
    # The A/B arm that served it (models/ab.py); absent when no split is configured.
    arm: str | None = None
    # True when the trigger's user, session or item was flagged as anomalous traffic
    # (features/traffic.py): a non-personalised list, and the event changed no state.
    # Absent (False) otherwise.
    flagged: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema_version": self.schema_version,
            "user_id": self.user_id,
            "session_id": self.session_id,
            "event_id": self.event_id,
            "kind": self.kind,
            "items": self.items,
            "scores": self.scores,
            "model_version": self.model_version,
            "produced_at_ms": self.produced_at_ms,
            "trigger_timestamp_ms": self.trigger_timestamp_ms,
            "latency_ms": self.latency_ms,
        }
        if self.arm is not None:
            out["arm"] = self.arm
        if self.flagged:
            out["flagged"] = True
        return out

    @classmethod
    def from_bytes(cls, raw: bytes) -> Recommendation:
        """Parse a record; fields added by later schema versions are ignored."""
        obj = orjson.loads(raw)
        return cls(**{name: obj[name] for name in _FIELDS if name in obj})


_FIELDS = tuple(Recommendation.__dataclass_fields__)


def encode_recommendations(recs: list[Recommendation]) -> list[bytes]:
    """Serialise a batch of records (one Kafka message value each)."""
    dumps = orjson.dumps
    return [dumps(r.to_dict()) for r in recs]
