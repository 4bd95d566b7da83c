"""Hypothesis strategies for user-event messages: valid ones, and bad ones that must be
dead-lettered, each bad one tagged with the defect it was built with.

Every bad message is bad *by construction* (a defect the contract in docs/events.md rejects,
applied to an otherwise valid event), so a test can require that ``parse_event`` rejects all
of them. Unknown fields are not a defect (the contract accepts and ignores them): they are
sprinkled over valid events, and over bad ones, where they must not rescue the message.

Used by tests/unit/test_events_fuzz.py (properties of ``parse_event``) and by
tests/faults/test_fuzz.py (10,000 of them through a real worker).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import strategies as st

from topics.events import MAX_TS_MS, EventType, Limits

LIMITS = Limits()
ITEM_TYPES = ("view", "click", "add_to_cart", "purchase")
KNOWN_FIELDS = (
    "schema_version", "event_id", "event_type", "user_id", "session_id", "timestamp_ms",
    "item_id", "query", "query_tokens", "shown_items", "quantity", "price", "recommendation_id",
)  # fmt: skip
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def id_values(max_chars: int) -> st.SearchStrategy[str | int]:
    return st.one_of(
        st.text(min_size=1, max_size=max_chars), st.integers(min_value=0, max_value=2**63 - 1)
    )


ids = id_values(LIMITS.max_id_chars)
short_ids = id_values(16)
timestamps = st.one_of(
    st.integers(min_value=0, max_value=MAX_TS_MS),
    st.floats(min_value=0, max_value=2e12, allow_nan=False, allow_infinity=False),
)
# JSON values for unknown fields: shallow, small.
json_values = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip
unknown_names = st.text(min_size=1, max_size=12).filter(lambda n: n not in KNOWN_FIELDS)


@st.composite
def valid_event_dicts(draw: st.DrawFn, small: bool = False) -> dict[str, Any]:
    """A valid event as a dict: any type, optional fields, unknown fields. ``small``: short
    ids, queries and lists, the cheap base of the bad messages (hypothesis draws text one
    character at a time, and 10,000 bases at full length take minutes)."""
    ids = short_ids if small else globals()["ids"]
    max_query = 32 if small else LIMITS.max_query_chars
    max_list = 5 if small else 20
    kind = draw(st.sampled_from([t.value for t in EventType]))
    obj: dict[str, Any] = {
        "event_id": draw(ids),
        "event_type": kind,
        "user_id": draw(ids),
        "session_id": draw(ids),
        "timestamp_ms": draw(timestamps),
    }
    if draw(st.booleans()):
        obj["schema_version"] = 1
    if kind in ITEM_TYPES:
        obj["item_id"] = draw(ids)
        if draw(st.booleans()):
            obj["quantity"] = draw(st.integers(min_value=1, max_value=100))
            obj["price"] = draw(st.floats(min_value=0, max_value=1e6, allow_nan=False))
    elif kind == "search":
        if draw(st.booleans()):
            obj["query"] = draw(st.text(min_size=1, max_size=max_query))
        else:
            obj["query_tokens"] = draw(st.lists(INT64, min_size=1, max_size=max_list))
    if kind == "impression" or draw(st.booleans()):
        obj["shown_items"] = draw(st.lists(ids, min_size=1, max_size=max_list))
    if kind == "impression" and draw(st.booleans()):
        obj["recommendation_id"] = draw(ids)
    obj.update(draw(st.dictionaries(unknown_names, json_values, max_size=3)))
    return obj


def encode(obj: Any) -> bytes:
    """Compact UTF-8 JSON; the stdlib encoder, which (unlike orjson) writes integers beyond
    64 bits, so those reach the parser too."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


valid_messages = valid_event_dicts().map(encode).filter(lambda b: len(b) <= LIMITS.max_bytes)
bases = valid_event_dicts(small=True)


# ----------------------------------------------------------------------------- defects
# Each returns (defect name, message value) for a message that must be rejected.

