"""The published JSON Schemas (topics/schemas/*.json) against the code they describe.

Always: each schema loads from the installed package data, is draft 2020-12, and its field
lists, enums and limits equal the dataclasses, enums and ``Limits`` of topics/, so the
schemas cannot drift from the code. With ``jsonschema`` importable (the ``dev`` extra), also:
the schemas are valid, and ``parse_event`` accepts exactly the events the user-event schema
accepts, over a sweep of mutated events (``parse_catalogue_item`` and the catalogue-item
schema likewise). docs/events.md is checked too: its dead-letter examples give the reason they
claim, and its topic table matches topics/names.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest

from topics import catalogue, dead_letter, events, recommendations
from topics.catalogue import CatalogueItem, CatalogueLimits, parse_catalogue_item
from topics.dead_letter import DeadLetter
from topics.events import (
    ITEM_EVENTS,
    EventType,
    InvalidEvent,
    Limits,
    Reason,
    UserEvent,
    parse_event,
)
from topics.names import ALL_TOPICS
from topics.recommendations import Recommendation

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILES = (
    "user-event.schema.json",
    "recommendation.schema.json",
    "dead-letter.schema.json",
    "catalogue-item.schema.json",
)
# Dead-letter reasons outside topics.events.Reason (none: processing_error is a Reason too).
EXTRA_DEAD_LETTER_REASONS: set[str] = set()
EVENTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def load(name: str) -> dict[str, Any]:
    text = resources.files("topics.schemas").joinpath(name).read_text(encoding="utf-8")
    schema = json.loads(text)
    assert isinstance(schema, dict)
    return schema


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/...``)."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = schema
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def branches(schema: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of an ``anyOf`` (resolved), or the node itself."""
    node = resolve(schema, node)
    if "anyOf" in node:
        return [resolve(schema, b) for b in node["anyOf"]]
    return [node]


