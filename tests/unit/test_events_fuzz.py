"""Properties of ``parse_event`` under fuzzing (strategies in tests/fuzz_strategies.py):
whatever the bytes, it returns a valid ``UserEvent`` or raises ``InvalidEvent`` with a
reason and a detail, never anything else; every valid event is accepted; every message
built with a defect is rejected."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_strategies import DEFECTS, bad_messages, collect_bad_messages, valid_messages
from topics.events import ITEM_EVENTS, EventType, InvalidEvent, Limits, Reason, parse_event

LIMITS = Limits()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                HealthCheck.data_too_large, HealthCheck.large_base_example])  # fmt: skip


def outcome(raw: bytes | None) -> Reason | None:
    """None for an accepted event (checked to be a valid one), else the reason; any other
    exception fails the test."""
    try:
        event = parse_event(raw, LIMITS)
    except InvalidEvent as exc:
        assert isinstance(exc.reason, Reason) and exc.detail
        return exc.reason
    assert event.event_id and event.user_id and event.session_id
    assert all(0 < len(x) <= LIMITS.max_id_chars for x in (event.event_id, event.user_id,
                                                             event.session_id))  # fmt: skip
    assert event.timestamp_ms >= 0
    assert (event.item_id is not None) or event.event_type not in ITEM_EVENTS
    if event.event_type is EventType.SEARCH:
        assert event.query or event.query_tokens
    assert len(event.shown_items or ()) <= LIMITS.max_items
    assert len(event.query or "") <= LIMITS.max_query_chars
    assert parse_event(event.to_bytes(), LIMITS).to_dict() == event.to_dict()  # round trip
    return None


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes_give_an_event_or_a_reason(raw: bytes) -> None:
    outcome(raw)


@FUZZ
@given(valid_messages)
def test_valid_events_are_accepted(raw: bytes) -> None:
    assert outcome(raw) is None, orjson.loads(raw)


@FUZZ
@given(bad_messages)
def test_bad_messages_are_rejected_with_a_reason(message: tuple[str, bytes]) -> None:
    defect, raw = message
    assert outcome(raw) is not None, (defect, raw[:300])


@FUZZ
@given(valid_messages, st.data())
def test_mutated_valid_messages_never_raise_anything_else(raw: bytes, data: st.DataObject) -> None:
    """Byte-level damage to a valid message: flipped, dropped or inserted bytes."""
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        op = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if op == "flip" and buf:
            buf[at] ^= data.draw(st.integers(1, 255))
        elif op == "drop" and buf:
            del buf[at]
        else:
            buf.insert(at, data.draw(st.integers(0, 255)))
    outcome(bytes(buf))


def test_every_defect_is_generated_and_rejected_deterministically() -> None:
    """The generator of the 10,000-message fault test: deterministic, covers every defect."""
    first = collect_bad_messages(600)
    assert first == collect_bad_messages(600)
    assert {d for d, _ in first} == set(DEFECTS)
    assert all(outcome(raw) is not None for _, raw in first)