WRONG_TYPES: dict[str, st.SearchStrategy[Any]] = {
    # floats are never ids, not even 1.0 (NaN and infinities would encode as null)
    "event_id": st.one_of(st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                          st.lists(st.integers(), max_size=2),
                          st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
    "user_id": st.one_of(st.booleans(), st.just(1.5), st.just([1]), st.just({"id": 1})),
    "session_id": st.one_of(st.booleans(), st.just(-0.25), st.just(["s"])),
    "event_type": st.one_of(st.integers(), st.booleans(), st.lists(st.just("view"), max_size=2)),
    "timestamp_ms": st.one_of(st.text(max_size=15), st.booleans(), st.just([1]), st.just({})),
    "item_id": st.one_of(st.booleans(), st.just(2.5), st.just(["i"]), st.just({"i": 1})),
    "query_tokens": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=3), min_size=1,
                              max_size=3), st.just([1.5]), st.just([True])),
    "shown_items": st.one_of(st.text(max_size=5), st.integers(), st.just([None]),
                             st.just([1.5]), st.just([["a"]])),
    "quantity": st.one_of(st.text(max_size=3), st.just(1.5), st.booleans(), st.just([1])),
    "price": st.one_of(st.text(max_size=3), st.booleans(), st.just([9.99])),
}  # fmt: skip


@st.composite
def wrong_type(draw: st.DrawFn) -> tuple[str, bytes]:
    obj = draw(bases)
    name = draw(st.sampled_from(sorted(WRONG_TYPES)))
    if name == "query_tokens":
        obj["event_type"] = "search"
        obj.pop("query", None)
    if name == "item_id":
        obj["event_type"] = draw(st.sampled_from(ITEM_TYPES))
    obj[name] = draw(WRONG_TYPES[name])
    return "wrong_type", encode(obj)


@st.composite
def missing_field(draw: st.DrawFn) -> tuple[str, bytes]:
    obj = draw(bases)
    required = ["event_id", "event_type", "user_id", "session_id", "timestamp_ms"]
    if obj["event_type"] in ITEM_TYPES:
        required.append("item_id")
    name = draw(st.sampled_from(required))
    if draw(st.booleans()):
        obj.pop(name)
    else:
        obj[name] = None
    return "missing_field", encode(obj)


