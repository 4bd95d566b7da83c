"""Item catalogue records (topic ``item-catalogue``) and their validation.

Producers publish one JSON object per item update, keyed by ``item_id``; a later record of the
same item replaces the earlier one (its title is embedded again). The worker embeds titles for
search and for the cold start of items the model bundle has never seen. ``parse_catalogue_item``
is hand-written like ``topics.events.parse_event`` and raises the same ``InvalidEvent`` with a
dead-letter ``Reason``; ``topics/schemas/catalogue-item.schema.json`` states the same contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from topics.events import InvalidEvent, Reason, parse_record

SCHEMA_VERSION = 1
MAX_TS_MS = 32_503_680_000_000  # year 3000, as for events


@dataclass(frozen=True, slots=True)
class CatalogueLimits:
    """Input limits enforced by ``parse_catalogue_item`` (anything larger is dead-lettered)."""

    max_bytes: int = 16_384
    max_id_chars: int = 256
    max_title_chars: int = 1_000
    max_category_chars: int = 256


@dataclass(slots=True)
class CatalogueItem:
    """One validated catalogue record.

    ``title`` is the text that is embedded (leading and trailing whitespace stripped, never
    empty). ``timestamp_ms`` is when
    the producer saw this version of the item, ms since the Unix epoch.
    """

    item_id: str
    title: str
    timestamp_ms: int
    category: str | None = None
    price: float | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "item_id": self.item_id,
            "title": self.title,
            "timestamp_ms": self.timestamp_ms,
        }
        if self.category is not None:
            out["category"] = self.category
        if self.price is not None:
            out["price"] = self.price
        return out

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())


KNOWN_FIELDS = frozenset(
    {"schema_version", "item_id", "title", "timestamp_ms", "category", "price"}
)


def _text(obj: dict[str, Any], name: str, max_chars: int, *, required: bool) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidEvent(Reason.MISSING_FIELD, f"'{name}' is required")
        return None
    if not isinstance(value, str):
        raise InvalidEvent(
            Reason.WRONG_TYPE, f"'{name}' must be a string, got {type(value).__name__}"
        )
    text = value.strip()
    if not text or len(value) > max_chars:
        raise InvalidEvent(
            Reason.INVALID_VALUE,
            f"'{name}' must have 1..{max_chars} characters, not all whitespace",
        )
    return text


def parse_catalogue_item(
    raw: bytes | None, limits: CatalogueLimits = CatalogueLimits()
) -> CatalogueItem:
    """Validate one Kafka message value of ``item-catalogue`` and return its item.

    Raises ``InvalidEvent`` (never anything else) for bad input. Checks in order: size, JSON
    syntax, object, ``schema_version``, ``item_id``, ``title``, ``timestamp_ms``,
    ``category``, ``price``. Unknown fields are ignored.
    """
    obj = parse_record(raw, limits.max_bytes)

    item = obj.get("item_id")
    if item is None:
        raise InvalidEvent(Reason.MISSING_FIELD, "'item_id' is required")
    if isinstance(item, bool) or not isinstance(item, str | int):
        raise InvalidEvent(
            Reason.WRONG_TYPE, f"'item_id' must be a string, got {type(item).__name__}"
        )
    item_id = str(item)
    if not item_id or len(item_id) > limits.max_id_chars:
        raise InvalidEvent(
            Reason.INVALID_VALUE, f"'item_id' must have 1..{limits.max_id_chars} characters"
        )
    title = _text(obj, "title", limits.max_title_chars, required=True)
    assert title is not None

    if obj.get("timestamp_ms") is None:
        raise InvalidEvent(Reason.MISSING_FIELD, "'timestamp_ms' is required")
    ts = obj["timestamp_ms"]
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise InvalidEvent(Reason.WRONG_TYPE, "'timestamp_ms' must be a number")
    if not math.isfinite(ts) or ts < 0 or ts > MAX_TS_MS:
        raise InvalidEvent(Reason.INVALID_VALUE, f"timestamp_ms {ts!r} out of range")

    category = _text(obj, "category", limits.max_category_chars, required=False)
    price = obj.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float):
            raise InvalidEvent(Reason.WRONG_TYPE, "'price' must be a number")
        if not math.isfinite(price) or price < 0:
            raise InvalidEvent(Reason.INVALID_VALUE, f"price {price!r} must be finite and >= 0")
    return CatalogueItem(
        item_id=item_id,
        title=title,
        timestamp_ms=int(ts),
        category=category,
        price=float(price) if price is not None else None,
    )