def json_types(schema: dict[str, Any], node: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for b in branches(schema, node):
        t = b.get("type")
        out |= {t} if isinstance(t, str) else set(t or ())
        if "const" in b:
            out.add(type_name(b["const"]))
    return out


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def assert_types(schema: dict[str, Any], record: dict[str, Any]) -> None:
    """A small structural check that needs no validator: keys and JSON types."""
    props = schema["properties"]
    assert set(record) <= set(props)
    assert set(schema["required"]) <= set(record)
    for key, value in record.items():
        allowed = json_types(schema, props[key])
        got = type_name(value)
        ok = got in allowed or (got == "integer" and "number" in allowed)
        assert ok, f"{key}={value!r}: {got} not in {sorted(allowed)}"


def sample_recommendation() -> Recommendation:
    return Recommendation(
        user_id="u1",
        session_id="s1",
        event_id="e1",
        kind="recommend",
        items=["i9", "i3"],
        scores=[0.91, 0.5],
        model_version="20250101-abcdef",
        produced_at_ms=1_700_000_000_123,
        trigger_timestamp_ms=1_700_000_000_000,
        latency_ms=4.25,
    )


def sample_dead_letters() -> list[DeadLetter]:
    base: dict[str, Any] = {
        "detail": "'user_id' is required",
        "source_topic": "user-events",
        "partition": 3,
        "offset": 42,
        "failed_at_ms": 1_700_000_000_000,
    }
    return [
        DeadLetter(reason=Reason.MISSING_FIELD.value, raw=b'{"x":1}', key=b"u1", **base),
        DeadLetter(reason=Reason.MALFORMED_JSON.value, raw=b"", key=None, **base),
        DeadLetter(reason="processing_error", raw=b"\xff\x00", key=b"", **base),
    ]


# --------------------------------------------------------------------------- always


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_loads_from_package_data(name: str) -> None:
    schema = load(name)
    assert schema["$schema"] == DRAFT
    assert schema["$id"].startswith("urn:streamrec:schema:")
    assert schema["type"] == "object"
    assert set(schema["required"]) <= set(schema["properties"])
    assert schema["title"] and schema["description"]


def test_user_event_fields_match_the_code() -> None:
    schema = load("user-event.schema.json")
    props = schema["properties"]
    field_names = {f.name for f in dataclasses.fields(UserEvent)} - {"extra"}
    assert set(props) == field_names == set(events._KNOWN_FIELDS)
    no_default = {
        f.name
        for f in dataclasses.fields(UserEvent)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert set(schema["required"]) == no_default
    assert schema["additionalProperties"] is True  # unknown fields are kept in ``extra``
    assert props["schema_version"]["const"] == events.SCHEMA_VERSION
    assert props["event_type"]["enum"] == [e.value for e in EventType]


def test_user_event_conditional_rules_match_the_code() -> None:
    schema = load("user-event.schema.json")
    rules = {}
    for rule in schema["allOf"]:
        cond = rule["if"]["properties"]["event_type"]
        values = cond["enum"] if "enum" in cond else [cond["const"]]
        rules[frozenset(values)] = rule["then"]
    item_rule = rules[frozenset(e.value for e in ITEM_EVENTS)]
    assert item_rule["required"] == ["item_id"]
    search_rule = rules[frozenset({EventType.SEARCH.value})]
    assert {tuple(b["required"]) for b in search_rule["anyOf"]} == {("query",), ("query_tokens",)}
    impression_rule = rules[frozenset({EventType.IMPRESSION.value})]
    assert impression_rule["required"] == ["shown_items"]
    assert set(EventType) == set(ITEM_EVENTS) | {EventType.SEARCH, EventType.IMPRESSION}


def test_user_event_limits_match_limits_defaults() -> None:
    schema = load("user-event.schema.json")
    props = schema["properties"]
    limits = Limits()
    assert schema["x-streamrec-max-bytes"] == limits.max_bytes
    id_string = [b for b in branches(schema, schema["$defs"]["id"]) if b.get("type") == "string"]
    assert id_string[0]["maxLength"] == limits.max_id_chars
    assert id_string[0]["minLength"] == 1
    assert props["query"]["maxLength"] == limits.max_query_chars
    assert props["query_tokens"]["maxItems"] == limits.max_items
    assert props["shown_items"]["maxItems"] == limits.max_items
    for name in ("event_id", "user_id", "session_id"):
        assert props[name]["$ref"] == "#/$defs/id"


def test_recommendation_fields_match_the_code() -> None:
    schema = load("recommendation.schema.json")
    names = [f.name for f in dataclasses.fields(Recommendation)]
    record = sample_recommendation().to_dict()
    with_arm = dataclasses.replace(sample_recommendation(), arm="B", flagged=True).to_dict()
    assert set(schema["properties"]) == set(names) == set(with_arm)
    # arm: A/B only; flagged: anomalous traffic only
    assert set(schema["required"]) == set(record) == set(with_arm) - {"arm", "flagged"}
    assert_types(schema, with_arm)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["schema_version"]["const"] == recommendations.SCHEMA_VERSION
    assert set(schema["properties"]["kind"]["enum"]) == {"recommend", "search"}
    assert_types(schema, record)
    assert_types(
        schema, orjson.loads(recommendations.encode_recommendations([sample_recommendation()])[0])
    )


def test_dead_letter_fields_match_the_code() -> None:
    schema = load("dead-letter.schema.json")
    names = {f.name for f in dataclasses.fields(DeadLetter)}
    wire = (names - {"raw", "key"}) | {"raw_b64", "key_b64"}
    for letter in sample_dead_letters():
        record = orjson.loads(letter.to_bytes())
        assert set(record) == wire == set(schema["properties"]) == set(schema["required"])
        assert_types(schema, record)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["schema_version"]["const"] == dead_letter.SCHEMA_VERSION
    reasons = set(schema["properties"]["reason"]["enum"])
    assert reasons == {r.value for r in Reason} | EXTRA_DEAD_LETTER_REASONS


def test_catalogue_item_fields_and_limits_match_the_code() -> None:
    schema = load("catalogue-item.schema.json")
    props = schema["properties"]
    assert set(props) == {f.name for f in dataclasses.fields(CatalogueItem)}
    assert set(props) == set(catalogue.KNOWN_FIELDS)
    no_default = {
        f.name for f in dataclasses.fields(CatalogueItem) if f.default is dataclasses.MISSING
    }
    assert set(schema["required"]) == no_default
    assert schema["additionalProperties"] is True
    assert props["schema_version"]["const"] == catalogue.SCHEMA_VERSION
    limits = CatalogueLimits()
    assert schema["x-streamrec-max-bytes"] == limits.max_bytes
    assert branches(schema, props["item_id"])[0]["maxLength"] == limits.max_id_chars
    assert props["title"]["maxLength"] == limits.max_title_chars
    assert branches(schema, props["category"])[0]["maxLength"] == limits.max_category_chars
    item = CatalogueItem("sku-1", "Cordless drill", 1_700_000_000_000, "Tools", 99.0)
    assert_types(schema, item.to_dict())
    assert parse_catalogue_item(item.to_bytes()) == item


def test_dead_letter_base64_fields_round_trip() -> None:
    for letter in sample_dead_letters():
        record = orjson.loads(letter.to_bytes())
        assert base64.b64decode(record["raw_b64"], validate=True) == letter.raw
        if letter.key:
            assert base64.b64decode(record["key_b64"], validate=True) == letter.key
        else:
            assert record["key_b64"] is None
        back = DeadLetter.from_bytes(letter.to_bytes())
        assert (back.reason, back.raw, back.key) == (letter.reason, letter.raw, letter.key or None)


def _doc_examples() -> dict[str, list[str]]:
    """``| `reason` | `{...json...}` | ...`` rows of the reason table in docs/events.md."""
    rows: dict[str, list[str]] = {}
    for line in EVENTS_DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*`([a-z_]+)`\s*\|(.*?)\|", line)
        if m and m.group(1) in {r.value for r in Reason} | EXTRA_DEAD_LETTER_REASONS:
            rows.setdefault(m.group(1), []).extend(re.findall(r"`([^`]+)`", m.group(2)))
    return rows


@pytest.mark.skipif(not EVENTS_DOC.exists(), reason="docs/events.md not present")
def test_docs_dead_letter_examples_give_their_reason() -> None:
    rows = _doc_examples()
    assert set(rows) == {r.value for r in Reason} | EXTRA_DEAD_LETTER_REASONS
    with_literal = set()
    for reason, examples in rows.items():
        for example in examples:
            if not example.startswith(("{", "[", '"')) and example != "null":
                continue  # prose such as a setting name, not a message value
            with pytest.raises(InvalidEvent) as info:
                parse_event(example.encode())
            assert info.value.reason.value == reason, (example, info.value)
            with_literal.add(reason)
    # Too large to show literally: over 16 KiB, over 200 entries.
    # processing_error is raised by the pipeline, never by parse_event.
    assert with_literal == {r.value for r in Reason} - {
        "oversized",
        "too_many_items",
        "processing_error",
    }


@pytest.mark.skipif(not EVENTS_DOC.exists(), reason="docs/events.md not present")
def test_docs_topic_table_matches_topic_names() -> None:
    lines = EVENTS_DOC.read_text(encoding="utf-8").splitlines()
    for spec in ALL_TOPICS:
        rows = [line for line in lines if line.startswith(f"| `{spec.name}` | ")]
        assert len(rows) == 1, spec.name
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert cells[1] == str(spec.partitions), rows[0]
        assert f"retention.ms={spec.retention_ms}" in cells[2], rows[0]


# ------------------------------------------------------------- with jsonschema only

VALID_BASES: list[dict[str, Any]] = [
    {
        "event_id": "e1",
        "event_type": "view",
        "user_id": "u1",
        "session_id": "s1",
        "timestamp_ms": 1_700_000_000_000,
        "item_id": "i1",
    },
    {
        "schema_version": 1,
        "event_id": 7,
        "event_type": "purchase",
        "user_id": 42,
        "session_id": "s1",
        "timestamp_ms": 1_700_000_000_000.5,
        "item_id": 9,
        "quantity": 2,
        "price": 19.99,
    },
    {
        "event_id": "e2",
        "event_type": "search",
        "user_id": "u1",
        "session_id": "s1",
        "timestamp_ms": 0,
        "query": "red shoes",
        "shown_items": ["i1", 2],
    },
    {
        "event_id": "e3",
        "event_type": "search",
        "user_id": "u1",
        "session_id": "s1",
        "timestamp_ms": 1_700_000_000_000,
        "query_tokens": [5, 17],
        "item_id": None,
    },
    {
        "event_id": "e4",
        "event_type": "add_to_cart",
        "user_id": "u1",
        "session_id": "s2",
        "timestamp_ms": 1_700_000_000_000,
        "item_id": "i2",
        "quantity": None,
        "price": None,
        "query": None,
        "query_tokens": None,
        "shown_items": None,
        "campaign": "x",
    },
    {
        "event_id": "e6",
        "event_type": "impression",
        "user_id": "u1",
        "session_id": "s1",
        "timestamp_ms": 1_700_000_000_000,
        "shown_items": ["i1", 2],
        "recommendation_id": "e1",
    },
    {
        "event_id": "e5",
        "event_type": "click",
        "user_id": "u1",
        "session_id": "s1",
        "timestamp_ms": 1_700_000_000_000,
        "item_id": "i3",
        "shown_items": [],
        "query": "",
    },
]

# Values tried in every field. Integral floats (1.0, 1e13) are left out on purpose: JSON
# Schema cannot tell 1.0 from 1, parse_event can (the schema's description says so).
POOL: list[Any] = [
    None, True, False, 0, -1, 7, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 1.5, -0.5,
    1_700_000_000_000.5, 32_503_680_000_000, 32_503_680_000_001,
    "", "x", "x" * 256, "x" * 257, "q" * 512, "q" * 513, "view", "search", "purchase",
    "impression", "nope",
    [], [1, 2], ["a", "b"], [1, "a"], [""], [True], [None], [1.5], [[1]], [2**64],
    [1] * 200, [1] * 201, ["a"] * 201, {}, {"a": 1},
]  # fmt: skip


def _validator(name: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = load(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _accepted(raw: bytes) -> bool:
    try:
        parse_event(raw)
    except InvalidEvent:
        return False
    return True


def _mutations() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names = sorted(events._KNOWN_FIELDS)
    for base in VALID_BASES:
        for name in names:
            dropped = dict(base)
            dropped.pop(name, None)
            out.append(dropped)
            for value in POOL:
                out.append({**base, name: value})
        out.append({**base, "extra_field": [1, {"a": None}]})
    return out


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    _validator(name)


def test_valid_bases_are_valid() -> None:
    validator = _validator("user-event.schema.json")
    for base in VALID_BASES:
        raw = json.dumps(base).encode()
        assert _accepted(raw), base
        validator.validate(json.loads(raw))


def test_parse_event_accepts_exactly_what_the_schema_accepts() -> None:
    validator = _validator("user-event.schema.json")
    cases = _mutations()
    disagree = []
    for obj in cases:
        raw = json.dumps(obj).encode()  # stdlib: keeps integers beyond 64 bits exact
        if len(raw) > Limits().max_bytes:
            continue
        by_code = _accepted(raw)
        by_schema = validator.is_valid(json.loads(raw))
        if by_code != by_schema:
            disagree.append((by_code, by_schema, obj))
    assert not disagree, f"{len(disagree)} of {len(cases)} disagree, e.g. {disagree[:3]}"
    assert len(cases) > 1000


@pytest.mark.parametrize("value", [[1], "x", 1, None, True])
def test_non_objects_are_rejected_by_both(value: Any) -> None:
    validator = _validator("user-event.schema.json")
    raw = json.dumps(value).encode()
    assert not validator.is_valid(value)
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    assert info.value.reason is Reason.NOT_AN_OBJECT


def test_size_limit_is_enforced_beyond_the_schema() -> None:
    validator = _validator("user-event.schema.json")
    obj = {**VALID_BASES[0], "padding": "p" * Limits().max_bytes}
    assert validator.is_valid(obj)  # the schema cannot state a byte size
    with pytest.raises(InvalidEvent) as info:
        parse_event(json.dumps(obj).encode())
    assert info.value.reason is Reason.OVERSIZED


def test_worker_output_validates() -> None:
    recs = _validator("recommendation.schema.json")
    rec = sample_recommendation()
    recs.validate(orjson.loads(recommendations.encode_recommendations([rec])[0]))
    search = dataclasses.replace(rec, kind="search", items=[], scores=[])
    recs.validate(search.to_dict())
    assert not recs.is_valid({**rec.to_dict(), "kind": "other"})
    assert not recs.is_valid({**rec.to_dict(), "extra": 1})
    letters = _validator("dead-letter.schema.json")
    for letter in sample_dead_letters():
        letters.validate(orjson.loads(letter.to_bytes()))
    assert not letters.is_valid(
        {**orjson.loads(sample_dead_letters()[0].to_bytes()), "reason": "bogus"}
    )


CATALOGUE_BASES: list[dict[str, Any]] = [
    {"item_id": "sku-1", "title": "Cordless drill", "timestamp_ms": 1_700_000_000_000},
    {
        "schema_version": 1,
        "item_id": 42,
        "title": " Lawn mower ",
        "timestamp_ms": 0,
        "category": "Outdoor",
        "price": 199.5,
        "colour": "red",
    },
    {"item_id": "x", "title": "t", "timestamp_ms": 1.5, "category": None, "price": 0},
]
CATALOGUE_POOL: list[Any] = [*POOL, " ", "  \t", " x ", "t" * 1000, "t" * 1001, -0.5, 0]


def _catalogue_accepted(raw: bytes) -> bool:
    try:
        parse_catalogue_item(raw)
    except InvalidEvent:
        return False
    return True


def test_parse_catalogue_item_accepts_exactly_what_the_schema_accepts() -> None:
    validator = _validator("catalogue-item.schema.json")
    cases: list[dict[str, Any]] = []
    for base in CATALOGUE_BASES:
        assert _catalogue_accepted(json.dumps(base).encode()), base
        validator.validate(base)
        for name in sorted(catalogue.KNOWN_FIELDS):
            dropped = dict(base)
            dropped.pop(name, None)
            cases.append(dropped)
            cases.extend({**base, name: value} for value in CATALOGUE_POOL)
    disagree = []
    for obj in cases:
        raw = json.dumps(obj).encode()
        if len(raw) > CatalogueLimits().max_bytes:
            continue
        by_code, by_schema = _catalogue_accepted(raw), validator.is_valid(json.loads(raw))
        if by_code != by_schema:
            disagree.append((by_code, by_schema, obj))
    assert not disagree, f"{len(disagree)} of {len(cases)} disagree, e.g. {disagree[:3]}"
    assert len(cases) > 500


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"title": "t", "timestamp_ms": 1}', Reason.MISSING_FIELD),
        (b'{"item_id": "i", "timestamp_ms": 1}', Reason.MISSING_FIELD),
        (b'{"item_id": "i", "title": "t"}', Reason.MISSING_FIELD),
        (b'{"item_id": true, "title": "t", "timestamp_ms": 1}', Reason.WRONG_TYPE),
        (b'{"item_id": "i", "title": 5, "timestamp_ms": 1}', Reason.WRONG_TYPE),
        (b'{"item_id": "i", "title": " ", "timestamp_ms": 1}', Reason.INVALID_VALUE),
        (b'{"item_id": "i", "title": "t", "timestamp_ms": 1, "price": -1}', Reason.INVALID_VALUE),
        (b'{"item_id": "i", "title": "t", "timestamp_ms": 1, "price": "9"}', Reason.WRONG_TYPE),
        (b'{"schema_version": 2, "item_id": "i", "title": "t", "timestamp_ms": 1}',
         Reason.UNSUPPORTED_SCHEMA_VERSION),
        (b"[1]", Reason.NOT_AN_OBJECT),
        (b"{", Reason.MALFORMED_JSON),
        (None, Reason.MALFORMED_JSON),
        (b'{"item_id": "i", "title": "' + b"t" * 20_000 + b'", "timestamp_ms": 1}',
         Reason.OVERSIZED),
    ],
)  # fmt: skip
def test_catalogue_items_fail_with_their_dead_letter_reason(
    raw: bytes | None, reason: Reason
) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_catalogue_item(raw)
    assert info.value.reason is reason