@st.composite
def truncated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid message cut anywhere before its closing brace: never a complete object."""
    raw = encode(draw(bases))
    cut = draw(st.integers(min_value=0, max_value=len(raw) - 1))
    return "truncated_json", raw[:cut]


@st.composite
def huge_string(draw: st.DrawFn) -> tuple[str, bytes]:
    obj = draw(bases)
    where = draw(st.sampled_from(["event_id", "user_id", "session_id", "query", "padding"]))
    if where == "query":
        obj["event_type"] = "search"
        obj["query"] = "q" * draw(st.integers(LIMITS.max_query_chars + 1, 8 * 1024))
    elif where == "padding":  # an unknown field that pushes the message over the size limit
        obj["padding"] = "p" * draw(st.integers(LIMITS.max_bytes, 4 * LIMITS.max_bytes))
    else:
        obj[where] = draw(st.sampled_from("xé€😀")) * draw(
            st.integers(LIMITS.max_id_chars + 1, 2 * 1024)
        )
    return "huge_string", encode(obj)


@st.composite
def too_many_items(draw: st.DrawFn) -> tuple[str, bytes]:
    obj = draw(bases)
    n = draw(st.integers(LIMITS.max_items + 1, 3 * LIMITS.max_items))
    if draw(st.booleans()):
        obj["shown_items"] = [str(i) for i in range(n)]
    else:
        obj["event_type"] = "search"
        obj["query_tokens"] = list(range(n))
    return "too_many_items", encode(obj)


@st.composite
def deep_nesting(draw: st.DrawFn) -> tuple[str, bytes]:
    """Arrays or objects nested past the depth limit (up to past orjson's own 1024), in an
    unknown field or in a known one."""
    obj = draw(bases)
    depth = draw(st.integers(LIMITS.max_depth + 1, 1500))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    field = draw(st.sampled_from(["nested", "user_id", "shown_items", "price"]))
    obj[field] = "@@"
    inner = opener * depth + b"0" + closer * depth
    if opener == b"[":
        inner = opener * depth + closer * depth
    return "deep_nesting", encode(obj).replace(b'"@@"', inner, 1)


INVALID_UTF8 = [b"\xff", b"\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xed\xa0\x80",
                b"\xf0\x28\x8c\x28", b"\xc0\xaf", b"\x80"]  # fmt: skip


@st.composite
def invalid_utf8(draw: st.DrawFn) -> tuple[str, bytes]:
    """Invalid UTF-8 bytes (or a lone surrogate escape) inside a string value, or a BOM."""
    obj = draw(bases)
    name = draw(st.sampled_from(["event_id", "user_id", "session_id", "nickname"]))
    obj[name] = "@@"
    bad = draw(st.sampled_from([*INVALID_UTF8, b"\\ud800", b"\\udfff"]))
    raw = encode(obj).replace(b'"@@"', b'"x' + bad + b'y"', 1)
    if draw(st.integers(0, 9)) == 0:
        raw = b"\xef\xbb\xbf" + encode(obj).replace(b'"@@"', b'"ok"')  # byte order mark
    return "invalid_utf8", raw


@st.composite
def bad_timestamp(draw: st.DrawFn) -> tuple[str, bytes]:
    obj = draw(bases)
    obj["timestamp_ms"] = "@@"
    literal = draw(
        st.one_of(
            st.sampled_from([b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"]),
            st.integers(min_value=-(2**70), max_value=-1).map(lambda i: str(i).encode()),
            st.floats(max_value=-1e-9, allow_infinity=False).map(lambda f: repr(f).encode()),
            st.integers(min_value=MAX_TS_MS + 1, max_value=2**80).map(lambda i: str(i).encode()),
        )
    )
    return "bad_timestamp", encode(obj).replace(b'"@@"', literal, 1)


@st.composite
def unknown_event_type(draw: st.DrawFn) -> tuple[str, bytes]:
    obj = draw(bases)
    known = {t.value for t in EventType}
    obj["event_type"] = draw(st.text(max_size=30).filter(lambda s: s not in known))
    return "unknown_event_type", encode(obj)


@st.composite
def not_an_object(draw: st.DrawFn) -> tuple[str, bytes]:
    value = draw(st.one_of(json_values.filter(lambda v: not isinstance(v, dict)),
                           st.lists(bases, min_size=1, max_size=2)))  # fmt: skip
    return "not_an_object", encode(value)


@st.composite
def bad_schema_version(draw: st.DrawFn) -> tuple[str, bytes]:
    obj = draw(bases)
    obj["schema_version"] = draw(
        st.one_of(st.integers().filter(lambda v: v != 1), st.just("1"), st.just(1.5),
                  st.booleans(), st.just([1]))
    )  # fmt: skip
    return "bad_schema_version", encode(obj)


@st.composite
def garbage(draw: st.DrawFn) -> tuple[str, bytes]:
    """Random bytes that do not start a JSON object (so they cannot be one)."""
    raw = draw(st.binary(max_size=200))
    return "garbage", b"\x00" + raw if raw.lstrip()[:1] in (b"{", b"") else raw


DEFECTS: dict[str, st.SearchStrategy[tuple[str, bytes]]] = {
    "truncated_json": truncated(),
    "wrong_type": wrong_type(),
    "missing_field": missing_field(),
    "huge_string": huge_string(),
    "too_many_items": too_many_items(),
    "deep_nesting": deep_nesting(),
    "invalid_utf8": invalid_utf8(),
    "bad_timestamp": bad_timestamp(),
    "unknown_event_type": unknown_event_type(),
    "not_an_object": not_an_object(),
    "bad_schema_version": bad_schema_version(),
    "garbage": garbage(),
}
bad_messages: st.SearchStrategy[tuple[str, bytes]] = st.one_of(*DEFECTS.values())


def collect_bad_messages(n: int) -> list[tuple[str, bytes]]:
    """``n`` bad messages, an equal share of each defect family (one hypothesis run each),
    interleaved: hypothesis with a derandomised generator (seeded from the test body, not the
    clock), generate phase only, no example database, so a fresh process gets the same ones
    every run. ``.example()`` is not for this: it is random and slow."""
    from hypothesis import HealthCheck, Phase, given, settings

    families: list[list[tuple[str, bytes]]] = []
    for i, strategy in enumerate(DEFECTS.values()):
        share = n // len(DEFECTS) + (i < n % len(DEFECTS))
        families.append([])

        @settings(max_examples=share, derandomize=True, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                  deadline=None)  # fmt: skip
        @given(strategy)
        def gather(message: tuple[str, bytes]) -> None:
            families[-1].append(message)

        gather()
        families[-1] = families[-1][:share]
    mixed = [m for row in itertools.zip_longest(*families) for m in row if m is not None]
    return mixed[:n]
