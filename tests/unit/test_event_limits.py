"""Input limits of user events (topics/events.py ``Limits``): each one dead-letters with its
reason, each configurable one follows its setting, and the guards the fuzzing asked for."""

from __future__ import annotations

import orjson
import pytest

from stream.anomaly import input_limits
from stream.settings import Settings
from topics.events import MAX_TS_MS, InvalidEvent, Limits, Reason, parse_event

GOOD = {
    "event_id": "e1",
    "event_type": "search",
    "user_id": "u1",
    "session_id": "s1",
    "timestamp_ms": 1_700_000_000_000,
    "query": "red shoes",
}


def raw(**changes: object) -> bytes:
    return orjson.dumps({**GOOD, **changes})


DEFAULT = Limits()


def reason_of(payload: bytes, limits: Limits = DEFAULT, now_ms: float | None = None) -> Reason:
    with pytest.raises(InvalidEvent) as exc:
        parse_event(payload, limits, now_ms)
    assert exc.value.detail
    return exc.value.reason


def test_message_size_limit() -> None:
    payload = raw(padding="x" * 100)
    parse_event(payload, Limits(max_bytes=len(payload)))
    assert reason_of(payload, Limits(max_bytes=len(payload) - 1)) is Reason.OVERSIZED


def test_query_length_limit() -> None:
    parse_event(raw(query="q" * 20), Limits(max_query_chars=20))
    assert reason_of(raw(query="q" * 21), Limits(max_query_chars=20)) is Reason.INVALID_VALUE


@pytest.mark.parametrize("field", ["shown_items", "query_tokens"])
def test_items_per_event_limit(field: str) -> None:
    parse_event(raw(**{field: [1] * 5}), Limits(max_items=5))
    assert reason_of(raw(**{field: [1] * 6}), Limits(max_items=5)) is Reason.TOO_MANY_ITEMS


def test_shown_items_entries_are_ids() -> None:
    assert reason_of(raw(shown_items=["ok", ""])) is Reason.INVALID_VALUE
    assert reason_of(raw(shown_items=["x" * 257])) is Reason.INVALID_VALUE
    assert parse_event(raw(shown_items=["x" * 256, 7])).shown_items == ["x" * 256, "7"]


def test_settings_build_the_limits() -> None:
    s = Settings(
        max_event_bytes=1000, max_query_chars=10, max_items_per_event=3, max_event_future_s=60
    )  # type: ignore[call-arg]
    limits = input_limits(s)
    assert (limits.max_bytes, limits.max_query_chars, limits.max_items) == (1000, 10, 3)
    assert limits.max_future_ms == 60_000
    assert reason_of(raw(query="q" * 11), limits) is Reason.INVALID_VALUE
    assert reason_of(raw(shown_items=[1, 2, 3, 4]), limits) is Reason.TOO_MANY_ITEMS


def test_timestamps_far_ahead_of_the_clock_are_rejected_when_a_clock_is_given() -> None:
    now = 1_700_000_000_000.0
    limits = Limits(max_future_ms=3_600_000)
    parse_event(raw(timestamp_ms=int(now) + 3_600_000), limits, now)
    assert reason_of(raw(timestamp_ms=int(now) + 3_600_001), limits, now) is Reason.INVALID_VALUE
    parse_event(raw(timestamp_ms=MAX_TS_MS), limits)  # no clock: the fixed range only
    parse_event(raw(timestamp_ms=MAX_TS_MS), Limits(), now)  # 0: off
    parse_event(raw(timestamp_ms=0), limits, now)  # the past is fine (replays)


@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [
        (b"-1", Reason.INVALID_VALUE),
        (b"-0.5", Reason.INVALID_VALUE),
        (b"1e400", Reason.MALFORMED_JSON),  # orjson: infinity is not JSON
        (b"NaN", Reason.MALFORMED_JSON),
        (b"123456789012345678901234567890", Reason.INVALID_VALUE),  # parsed as a float
        (b"9223372036854775807", Reason.INVALID_VALUE),
        (b'"1700000000000"', Reason.WRONG_TYPE),
        (b"true", Reason.WRONG_TYPE),
    ],
)
def test_bad_timestamps(timestamp: bytes, reason: Reason) -> None:
    payload = raw(timestamp_ms=0).replace(b'"timestamp_ms":0', b'"timestamp_ms":' + timestamp)
    assert reason_of(payload) is reason


@pytest.mark.parametrize(
    "value",
    [b"1.5", b"1e3", b"123456789012345678901234567890", b"true", b"null", b"[]", b"{}"],
)
def test_non_string_ids_other_than_integers_are_rejected(value: bytes) -> None:
    payload = raw(user_id="X").replace(b'"user_id":"X"', b'"user_id":' + value)
    assert reason_of(payload) in (Reason.WRONG_TYPE, Reason.MISSING_FIELD)


def test_huge_integers_in_integer_fields_are_the_wrong_type() -> None:
    big = b"123456789012345678901234567890"
    assert reason_of(raw(quantity=1).replace(b'"quantity":1', b'"quantity":' + big)) is (
        Reason.WRONG_TYPE
    )
    tokens = raw(query_tokens=[1]).replace(b'"query_tokens":[1]', b'"query_tokens":[' + big + b"]")
    assert reason_of(tokens) is Reason.WRONG_TYPE


def test_deep_nesting_in_an_unknown_field_is_rejected() -> None:
    limits = Limits(max_depth=4)
    parse_event(raw(x=[[[[1]]]]), limits)  # four levels
    assert reason_of(raw(x=[[[[[1]]]]]), limits) is Reason.INVALID_VALUE
    assert reason_of(raw(x={"a": {"b": {"c": {"d": {}}}}}), limits) is Reason.INVALID_VALUE
    # as deep as the parser allows: rejected, without recursion
    deep = raw(x=0).replace(b'"x":0', b'"x":' + b"[" * 1000 + b"]" * 1000)
    assert reason_of(deep) is Reason.INVALID_VALUE
    # deeper than orjson's own limit (1024): not JSON to it
    deeper = raw(x=0).replace(b'"x":0', b'"x":' + b"[" * 2000 + b"]" * 2000)
    assert reason_of(deeper, Limits(max_bytes=100_000)) is Reason.MALFORMED_JSON


def test_unknown_containers_are_not_kept() -> None:
    """A message of empty containers would parse into many Python objects per byte: the
    consumers that keep events keep only the known fields and unknown scalars."""
    event = parse_event(raw(campaign="x", junk=[[]] * 1000, obj={"a": 1}))
    assert event.extra == {"campaign": "x"}


def test_duplicate_keys_last_one_wins() -> None:
    """orjson keeps the last of repeated keys, as JSON Schema validators (on the parsed
    object) see it; documented in docs/events.md."""
    payload = raw(user_id="first").replace(b'"user_id":"first"', b'"user_id":"a","user_id":"b"')
    assert parse_event(payload).user_id == "b"
    dup_bad = raw(user_id="x").replace(b'"user_id":"x"', b'"user_id":"a","user_id":true')
    assert reason_of(dup_bad) is Reason.WRONG_TYPE


@pytest.mark.parametrize(
    "payload",
    [b'{"event_id": "\xff"}', b'{"event_id": "\\ud800"}', b"\xef\xbb\xbf{}", b"{} trailing"],
)
def test_invalid_utf8_surrogates_bom_and_trailing_data_are_malformed(payload: bytes) -> None:
    assert reason_of(payload) is Reason.MALFORMED_JSON
