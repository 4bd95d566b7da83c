"""The generic importer on small hand-made files: formats, time units, type mapping, bad rows
(counted by reason, with line numbers), derived sessions, ids and the JSONL round trip."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from stream.cli import main
from topics.datasets import TimeUnit, detect_time_unit, parse_time_ms
from topics.events import EventType, UserEvent
from topics.importer import (
    ImportSpec,
    ImportSpecError,
    import_files,
    parse_type_map,
    write_jsonl,
)

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
SPEC = ImportSpec(user_col="user", item_col="item", time_col="ts")
ROWS = [("u1", "i1", T0), ("u2", "i2", T0 + 5), ("u1", "i3", T0 + 60)]


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _table(path: Path, sep: str = ",", rows: Sequence[tuple[str, str, object]] = ROWS) -> Path:
    lines = [sep.join(("user", "item", "ts"))] + [sep.join(map(str, r)) for r in rows]
    return _write(path, "\n".join(lines) + "\n")


def _facts(events: list[UserEvent]) -> list[tuple[str, str, str, int, str | None]]:
    return [(e.event_type, e.user_id, e.session_id, e.timestamp_ms, e.item_id) for e in events]


def test_csv_tsv_jsonl_and_gzip_give_the_same_events(tmp_path: Path) -> None:
    jsonl = "".join(
        orjson.dumps(dict(zip(("user", "item", "ts"), r, strict=True))).decode() + "\n"
        for r in ROWS
    )
    files = [
        _table(tmp_path / "a.csv"),
        _table(tmp_path / "b.tsv", "\t"),
        _table(tmp_path / "c.csv.gz"),
        _table(tmp_path / "d.txt", ";"),  # unknown extension: CSV, delimiter sniffed
        _write(tmp_path / "e.jsonl", jsonl),
        _write(tmp_path / "f.json.gz", jsonl),  # JSON lines recognised by their first '{'
    ]
    results = [import_files([f], SPEC) for f in files]
    expected = [
        ("view", "u1", "u1-s1", T0 * 1000, "i1"),
        ("view", "u2", "u2-s1", (T0 + 5) * 1000, "i2"),
        ("view", "u1", "u1-s1", (T0 + 60) * 1000, "i3"),
    ]
    for events, report in results:
        assert _facts(events) == expected
        assert (report.rows, report.events, report.bad_rows) == (3, 3, 0)
    forced = import_files([_table(tmp_path / "g.dat", "\t")], replace(SPEC, fmt="tsv"))
    assert _facts(forced[0]) == expected


@pytest.mark.parametrize(
    ("values", "unit"),
    [
        ([T0, T0 + 5, T0 + 60], "s"),
        ([T0 * 1000, (T0 + 5) * 1000, (T0 + 60) * 1000], "ms"),
        (["2023-11-14T22:13:20Z", "2023-11-14 22:13:25", "2023-11-14T23:14:20+01:00"], "iso"),
        ([f"{T0}.0", f"{T0 + 5}", f"{T0 + 60}.000"], "s"),
    ],
)
def test_time_unit_is_auto_detected_per_file(tmp_path: Path, values: list, unit: str) -> None:
    rows = [(u, i, v) for (u, i, _), v in zip(ROWS, values, strict=True)]
    events, report = import_files([_table(tmp_path / "t.csv", rows=rows)], SPEC)
    assert [e.timestamp_ms for e in events] == [T0 * 1000, (T0 + 5) * 1000, (T0 + 60) * 1000]
    assert f"auto-detected as {unit}" in report.notes[0]


def test_forced_time_unit_wins_over_detection(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.csv")
    events, _ = import_files([path], replace(SPEC, time_unit=TimeUnit.MS))
    assert events[0].timestamp_ms == T0  # seconds read as ms: 1970, but what was asked for
    events, report = import_files([path], replace(SPEC, time_unit=TimeUnit.ISO))
    assert not events and report.bad == {"bad_timestamp": 3}


def test_time_helpers() -> None:
    assert detect_time_unit(["garbage", str(T0), str(T0 + 1)]) is TimeUnit.S  # majority vote
    assert detect_time_unit(["2024-01-01", "2024-01-02", "17"]) is TimeUnit.ISO
    assert parse_time_ms("2023-11-14T22:13:20.123Z", TimeUnit.ISO) == T0 * 1000 + 123
    with pytest.raises(ValueError):
        parse_time_ms("-5", TimeUnit.S)  # before 1970: parse_event would refuse it


def test_type_mapping_and_canonical_names(tmp_path: Path) -> None:
    text = (
        "user,item,ts,kind\nu1,i1,1,pv\nu1,i2,2,buy\nu1,i3,3,detail\nu1,i4,4,CLICK\nu1,i5,5,zap\n"
    )
    spec = replace(SPEC, type_col="kind", type_map=parse_type_map("purchase=buy,view=pv|detail"))
    events, report = import_files([_write(tmp_path / "k.csv", text)], spec)
    assert [e.event_type for e in events] == ["view", "purchase", "view", "click"]
    assert report.bad == {"unknown_event_type": 1}
    assert "k.csv line 6" in report.examples["unknown_event_type"][0]
    assert parse_type_map("view=pv, purchase = buy") == {"pv": EventType.VIEW, "buy": "purchase"}
    with pytest.raises(ImportSpecError, match="--type-map"):
        parse_type_map("buy=purchase")


def test_missing_columns_name_the_flag(tmp_path: Path) -> None:
    csv_path = _table(tmp_path / "m.csv")
    with pytest.raises(ImportSpecError, match="--item-col 'sku'"):
        import_files([csv_path], ImportSpec(user_col="user", item_col="sku", time_col="ts"))
    with pytest.raises(ImportSpecError, match="--time-col"):
        import_files([csv_path], ImportSpec(user_col="user", item_col="item"))
    with pytest.raises(ImportSpecError, match="--user-col or --session-col"):
        import_files([csv_path], ImportSpec(item_col="item", time_col="ts"))
    with pytest.raises(ImportSpecError, match="--item-col"):
        import_files([csv_path], ImportSpec())  # no mapping and not canonical JSONL
    jsonl = _write(tmp_path / "m.jsonl", '{"user": "u1", "item": "i1", "ts": 1}\n')
    with pytest.raises(ImportSpecError, match="--session-col 'sid'"):
        import_files([jsonl], replace(SPEC, session_col="sid"))


def test_bad_rows_are_counted_by_reason_with_line_numbers(tmp_path: Path) -> None:
    text = (
        "user,item,ts,qty\n"
        "u1,i1,1700000000,1\n"
        "u1,i2,yesterday,1\n"  # line 3: unparsable timestamp
        "u1,,1700000002,1\n"  # line 4: empty item
        "u1,i3,1700000003\n"  # line 5: a field short
        "\n"  # line 6: blank, skipped
        "u1,i4,1700000004,1.5\n"  # line 7: quantity not a whole number
        "u1,i5,1700000005,2\n"
    )
    spec = replace(SPEC, quantity_col="qty")
    events, report = import_files([_write(tmp_path / "bad.csv", text)], spec)
    assert [e.item_id for e in events] == ["i1", "i5"]
    assert [e.quantity for e in events] == [1, 2]
    assert report.bad == {
        "bad_timestamp": 1, "missing_item": 1, "wrong_column_count": 1, "bad_quantity": 1
    }  # fmt: skip
    assert report.skipped == {"blank_line": 1}
    assert report.rows == report.events + report.bad_rows + report.skipped_rows == 7
    assert report.examples["bad_timestamp"] == [
        "bad.csv line 3: 'yesterday' is not a time in unit s"
    ]
    assert report.examples["missing_item"] == ["bad.csv line 4"]
    assert report.examples["wrong_column_count"][0].startswith("bad.csv line 5:")
    assert "bad.csv line 3" in report.summary()

    lines = ['{"user":"u1","item":"i1","ts":1}', '{"user":"u1",', "[1, 2]", '{"user":"u1","ts":2}']
    events, report = import_files([_write(tmp_path / "bad.jsonl", "\n".join(lines))], SPEC)
    assert [e.item_id for e in events] == ["i1"]
    assert report.bad == {"malformed_json": 1, "not_an_object": 1, "missing_item": 1}
    assert report.examples["malformed_json"][0].startswith("bad.jsonl line 2:")


def test_sessions_derived_per_user_by_gap(tmp_path: Path) -> None:
    minutes = [("u1", 0), ("u2", 1), ("u1", 10), ("u1", 45), ("u2", 100), ("u1", 50)]
    rows = [(u, f"i{n}", T0 + m * 60) for n, (u, m) in enumerate(minutes)]
    path = _table(tmp_path / "s.csv", rows=rows)
    events, _ = import_files([path], SPEC)
    assert [(e.user_id, e.session_id) for e in events] == [
        ("u1", "u1-s1"), ("u2", "u2-s1"), ("u1", "u1-s1"),
        ("u1", "u1-s2"), ("u1", "u1-s2"), ("u2", "u2-s2"),
    ]  # fmt: skip
    wide, _ = import_files([path], replace(SPEC, session_gap_min=120))
    assert {e.session_id for e in wide} == {"u1-s1", "u2-s1"}


def test_session_column_and_anonymous_users(tmp_path: Path) -> None:
    text = "sid,item,ts\nA,i1,1\nA,i2,2\nB,i3,3\nNA,i4,4\n"
    spec = ImportSpec(session_col="sid", item_col="item", time_col="ts")
    events, report = import_files([_write(tmp_path / "sess.csv", text)], spec)
    assert [(e.user_id, e.session_id) for e in events] == [
        ("anon-A", "A"),
        ("anon-A", "A"),
        ("anon-B", "B"),
    ]
    assert report.bad == {"missing_session": 1}


def test_ids_are_deterministic_and_sorting_is_stable(tmp_path: Path) -> None:
    rows = [("u1", "i1", T0 + 9), ("u1", "i2", T0), ("u2", "i3", T0), ("u1", "i4", T0)]
    path = _table(tmp_path / "clicks.csv", rows=rows)
    first, _ = import_files([path], SPEC)
    again, _ = import_files([path], SPEC)
    assert first == again
    assert [e.event_id for e in first] == ["clicks-3", "clicks-4", "clicks-5", "clicks-2"]
    prefixed, _ = import_files([path], replace(SPEC, id_prefix="shop"))
    assert prefixed[0].event_id == "shop-3"


def test_round_trip_through_canonical_jsonl_is_exact(tmp_path: Path) -> None:
    text = (
        "user\tsession\titem\twhen\tkind\tq\tqty\tprice\n"
        "u1\ts1\t\t2024-03-01T10:00:00Z\tsearch\tred shoes\t\t\n"
        "u1\ts1\tsku-1\t2024-03-01T10:00:05Z\tview\t\t\t\n"
        "u1\ts1\tsku-1\t2024-03-01T10:01:00Z\tcart\t\t2\t19.99\n"
        "u2\ts9\tsku-2\t2024-03-01T09:00:00+01:00\tbuy\t\t1\t5\n"
    )
    spec = ImportSpec(
        user_col="user", session_col="session", item_col="item", time_col="when",
        type_col="kind", type_map=parse_type_map("add_to_cart=cart,purchase=buy"),
        query_col="q", quantity_col="qty", price_col="price",
    )  # fmt: skip
    events, report = import_files([_write(tmp_path / "log.tsv", text)], spec)
    assert report.bad_rows == 0 and len(events) == 4
    assert events[0].event_type is EventType.PURCHASE and events[0].price == 5.0
    for out in (tmp_path / "events.jsonl", tmp_path / "events.jsonl.gz"):
        assert write_jsonl(events, out) == 4
        back, back_report = import_files([out], ImportSpec(fmt="jsonl"))
        assert back == events
        assert back_report.rows == 4 and back_report.bad_rows == 0
    first_line = (tmp_path / "events.jsonl").read_bytes().splitlines()[0]
    assert orjson.loads(first_line) == events[0].to_dict()


def test_canonical_import_reports_invalid_lines(tmp_path: Path) -> None:
    good = UserEvent("e1", EventType.VIEW, "u1", "s1", 5, item_id="i1").to_bytes().decode()
    text = good + '\n{"event_type": "teleport"}\n{"event_id": "x"\n'
    events, report = import_files([_write(tmp_path / "c.jsonl", text)], ImportSpec())
    assert [e.event_id for e in events] == ["e1"]
    assert report.bad == {"unknown_event_type": 1, "malformed_json": 1}
    assert report.examples["malformed_json"][0].startswith("c.jsonl line 3")


def test_cli_writes_jsonl_reports_and_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _table(tmp_path / "in.csv", rows=[*ROWS, ("u3", "i9", "soon")])
    out = tmp_path / "out.jsonl"
    args = [str(src), "--user-col", "user", "--item-col", "item", "--time-col", "ts"]
    assert main(["import", *args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "events 3" in printed and "bad_timestamp" in printed and "in.csv line 5" in printed
    assert len(out.read_bytes().splitlines()) == 3
    strict_out = tmp_path / "strict.jsonl"
    assert main(["import", *args, "--strict", "--out", str(strict_out)]) == 1
    assert not strict_out.exists()  # a partial import is not written
    assert (
        main(["import", str(src), "--user-col", "user", "--item-col", "sku", "--time-col", "ts"])
        == 2
    )
    assert "--item-col 'sku'" in capsys.readouterr().err
    assert main(["import", str(out), "--format", "jsonl", "--out", str(tmp_path / "2.jsonl")]) == 0
    assert (tmp_path / "2.jsonl").read_bytes() == out.read_bytes()


def test_cli_produces_to_kafka_keyed_by_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, list[tuple[bytes | None, bytes]]]] = []

    async def fake_produce(bootstrap: str, topic: str, messages: list, **_: object) -> float:
        sent.append((topic, list(messages)))
        return 0.0

    monkeypatch.setattr("stream.replay.produce", fake_produce)
    src = _table(tmp_path / "k.csv")
    args = ["import", str(src), "--user-col", "user", "--item-col", "item", "--time-col", "ts"]
    assert main([*args, "--topic", "user-events"]) == 0
    topic, messages = sent[0]
    assert topic == "user-events" and len(messages) == 3
    for key, value in messages:
        assert key == orjson.loads(value)["user_id"].encode()
