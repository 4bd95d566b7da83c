"""``train --data`` / ``evaluate --data`` read DIGINETICA views or canonical JSONL alike."""

from __future__ import annotations

from pathlib import Path

from stream.import_job import load_events_file
from topics.events import EventType, UserEvent
from topics.importer import write_jsonl


def test_canonical_jsonl_and_diginetica_views(tmp_path: Path) -> None:
    events = [
        UserEvent("e1", EventType.VIEW, "u", "s", 5, item_id="i1"),
        UserEvent("e2", EventType.PURCHASE, "u", "s", 6, item_id="i2", quantity=1),
    ]
    jsonl = tmp_path / "events.jsonl"
    write_jsonl(events, jsonl)
    got, report = load_events_file(jsonl)
    assert [e.event_id for e in got] == ["e1", "e2"] and report.bad_rows == 0
    views = tmp_path / "views.csv"
    views.write_text("session_id;user_id;item_id;timeframe;eventdate\n1;NA;9;10;2016-05-09\n")
    got, _ = load_events_file(views)
    assert got[0].item_id == "9" and got[0].user_id == "anon-1"
