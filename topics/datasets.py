"""Shared pieces for turning data files into canonical ``UserEvent`` lists.

``LoadReport`` accounts for every input row, and there are helpers for compressed files,
timestamps and sessions. It also holds the DIGINETICA views loader used by the demo and by
training, and ``split_by_time``. The generic column-mapped importer is ``topics.importer``, and
the ready-made loaders for the other public datasets are in ``topics.loaders``. Events come back
in event-time order.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from topics.events import EventType, UserEvent

ID_MAX_CHARS = 256  # parse_event's limits: events beyond them would not re-import
MAX_TS_MS = 32_503_680_000_000  # year 3000, as in parse_event
MAX_EXAMPLES = 3
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class LoadReport:
    """Accounting for one load: ``rows == events + bad_rows + skipped_rows``.

    ``bad`` counts rows that could not be parsed and ``skipped`` counts rows that parsed but are
    left out on purpose (a loader's documented choice, e.g. cancelled orders), both by reason.
    ``examples`` keeps the first few of each reason, with file and line, so they can be found.
    """

    source: str = ""
    rows: int = 0
    events: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def bad_rows(self) -> int:
        return sum(self.bad.values())

    @property
    def skipped_rows(self) -> int:
        return sum(self.skipped.values())

    @property
    def first_error(self) -> str:
        """The first example of the first bad reason ('' when every row was read)."""
        for reason in self.bad:
            return f"{reason}: {self.examples[reason][0]}"
        return ""

    def add_bad(self, reason: str, where: str, detail: str = "") -> None:
        self.bad[reason] += 1
        self._example(reason, where, detail)

    def add_skipped(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        self._example(reason, where, detail)

    def _example(self, reason: str, where: str, detail: str) -> None:
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(f"{where}: {detail}" if detail else where)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "rows": self.rows, "events": self.events,
            "bad": dict(self.bad), "skipped": dict(self.skipped),
            "examples": self.examples, "notes": self.notes,
        }  # fmt: skip

    def summary(self) -> str:
        """Human-readable report: totals, then one line per reason with its first examples."""
        lines = [
            f"source: {self.source}",
            f"rows {self.rows:,}  events {self.events:,}  bad {self.bad_rows:,}  "
            f"skipped {self.skipped_rows:,}",
        ]
        for title, counts in (("bad rows", self.bad), ("skipped rows", self.skipped)):
            if counts:
                lines.append(f"{title} by reason:")
                for reason, n in counts.most_common():
                    examples = "; ".join(self.examples[reason])
                    lines.append(f"  {reason:26s} {n:>9,}  e.g. {examples}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def open_binary(path: Path) -> IO[bytes]:
    """Open for reading, decompressing gzip by its magic bytes (not its name)."""
    raw = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
    if raw.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOWrapper:
    """Text reader as the csv module wants it (``newline=''``); a UTF-8 BOM is dropped."""
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in {"utf-8", "utf8"} else encoding
    return io.TextIOWrapper(open_binary(path), encoding=enc, newline="")


class TimeUnit(StrEnum):
    AUTO = "auto"
    S = "s"
    MS = "ms"
    ISO = "iso"


def parse_time_ms(text: str, unit: TimeUnit, tz: tzinfo = UTC) -> int:
    """Event time in ms since the epoch; naive ISO-8601 times are read in ``tz``.

    Raises ``ValueError`` for text that is no time in ``unit``, or one outside 1970..3000 (what
    ``parse_event`` accepts), so the caller can count the row as bad."""
    if unit is TimeUnit.ISO:
        dt = datetime.fromisoformat(text.strip())
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=tz)
        ms = (dt - _EPOCH) // timedelta(milliseconds=1)
    elif unit is TimeUnit.S or unit is TimeUnit.MS:
        try:
            value: float = int(text)
        except ValueError:
            value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite number")
        ms = round(value * 1000) if unit is TimeUnit.S else round(value)
    else:
        raise ValueError("resolve TimeUnit.AUTO with detect_time_unit first")
    if not 0 <= ms <= MAX_TS_MS:
        raise ValueError(f"{text!r} read as {unit.value} is outside 1970..3000")
    return ms


def detect_time_unit(samples: Iterable[str]) -> TimeUnit:
    """Guess a column's unit from sample values: mostly numbers means seconds, or milliseconds
    when the median is >= 1e11 (year 5138 in s, 1973 in ms: the ranges cannot be confused);
    mostly non-numbers means ISO-8601. A majority vote, so a few bad cells cannot flip it."""
    numbers: list[float] = []
    others = 0
    for text in samples:
        try:
            numbers.append(float(text))
        except ValueError:
            others += 1
    if others > len(numbers):
        return TimeUnit.ISO
    if not numbers:
        return TimeUnit.S
    numbers.sort()
    return TimeUnit.MS if numbers[len(numbers) // 2] >= 1e11 else TimeUnit.S


def assign_sessions(events: Sequence[UserEvent], gap_min: float) -> None:
    """Set ``session_id`` per user by inactivity: more than ``gap_min`` minutes since the user's
    previous event starts a new session ``<user>-s<n>`` (n from 1). ``events`` must be in time
    order; the numbering depends only on the data, so a re-import gives the same ids."""
    gap_ms = gap_min * 60_000
    last: dict[str, tuple[int, int]] = {}
    for e in events:
        prev = last.get(e.user_id)
        n = 1 if prev is None else prev[1] + int(e.timestamp_ms - prev[0] > gap_ms)
        last[e.user_id] = (e.timestamp_ms, n)
        session = f"{e.user_id}-s{n}"
        if len(session) > ID_MAX_CHARS:  # still a valid id for parse_event
            session = "s-" + hashlib.sha1(session.encode()).hexdigest()
        e.session_id = session


@lru_cache(maxsize=4096)
def day_ms(day: str) -> int:
    """Midnight UTC of a ``YYYY-MM-DD`` day, in ms."""
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


def read_diginetica_views(path: Path, report: LoadReport) -> tuple[list[UserEvent], dict[str, int]]:
    """Views plus each session's start (midnight UTC of its first ``eventdate``), which
    ``topics.loaders`` needs to put purchases on the same clock as the views."""
    events: list[UserEvent] = []
    start: dict[str, int] = {}
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=";")
        header = [h.strip().lower().replace("_", "") for h in next(reader, [])]
        names = ("sessionid", "userid", "itemid", "timeframe", "eventdate")
        if not set(names) <= set(header):
            raise ValueError(f"{path}: not a DIGINETICA views file (header {header})")
        col = [header.index(n) for n in names]
        for line_no, row in enumerate(reader, start=2):
            report.rows += 1
            where = f"{path.name} line {line_no}"
            if len(row) != len(header):
                report.add_bad("wrong_column_count", where, f"{len(row)} != {len(header)}")
                continue
            session, user, item, frame, day = (row[i].strip() for i in col)
            if not session or not item:
                report.add_bad("missing_item" if session else "missing_session", where)
                continue
            try:
                base = day_ms(day)
                ts = base + int(frame)
            except ValueError:
                report.add_bad("bad_timestamp", where, f"eventdate {day!r} timeframe {frame!r}")
                continue
            start[session] = min(start.get(session, base), base)
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
    return events, start


def load_diginetica_views(path: Path) -> tuple[list[UserEvent], LoadReport]:
    """Read DIGINETICA item views (``session_id;user_id;item_id;timeframe;eventdate``; the full
    release spells the header ``sessionId;userId;itemId;timeframe;eventdate``).

    ``timeframe`` is milliseconds since the session started, so the event time is the
    session's day (midnight UTC) plus ``timeframe``. Anonymous sessions (``user_id`` NA) get
    the user ``anon-<session_id>``.
    """
    report = LoadReport(source=str(path))
    events, _ = read_diginetica_views(path, report)
    events.sort(key=lambda e: (e.timestamp_ms, e.session_id))
    report.events = len(events)
    return events, report


DAY_MS = 24 * 3600 * 1000


def split_by_time(
    events: list[UserEvent], test_days: float
) -> tuple[list[UserEvent], list[UserEvent]]:
    """Split time-ordered events at ``cut = last timestamp - test_days``. Test holds the
    sessions that start at or after the cut, whole; train holds the events before the cut of
    the sessions that started before it (their events after the cut are dropped), so every
    training event precedes every test event: nothing of the future leaks into training."""
    if not events:
        return [], []
    cut = max(e.timestamp_ms for e in events) - int(test_days * 24 * 3600 * 1000)
    first: dict[str, int] = {}
    for e in events:
        first.setdefault(e.session_id, e.timestamp_ms)
    train = [e for e in events if first[e.session_id] < cut and e.timestamp_ms < cut]
    test = [e for e in events if first[e.session_id] >= cut]
    return train, test


def split_train_valid_test(
    events: list[UserEvent],
    test_days: float,
    valid_days: float,
    *,
    min_valid_events: int = 0,
    max_valid_share: float = 0.3,
) -> tuple[list[UserEvent], list[UserEvent], list[UserEvent]]:
    """The evaluation protocol's split: test = sessions starting in the last ``test_days``;
    validation = sessions starting in the last ``valid_days`` before that (carved from the
    training period, for choices); train = the rest. Sessions stay whole and belong to the
    split their first event falls in, so no session straddles two splits.

    A sparse period can leave a few dozen validation events, too few to choose anything
    with; with ``min_valid_events`` the validation period is widened back in time until it
    holds about that many events, but never beyond ``max_valid_share`` of the events before
    test (training keeps the rest)."""
    before_test, test = split_by_time(events, test_days)
    if not before_test or valid_days <= 0:
        return before_test, [], test
    wanted = min(min_valid_events, int(max_valid_share * len(before_test)))
    if wanted > 0:
        stamps = sorted(e.timestamp_ms for e in before_test)
        widest = (stamps[-1] - stamps[-wanted]) / DAY_MS
        valid_days = max(valid_days, widest)
    train, valid = split_by_time(before_test, valid_days)
    return train, valid, test
