"""Loaders that turn public dataset files into canonical ``UserEvent`` lists.

Only the DIGINETICA session-view format is here so far (the demo's data). Events come back in
event-time order; anonymous sessions (``user_id`` NA) use ``anon-<session_id>`` as the user.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from topics.events import EventType, UserEvent


@dataclass(slots=True)
class LoadReport:
    """What a loader read: rows turned into events and rows it could not parse (with why)."""

    rows: int = 0
    events: int = 0
    bad_rows: int = 0
    first_error: str = ""


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _day_ms(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


def load_diginetica_views(path: Path) -> tuple[list[UserEvent], LoadReport]:
    """Read DIGINETICA item views (``session_id;user_id;item_id;timeframe;eventdate``; the full
    release spells the header ``sessionId;userId;itemId;timeframe;eventdate``).

    ``timeframe`` is milliseconds since the session started, so the event time is the
    session's day (midnight UTC) plus ``timeframe``.
    """
    report = LoadReport()
    events: list[UserEvent] = []
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=";")
        header = [h.strip().lower().replace("_", "") for h in next(reader)]
        try:
            col = {name: header.index(name) for name in ("sessionid", "userid", "itemid")}
            col["timeframe"] = header.index("timeframe")
            col["eventdate"] = header.index("eventdate")
        except ValueError as exc:
            raise ValueError(f"{path}: not a DIGINETICA views file (header {header})") from exc
        for line_no, row in enumerate(reader, start=2):
            report.rows += 1
            try:
                session = row[col["sessionid"]].strip()
                user = row[col["userid"]].strip()
                item = row[col["itemid"]].strip()
                ts = _day_ms(row[col["eventdate"]].strip()) + int(row[col["timeframe"]])
                if not session or not item:
                    raise ValueError("empty session or item id")
            except (ValueError, IndexError) as exc:
                report.bad_rows += 1
                if not report.first_error:
                    report.first_error = f"line {line_no}: {exc}"
                continue
            events.append(
                UserEvent(
                    event_id=f"dg-{session}-{line_no}",
                    event_type=EventType.VIEW,
                    user_id=user if user and user != "NA" else f"anon-{session}",
                    session_id=session,
                    timestamp_ms=ts,
                    item_id=item,
                )
            )
    events.sort(key=lambda e: (e.timestamp_ms, e.session_id))
    report.events = len(events)
    return events, report


def split_by_time(
    events: list[UserEvent], test_days: float
) -> tuple[list[UserEvent], list[UserEvent]]:
    """Split time-ordered events at ``last timestamp - test_days``, keeping sessions whole: a
    session belongs to the side its first event falls on, so no test session leaks into
    training and no training event comes after the cut of its own session."""
    if not events:
        return [], []
    cut = max(e.timestamp_ms for e in events) - int(test_days * 24 * 3600 * 1000)
    first: dict[str, int] = {}
    for e in events:
        first.setdefault(e.session_id, e.timestamp_ms)
    train = [e for e in events if first[e.session_id] < cut]
    test = [e for e in events if first[e.session_id] >= cut]
    return train, test
