"""``streamrec replay --topic``: FROM/TO specs, per-partition offsets, record decoding, the
scoring shared with ``--data`` replays, and the CLI's dispatch (no Kafka, no worker)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from models.bundle import Bundle, write_bundle
from stream import replay_job
from stream.cli import main
from stream.replay import (
    Collected,
    RangeBound,
    SourceRecord,
    bound_offset,
    check_range,
    merge_partitions,
    parse_bound,
)
from stream.replay_job import (
    decode_records,
    describe_range,
    finish_replay,
    format_scores,
    recommendation_lines,
    score_replay,
)
from topics.dead_letter import DeadLetter
from topics.events import EventType, Limits, UserEvent
from topics.recommendations import Recommendation

NOV_20_MS = 1_795_132_800_000  # 2026-11-20T00:00:00Z


# --- FROM / TO specs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("earliest", RangeBound("earliest")),
        ("LATEST", RangeBound("latest")),
        ("offset:1200", RangeBound("offset", 1200)),
        ("offset:0", RangeBound("offset", 0)),
        ("1763596800000", RangeBound("time", 1_763_596_800_000)),
        ("2026-11-20T00:00:00Z", RangeBound("time", NOV_20_MS)),
        ("2026-11-20T01:00:00+01:00", RangeBound("time", NOV_20_MS)),
        ("2026-11-20T00:00:00", RangeBound("time", NOV_20_MS)),  # no offset: UTC
        ("2026-11-20", RangeBound("time", NOV_20_MS)),
        ("2026-11-20T00:00:00.250Z", RangeBound("time", NOV_20_MS + 250)),
        ("2026-11-20T00:00:00.001Z", RangeBound("time", NOV_20_MS + 1)),
    ],
)
def test_parse_bound_accepts_every_documented_form(text: str, expected: RangeBound) -> None:
    assert parse_bound(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("offset:", "whole number"),
        ("offset:-5", "whole number"),
        ("offset:12a", "whole number"),
        ("offset:²", "whole number"),
        ("²", "ISO-8601"),
        ("1969-12-31T23:59:59.999Z", "before 1970"),  # -1 would mean "latest" to Kafka
        ("1200", "offset:1200"),  # a small bare number is not a time: point at the offset form
        ("1763596800", "seconds"),  # epoch seconds instead of milliseconds
        ("yesterday", "ISO-8601"),
        ("2026-13-40", "ISO-8601"),
    ],
)
def test_parse_bound_refuses_with_a_message_naming_the_fix(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_bound(text)


@pytest.mark.parametrize("text", ["earliest", "latest", "offset:42", "2026-11-20T00:00:00.250Z"])
def test_a_bound_prints_as_a_spec_that_parses_back_to_itself(text: str) -> None:
    bound = parse_bound(text)
    assert str(bound) == text and parse_bound(str(bound)) == bound


@pytest.mark.parametrize(
    ("start", "stop", "says"),
    [
        ("latest", "latest", "--from latest is always empty"),
        ("earliest", "earliest", "--to earliest is always empty"),
        ("offset:10", "offset:5", "after"),
        ("2026-11-21T00:00:00Z", "2026-11-20T00:00:00Z", "after"),
    ],
)
def test_check_range_refuses_empty_or_reversed_ranges(start: str, stop: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_range(parse_bound(start), parse_bound(stop))


@pytest.mark.parametrize(
    ("start", "stop"),
    [
        ("earliest", "latest"),
        ("offset:5", "offset:5"),  # empty but well-formed: a half-open range
        ("offset:5", "2026-11-20T00:00:00Z"),  # mixed kinds compare per partition
        ("2026-11-20T00:00:00Z", "latest"),
    ],
)
def test_check_range_accepts_ordered_or_mixed_ranges(start: str, stop: str) -> None:
    check_range(parse_bound(start), parse_bound(stop))


@pytest.mark.parametrize(
    ("bound", "time_offset", "expected"),
    [
        (RangeBound("earliest"), None, 100),
        (RangeBound("latest"), None, 200),
        (RangeBound("offset", 150), None, 150),
        (RangeBound("offset", 10), None, 100),  # deleted by retention: the log's start
        (RangeBound("offset", 999), None, 200),  # past the end: never wait for it
        (RangeBound("time", NOV_20_MS), 170, 170),
        (RangeBound("time", NOV_20_MS), None, 200),  # no record at or after the time
        (RangeBound("time", NOV_20_MS), 50, 100),
    ],
)
def test_bound_offset_is_clamped_into_the_partition_log(
    bound: RangeBound, time_offset: int | None, expected: int
) -> None:
    assert bound_offset(bound, beginning=100, end=200, time_offset=time_offset) == expected


def _rec(partition: int, offset: int, ts: int, value: bytes | None = b"", key: bytes | None = None):  # type: ignore[no-untyped-def]
    return SourceRecord(partition, offset, ts, key, value)


def test_merge_partitions_orders_by_time_but_keeps_each_partition_in_offset_order() -> None:
    p0 = [_rec(0, 0, 10), _rec(0, 1, 40), _rec(0, 2, 30)]  # record times not monotonic
    p1 = [_rec(1, 0, 20), _rec(1, 1, 35)]
    merged = merge_partitions({0: p0, 1: p1})
    assert [(r.partition, r.offset) for r in merged] == [(0, 0), (1, 0), (1, 1), (0, 1), (0, 2)]
    assert [r for r in merged if r.partition == 0] == p0


# --- decoding records --------------------------------------------------------------------


def _event(event_id: str, session: str, item: str | None, ts: int, user: str = "u1") -> UserEvent:
    kind = EventType.VIEW if item is not None else EventType.SEARCH
    query = None if item is not None else "shoes"
    return UserEvent(event_id, kind, user, session, ts, item_id=item, query=query)


def test_decode_records_counts_every_record_that_is_not_replayed() -> None:
    good = _event("e1", "s1", "a", 1)
    other = _event("e2", "s1", "b", 2, user="u2")
    records = [
        _rec(0, 7, 1, good.to_bytes(), key=b"orig-key"),
        _rec(0, 8, 2, b'{"event_type": "view"', key=b"k"),
        _rec(1, 3, 3, None),
        _rec(1, 4, 4, orjson.dumps({**good.to_dict(), "event_type": "wishlist"})),
        _rec(1, 5, 5, good.to_bytes()),  # the same event again (at-least-once upstream)
        _rec(2, 0, 6, other.to_bytes()),  # no key: keyed by user, like every producer
        _rec(2, 1, 7, b"x" * 600),
    ]
    decoded = decode_records(records, Limits(max_bytes=512))
    assert decoded.records == 7
    assert [e.event_id for e in decoded.events] == ["e1", "e2"]
    assert decoded.messages == [(b"orig-key", good.to_bytes()), (b"u2", other.to_bytes())]
    assert decoded.bad == {"malformed_json": 2, "unknown_event_type": 1, "oversized": 1}
    assert [x.split(":")[0] for x in decoded.bad_examples["malformed_json"]] == ["0@8", "1@3"]
    assert decoded.bad_examples["oversized"][0].startswith("2@1: 600 bytes")
    assert decoded.duplicates == 1
    assert decoded.records == len(decoded.events) + sum(decoded.bad.values()) + 1


def test_decode_records_keeps_at_most_three_examples_per_reason() -> None:
    records = [_rec(0, i, i, b"{") for i in range(5)]
    decoded = decode_records(records, Limits())
    assert decoded.bad == {"malformed_json": 5}
    assert len(decoded.bad_examples["malformed_json"]) == 3


def test_describe_range_names_every_partition_and_every_record_left_out() -> None:
    records = [_rec(0, 4, 1, b"{"), _rec(1, 9, 2, _event("e", "s", "a", 1).to_bytes())]
    text = describe_range(decode_records(records, Limits()), "ev", {0: (4, 5), 1: (9, 10)})
    assert text.splitlines()[0] == (
        "read 2 records of ev (p0 [4, 5), p1 [9, 10)): 1 events, 1 bad, 0 duplicate event ids"
    )
    assert "bad malformed_json" in text and "e.g. 0@4:" in text


def test_run_names_are_unique_within_a_second() -> None:
    names = {replay_job._run_name() for _ in range(5)}
    assert len(names) == 5
    assert all(re.fullmatch(r"replay-\d{14}-[0-9a-f]{6}", n) for n in names)


# --- scoring -----------------------------------------------------------------------------

ITEMS = ["a", "b", "c", "d"]
POPULARITY = np.array([0.0, 4.0, 3.0, 2.0, 1.0], dtype=np.float32)


def _events() -> list[UserEvent]:
    return [
        _event("s1-1", "s1", "a", 100),  # -> b
        _event("s1-2", "s1", "b", 200),  # -> c
        _event("s1-3", "s1", "c", 300),
        _event("s2-1", "s2", "a", 110),  # -> x: not in the bundle's catalogue, dropped
        _event("s2-2", "s2", "x", 210),  # -> b (prefix a, x)
        _event("s2-3", "s2", "b", 310),
        _event("s3-1", "s3", "d", 120),  # -> d: a re-view, dropped
        _event("s3-2", "s3", "d", 220),
        _event("s3-3", "s3", None, 320),  # a search: no target
    ]


def _line(event_id: str, items: list[str]) -> bytes:
    return orjson.dumps({"event_id": event_id, "items": items, "trigger": {}})


LINES = [
    _line("s1-1", ["b", "c", "d"]),  # target b at rank 1
    _line("s1-2", ["a", "d", "c", "b"]),  # target c at rank 3
    _line("s3-1", ["a"]),  # no example
    # s2-2 (target b) unanswered: a miss, as an empty list in the offline evaluation
]


def test_score_replay_uses_the_evaluation_protocol_and_metrics() -> None:
    score = score_replay(LINES, _events(), ITEMS, POPULARITY)
    assert score["examples"] == 3
    assert score["unanswered_examples"] == 1
    assert score["dropped_unseen"] == 1 and score["dropped_repeat"] == 1
    m = score["metrics"]
    for k in (5, 10, 20):
        assert m[f"HR@{k}"] == pytest.approx(2 / 3)
        assert m[f"MRR@{k}"] == pytest.approx((1 + 1 / 3) / 3)
        assert m[f"NDCG@{k}"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["HR@5"] != pytest.approx(1.0)  # the unanswered trigger counts as a miss
    assert m["coverage@20"] == pytest.approx(1.0)  # a, b, c, d all shown


def test_score_replay_cuts_lists_at_k() -> None:
    lines = [_line("s1-1", ["c", "d", "a", "b"]), _line("s1-2", ["c"])]
    m = score_replay(lines, _events(), ITEMS, POPULARITY, ks=(2, 5))["metrics"]
    assert m["HR@2"] == pytest.approx(1 / 3)  # b is 4th for s1-1; c 1st for s1-2
    assert m["HR@5"] == pytest.approx(2 / 3)
    assert m["MRR@5"] == pytest.approx((1 / 4 + 1) / 3)


def test_score_replay_orders_each_session_by_event_time() -> None:
    """Records of several partitions arrive interleaved: the targets must not depend on it."""
    shuffled = list(reversed(_events()))
    assert score_replay(LINES, shuffled, ITEMS, POPULARITY) == score_replay(
        LINES, _events(), ITEMS, POPULARITY
    )


def test_score_replay_without_examples_has_no_metrics() -> None:
    score = score_replay([], [_event("only", "s", "a", 1)], ITEMS, POPULARITY)
    assert score["examples"] == 0 and score["metrics"] == {}
    assert "no example to score" in format_scores(score)


def test_score_replay_refuses_popularity_of_another_catalogue() -> None:
    with pytest.raises(ValueError, match="popularity"):
        score_replay(LINES, _events(), ITEMS, POPULARITY[:-1])


def test_format_scores_prints_hr_mrr_ndcg_per_k() -> None:
    text = format_scores(score_replay(LINES, _events(), ITEMS, POPULARITY))
    assert "scored 3 examples" in text and "1 unanswered" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:]}
    assert list(rows) == ["@5", "@10", "@20"]
    assert rows["@10"] == ["0.6667", "0.4444", "0.5000"]


# --- the shared finish of --data and --topic replays -------------------------------------


def _bundle(tmp_path: Path) -> Bundle:
    onnx = tmp_path / "fake.onnx"
    onnx.write_bytes(b"not parsed by bundle.py")
    emb = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    emb[0] = 0.0
    path = write_bundle(
        tmp_path / "models",
        onnx_path=onnx,
        item_ids=ITEMS,
        embeddings=emb,
        popularity=POPULARITY,
        max_recent=4,
        version="v1",
    )
    return Bundle.load(path)


def _answer(e: UserEvent, items: list[str]) -> Recommendation:
    return Recommendation(
        e.user_id, e.session_id, e.event_id, "recommend", items, [1.0] * len(items), "v1", 0, 0, 0
    )


def _collected(events: list[UserEvent], answered: dict[str, list[str]], dead: int) -> Collected:
    c = Collected(last_received_s=2.0)
    for e in events:
        if e.event_id in answered:
            c.recommendations[e.event_id] = _answer(e, answered[e.event_id])
    for _ in range(dead):
        c.dead_letters.append(DeadLetter("malformed_json", "x", "user-events", 0, 0, b"{", 0))
    return c


def test_finish_replay_writes_lines_prints_scores_and_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = _events()
    answered = {orjson.loads(x)["event_id"]: orjson.loads(x)["items"] for x in LINES}
    answered.update({e.event_id: ["a"] for e in events if e.event_id not in answered})
    collected = _collected(events, answered, dead=0)
    out, report = tmp_path / "o" / "recs.jsonl", tmp_path / "r" / "report.json"
    code = finish_replay(
        events, collected, 1.0, out=out, report=report, bundle=_bundle(tmp_path), source={"k": 1}
    )
    assert code == 0
    lines = out.read_bytes().splitlines()
    assert lines == recommendation_lines(events, collected)
    printed = capsys.readouterr().out
    assert "replayed 9 events: 9 recommendations" in printed and "@20" in printed
    got = orjson.loads(report.read_bytes())
    expected = score_replay(lines, events, ITEMS, POPULARITY)
    assert got["metrics"] == pytest.approx(expected["metrics"])
    assert got["examples"] == 3 and got["unanswered_examples"] == 0
    assert got["source"] == {"k": 1} and got["bundle"] == "v1"
    assert got["model_versions"] == {"v1": 9} and got["unanswered"] == 0


def test_finish_replay_exits_1_when_an_event_went_unanswered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = _events()
    answered = {e.event_id: ["a"] for e in events[:6]}  # 6 answered, 1 dead letter, 2 missing
    collected = _collected(events, answered, dead=1)
    out = tmp_path / "recs.jsonl"
    code = finish_replay(
        events, collected, 1.0, out=out, report=None, bundle=_bundle(tmp_path), source={}
    )
    assert code == 1
    assert "1 dead letters {'malformed_json': 1}, 2 unanswered" in capsys.readouterr().out
    assert len(out.read_bytes().splitlines()) == 6


# --- CLI dispatch ------------------------------------------------------------------------


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    seen: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def fake(name: str):  # type: ignore[no-untyped-def]
        def run(*args: Any, **kwargs: Any) -> int:
            seen.append((name, args, kwargs))
            return 0

        return run

    monkeypatch.setattr(replay_job, "run_topic_replay", fake("topic"))
    monkeypatch.setattr(replay_job, "run_replay", fake("data"))
    return seen


def test_cli_topic_range_reaches_the_topic_replay(
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]], tmp_path: Path
) -> None:
    argv = ["replay", "--topic", "user-events", "--from", "2026-11-20T00:00:00Z"]
    argv += ["--to", "latest", "--out", str(tmp_path / "r.jsonl")]
    argv += ["--report", str(tmp_path / "m.json"), "--rate", "50"]
    assert main(argv) == 0
    [(name, args, kwargs)] = calls
    assert name == "topic"
    assert args == ("user-events", RangeBound("time", NOV_20_MS), RangeBound("latest"))
    assert kwargs["out"] == tmp_path / "r.jsonl" and kwargs["report"] == tmp_path / "m.json"
    assert kwargs["rate"] == 50.0


def test_cli_data_replay_takes_a_report_too(
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]], tmp_path: Path
) -> None:
    data = tmp_path / "events.jsonl"
    data.write_bytes(_event("d1", "s", "a", 1_700_000_000_000).to_bytes() + b"\n")
    assert main(["replay", "--data", str(data), "--report", str(tmp_path / "m.json")]) == 0
    [(name, args, kwargs)] = calls
    assert name == "data" and [e.event_id for e in args[0]] == ["d1"]
    assert kwargs["report"] == tmp_path / "m.json"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--topic", "t", "--from", "earliest"], "needs --from and --to"),
        (["--topic", "t", "--to", "latest"], "needs --from and --to"),
        (["--topic", "t", "--from", "1200", "--to", "latest"], "offset:1200"),
        (["--topic", "t", "--from", "offset:9", "--to", "offset:3"], "after"),
        (["--topic", "t", "--data", "f.jsonl", "--from", "earliest", "--to", "latest"], "one of"),
        (["--data", "f.jsonl", "--from", "earliest"], "range of --topic"),
        ([], "one of"),
    ],
)
def test_cli_refuses_incomplete_or_contradictory_flags(
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    says: str,
) -> None:
    assert main(["replay", *argv]) == 2
    assert says in capsys.readouterr().out
    assert calls == []
