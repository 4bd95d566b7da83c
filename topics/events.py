"""User event records and their validation.

Producers publish one JSON object per Kafka message to ``user-events``, keyed by ``user_id``.
``parse_event`` turns raw bytes into a ``UserEvent`` or raises ``InvalidEvent`` with a
machine-readable ``reason`` (the dead-letter reason) and a human-readable ``detail``.
Validation is hand-written rather than schema-driven because it runs on every event of the
hot path; ``topics/schemas/user-event.schema.json`` states the same contract for producers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

SCHEMA_VERSION = 1


class EventType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    SEARCH = "search"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    # Feedback, not a trigger: the items a user was shown (e.g. a recommendation list). The
    # worker answers no Recommendation to it; it counts impressions and clicks (CTR).
    IMPRESSION = "impression"


ITEM_EVENTS = frozenset(
    {EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE}
)


class Reason(StrEnum):
    """Why an event was dead-lettered; the values are metric labels and DeadLetter reasons."""

    OVERSIZED = "oversized"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    INVALID_VALUE = "invalid_value"
    TOO_MANY_ITEMS = "too_many_items"
    PROCESSING_ERROR = "processing_error"  # valid, but the pipeline failed on it (a bug)


class InvalidEvent(ValueError):
    """An event that cannot be processed; carries the dead-letter reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# Timestamps are accepted up to here (year 3000) whatever the clock says.
MAX_TS_MS = 32_503_680_000_000


@dataclass(frozen=True, slots=True)
class Limits:
    """Input limits enforced by ``parse_event`` (anything larger is dead-lettered).

    max_bytes:       the whole message value (``STREAMREC_MAX_EVENT_BYTES``), checked first
    max_id_chars:    each id, ``shown_items`` entries included
    max_query_chars: ``query`` (``STREAMREC_MAX_QUERY_CHARS``)
    max_items:       entries of ``shown_items`` and of ``query_tokens``
                     (``STREAMREC_MAX_ITEMS_PER_EVENT``)
    max_depth:       nesting of an unknown field's value (a scalar is depth 0): unknown
                     fields are ignored, and deep ones only cost parsing time
    max_future_ms:   how far ``timestamp_ms`` may run ahead of the worker's clock
                     (``STREAMREC_MAX_EVENT_FUTURE_S``), checked only when ``parse_event`` is
                     given ``now_ms``; 0 = not checked. Online co-visitation and trending
                     decay by event time (features/online_covisit.py), so one event stamped
                     in the far future would outweigh every present one for as long as its
                     timestamp stays ahead of the stream: a cheap way to pin an item on top.
    """

    max_bytes: int = 16_384
    max_id_chars: int = 256
    max_query_chars: int = 512
    max_items: int = 200
    max_depth: int = 32
    max_future_ms: float = 0.0


@dataclass(slots=True)
class UserEvent:
    """One validated user event.

    ``timestamp_ms`` is the event time in milliseconds since the Unix epoch, as the producer
    saw it. ``item_id`` is set for item events (view/click/add_to_cart/purchase) and absent
    for searches; ``query`` / ``query_tokens`` / ``shown_items`` belong to searches;
    impressions carry ``shown_items`` and may name the ``recommendation_id`` (the event_id of
    the Recommendation they showed). ``extra`` holds the unknown fields whose values are
    scalars (unknown arrays and objects are validated, then dropped); nothing reads it.
    """

    event_id: str
    event_type: EventType
    user_id: str
    session_id: str
    timestamp_ms: int
    item_id: str | None = None
    query: str | None = None
    query_tokens: list[int] | None = None
    shown_items: list[str] | None = None
    quantity: int | None = None
    price: float | None = None
    recommendation_id: str | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "event_id": self.event_id,
            "event_type": self.event_type.value,
            "user_id": self.user_id,
            "session_id": self.session_id,
            "timestamp_ms": self.timestamp_ms,
        }
        for name in ("item_id", "query", "query_tokens", "shown_items", "quantity", "price",
                     "recommendation_id"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())


_KNOWN_FIELDS = frozenset(
    {
        "schema_version", "event_id", "event_type", "user_id", "session_id", "timestamp_ms",
        "item_id", "query", "query_tokens", "shown_items", "quantity", "price",
        "recommendation_id",
    }
)  # fmt: skip


def _require_id(obj: dict[str, Any], name: str, limits: Limits) -> str:
    if name not in obj or obj[name] is None:
        raise InvalidEvent(Reason.MISSING_FIELD, f"'{name}' is required")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent(
            Reason.WRONG_TYPE, f"'{name}' must be a string, got {type(value).__name__}"
        )
    text = str(value)
    if not text or len(text) > limits.max_id_chars:
        raise InvalidEvent(
            Reason.INVALID_VALUE, f"'{name}' must have 1..{limits.max_id_chars} characters"
        )
    return text


