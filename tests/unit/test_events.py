"""Validation of user events: every bad input maps to one dead-letter reason."""

from __future__ import annotations

import orjson
import pytest

from topics.events import EventType, InvalidEvent, Limits, Reason, UserEvent, parse_event

GOOD = {
    "schema_version": 1,
    "event_id": "e1",
    "event_type": "view",
    "user_id": "u1",
    "session_id": "s1",
    "timestamp_ms": 1_700_000_000_000,
    "item_id": "42",
}


def raw(**changes: object) -> bytes:
    obj = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            obj.pop(key)
        else:
            obj[key] = value
    return orjson.dumps(obj)


def test_valid_view_round_trips() -> None:
    event = parse_event(raw())
    assert event.event_type is EventType.VIEW
    assert event.item_id == "42"
    assert parse_event(event.to_bytes()) == event


def test_integer_ids_become_strings() -> None:
    event = parse_event(raw(user_id=7, item_id=81766))
    assert (event.user_id, event.item_id) == ("7", "81766")


def test_search_needs_query_and_keeps_shown_items() -> None:
    event = parse_event(
        raw(event_type="search", item_id=..., query="red shoes", shown_items=[1, "2"])
    )
    assert event.query == "red shoes" and event.shown_items == ["1", "2"]
    with pytest.raises(InvalidEvent) as exc:
        parse_event(raw(event_type="search", item_id=...))
    assert exc.value.reason is Reason.MISSING_FIELD


def test_unknown_fields_are_kept_not_rejected() -> None:
    assert parse_event(raw(campaign="x")).extra == {"campaign": "x"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"event_type": "view"', Reason.MALFORMED_JSON),
        (b"\xff\xfe not utf-8", Reason.MALFORMED_JSON),
        (None, Reason.MALFORMED_JSON),
        (b"[1, 2]", Reason.NOT_AN_OBJECT),
        (raw(user_id=...), Reason.MISSING_FIELD),
        (raw(item_id=...), Reason.MISSING_FIELD),
        (raw(timestamp_ms=...), Reason.MISSING_FIELD),
        (raw(timestamp_ms="yesterday"), Reason.WRONG_TYPE),
        (raw(user_id=["a"]), Reason.WRONG_TYPE),
        (raw(user_id=True), Reason.WRONG_TYPE),
        (raw(event_type="teleport"), Reason.UNKNOWN_EVENT_TYPE),
        (raw(event_type=3), Reason.WRONG_TYPE),
        (raw(schema_version=99), Reason.UNSUPPORTED_SCHEMA_VERSION),
        (raw(timestamp_ms=-5), Reason.INVALID_VALUE),
        (raw(user_id=""), Reason.INVALID_VALUE),
        (raw(event_type="search", item_id=..., query_tokens=["a"]), Reason.WRONG_TYPE),
        (raw(shown_items=list(range(500))), Reason.TOO_MANY_ITEMS),
        (raw(price="free"), Reason.WRONG_TYPE),
        (raw(extra_blob="x" * 20_000), Reason.OVERSIZED),
    ],
)
def test_bad_input_gets_its_reason(payload: bytes | None, reason: Reason) -> None:
    with pytest.raises(InvalidEvent) as exc:
        parse_event(payload)
    assert exc.value.reason is reason
    assert exc.value.detail


def test_nan_timestamp_is_rejected() -> None:
    with pytest.raises(InvalidEvent) as exc:
        parse_event(
            b'{"schema_version":1,"event_id":"e","event_type":"view","user_id":"u",'
            b'"session_id":"s","timestamp_ms":1e400,"item_id":"1"}'
        )
    assert exc.value.reason in (Reason.INVALID_VALUE, Reason.MALFORMED_JSON)


def test_limits_are_configurable() -> None:
    with pytest.raises(InvalidEvent) as exc:
        parse_event(raw(), Limits(max_bytes=10))
    assert exc.value.reason is Reason.OVERSIZED


def test_to_dict_omits_absent_optionals() -> None:
    event = UserEvent("e", EventType.VIEW, "u", "s", 1, item_id="i")
    assert "query" not in event.to_dict()