def _optional_int(obj: dict[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(Reason.WRONG_TYPE, f"'{name}' must be an integer")
    return value


def parse_record(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    """The envelope every input record shares: a non-null value of at most ``max_bytes``
    that is one JSON object of a supported ``schema_version``. Returns the object; raises
    ``InvalidEvent`` with the reason otherwise. Used by ``parse_event`` and by the catalogue
    (topics/catalogue.py)."""
    if raw is None:
        raise InvalidEvent(Reason.MALFORMED_JSON, "empty message (null value)")
    if len(raw) > max_bytes:
        raise InvalidEvent(Reason.OVERSIZED, f"{len(raw)} bytes > limit {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(Reason.MALFORMED_JSON, str(exc)[:200]) from exc
    if not isinstance(obj, dict):
        raise InvalidEvent(
            Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}"
        )
    version = obj.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise InvalidEvent(Reason.UNSUPPORTED_SCHEMA_VERSION, f"schema_version {version!r}")
    return obj


def _too_deep(value: Any, max_depth: int) -> bool:
    """Whether ``value`` (parsed JSON) nests containers deeper than ``max_depth`` levels; an
    explicit stack, so a value as deep as orjson allows (1024) cannot exhaust recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth + 1 > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_event(
    raw: bytes | None, limits: Limits = Limits(), now_ms: float | None = None
) -> UserEvent:
    """Validate one Kafka message value and return the event it carries.

    Raises ``InvalidEvent`` (never anything else) for bad input, so the caller can dead-letter
    the message with ``exc.reason`` and go on. ``now_ms`` (the consumer's wall clock, ms) also
    rejects timestamps more than ``limits.max_future_ms`` ahead of it; None checks only the
    fixed range (offline tools read old files with any clock).
    """
    obj = parse_record(raw, limits.max_bytes)

    if "event_type" not in obj:
        raise InvalidEvent(Reason.MISSING_FIELD, "'event_type' is required")
    kind = obj["event_type"]
    if not isinstance(kind, str):
        raise InvalidEvent(Reason.WRONG_TYPE, "'event_type' must be a string")
    try:
        event_type = EventType(kind)
    except ValueError as exc:
        raise InvalidEvent(Reason.UNKNOWN_EVENT_TYPE, f"event_type {kind[:64]!r}") from exc

    event_id = _require_id(obj, "event_id", limits)
    user_id = _require_id(obj, "user_id", limits)
    session_id = _require_id(obj, "session_id", limits)

    if "timestamp_ms" not in obj:
        raise InvalidEvent(Reason.MISSING_FIELD, "'timestamp_ms' is required")
    ts = obj["timestamp_ms"]
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise InvalidEvent(Reason.WRONG_TYPE, "'timestamp_ms' must be a number")
    if not math.isfinite(ts) or ts < 0 or ts > MAX_TS_MS:
        raise InvalidEvent(Reason.INVALID_VALUE, f"timestamp_ms {ts!r} out of range")
    if now_ms is not None and limits.max_future_ms > 0 and ts > now_ms + limits.max_future_ms:
        raise InvalidEvent(
            Reason.INVALID_VALUE,
            f"timestamp_ms {ts!r} is {(ts - now_ms) / 1000:.0f} s ahead of the worker's clock "
            f"(limit {limits.max_future_ms / 1000:.0f} s)",
        )

    item_id: str | None = None
    if event_type in ITEM_EVENTS or obj.get("item_id") is not None:
        item_id = _require_id(obj, "item_id", limits)

    query = obj.get("query")
    if query is not None:
        if not isinstance(query, str):
            raise InvalidEvent(Reason.WRONG_TYPE, "'query' must be a string")
        if len(query) > limits.max_query_chars:
            raise InvalidEvent(
                Reason.INVALID_VALUE, f"query longer than {limits.max_query_chars} characters"
            )
    tokens = obj.get("query_tokens")
    if tokens is not None:
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise InvalidEvent(Reason.WRONG_TYPE, "'query_tokens' must be a list of integers")
        if len(tokens) > limits.max_items:
            raise InvalidEvent(Reason.TOO_MANY_ITEMS, f"{len(tokens)} query tokens")
    if event_type is EventType.SEARCH and not query and not tokens:
        raise InvalidEvent(Reason.MISSING_FIELD, "a search needs 'query' or 'query_tokens'")

    shown = obj.get("shown_items")
    if shown is not None:
        if not isinstance(shown, list):
            raise InvalidEvent(Reason.WRONG_TYPE, "'shown_items' must be a list")
        if len(shown) > limits.max_items:
            raise InvalidEvent(Reason.TOO_MANY_ITEMS, f"{len(shown)} shown items")
        if not all(isinstance(s, str | int) and not isinstance(s, bool) for s in shown):
            raise InvalidEvent(Reason.WRONG_TYPE, "'shown_items' must hold item ids")
        shown = [str(s) for s in shown]
        if not all(0 < len(s) <= limits.max_id_chars for s in shown):
            raise InvalidEvent(
                Reason.INVALID_VALUE,
                f"'shown_items' entries must have 1..{limits.max_id_chars} characters",
            )
    if event_type is EventType.IMPRESSION and not shown:
        raise InvalidEvent(Reason.MISSING_FIELD, "an impression needs non-empty 'shown_items'")
    recommendation_id = None
    if obj.get("recommendation_id") is not None:
        recommendation_id = _require_id(obj, "recommendation_id", limits)

    quantity = _optional_int(obj, "quantity")
    price = obj.get("price")
    if price is not None and (
        isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price)
    ):
        raise InvalidEvent(Reason.WRONG_TYPE, "'price' must be a finite number")

    # Unknown fields: containers are checked for depth and dropped, scalars kept. Nothing
    # reads them, and a 16 KiB message of empty containers parses into ~340 KiB of Python
    # objects, which consumers that keep events (the training agent's window) would hold.
    extra: dict[str, Any] = {}
    for k, v in obj.items():
        if k in _KNOWN_FIELDS:
            continue
        if isinstance(v, dict | list):
            if _too_deep(v, limits.max_depth):
                raise InvalidEvent(
                    Reason.INVALID_VALUE,
                    f"unknown field {k[:64]!r} nests deeper than {limits.max_depth} levels",
                )
            continue
        extra[k] = v
    return UserEvent(
        event_id=event_id,
        event_type=event_type,
        user_id=user_id,
        session_id=session_id,
        timestamp_ms=int(ts),
        item_id=item_id,
        query=query,
        query_tokens=tokens,
        shown_items=shown,
        quantity=quantity,
        price=float(price) if price is not None else None,
        recommendation_id=recommendation_id,
        extra=extra,
    )
