"""Generic event importer: CSV, TSV or JSONL files (optionally gzip) -> canonical ``UserEvent``s.

Real logs arrive in many layouts, so instead of one loader per source the columns are mapped by
an ``ImportSpec`` (the ``streamrec import`` flags). Every input row becomes an event or is
counted in the ``LoadReport`` under a reason with its file and line, so bad data is visible
instead of silently shrinking the dataset. The canonical JSONL that ``write_jsonl`` writes is an
input format too: with no column mapping each line goes through ``parse_event`` (the worker's
own validation), so an export re-imports to the very same events.

Catalogue files (``streamrec import --items``) go the same way into ``CatalogueItem``s:
``ItemImportSpec`` maps the item id, title, category and price columns, ``import_items``
reads them (canonical JSONL through ``parse_catalogue_item``) and ``write_items_jsonl``
writes the canonical form.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any, Protocol

import orjson

from topics.catalogue import CatalogueItem, CatalogueLimits, parse_catalogue_item
from topics.datasets import (
    ID_MAX_CHARS,
    LoadReport,
    TimeUnit,
    assign_sessions,
    detect_time_unit,
    open_binary,
    open_text,
    parse_time_ms,
)
from topics.events import EventType, InvalidEvent, Limits, UserEvent, parse_event

# Cell values that mean "no value" in exported logs (pandas, R and SQL spell it differently).
NULLS = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"})
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_DETECT_SAMPLE = 1000  # rows used to auto-detect the time unit
_ROLES = ("item", "user", "session", "time", "type", "query", "quantity", "price")
_NEEDED = "--item-col, --time-col and --user-col or --session-col"
_TYPES = {t.value: t for t in EventType}
_LIMITS = Limits()


class ImportSpecError(ValueError):
    """The files and the flags do not fit together (e.g. a mapped column is absent). Raised
    before any event is produced; the message names the flag to fix."""


class _BadRow(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ImportSpec:
    """How a file's columns map to event fields: one attribute per ``streamrec import`` flag.

    No column flag at all means the files are canonical JSONL. Without ``session_col`` sessions are
    derived per user by ``session_gap_min``; without ``user_col`` the user is
    ``anon-<session>``. Event ids are ``<id_prefix or file stem>-<line>``.
    """

    item_col: str | None = None
    user_col: str | None = None
    session_col: str | None = None
    time_col: str | None = None
    time_unit: TimeUnit = TimeUnit.AUTO
    timezone: str = "UTC"
    type_col: str | None = None
    type_map: Mapping[str, EventType] = field(default_factory=dict)
    default_type: EventType = EventType.VIEW
    query_col: str | None = None
    quantity_col: str | None = None
    price_col: str | None = None
    fmt: str = "auto"
    delimiter: str | None = None
    encoding: str = "utf-8"
    session_gap_min: float = 30.0
    id_prefix: str | None = None

    @property
    def canonical(self) -> bool:
        """No column mapped at all: the input is canonical JSONL."""
        return not self.columns()

    def check(self) -> None:
        """Raise ``ImportSpecError`` naming the flags a mapped import still needs."""
        if self.canonical:
            if self.fmt in ("csv", "tsv"):
                raise ImportSpecError(f"--format {self.fmt} needs {_NEEDED}")
            return
        required = (("--item-col", self.item_col), ("--time-col", self.time_col))
        missing = [flag for flag, col in required if not col]
        if not (self.user_col or self.session_col):
            missing.append("--user-col or --session-col")
        if missing:
            raise ImportSpecError(f"missing {', '.join(missing)} (a mapped import needs {_NEEDED})")

    def columns(self) -> dict[str, str]:
        """Role -> mapped column name, for the roles that are mapped."""
        return {r: c for r in _ROLES if (c := getattr(self, f"{r}_col"))}


def parse_type_map(text: str) -> dict[str, EventType]:
    """``"purchase=buy,view=pv|detail"`` -> ``{"buy": PURCHASE, "pv": VIEW, "detail": VIEW}``:
    the canonical type on the left, the file's value(s) on the right."""
    mapping: dict[str, EventType] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, values = part.partition("=")
        try:
            kind = EventType(name.strip())
        except ValueError:
            allowed = ", ".join(t.value for t in EventType)
            raise ImportSpecError(f"--type-map: {name.strip()!r} is not one of {allowed}") from None
        if not values.strip():
            raise ImportSpecError(f"--type-map: {part!r} must look like {kind.value}=FILE_VALUE")
        mapping.update({v.strip(): kind for v in values.split("|")})
    return mapping


def resolve_tz(name: str) -> tzinfo:
    """``UTC`` or an IANA zone name (``Europe/London``), for ISO times without an offset."""
    if name.upper() == "UTC":
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ImportSpecError(f"--timezone: unknown time zone {name!r}") from exc


def import_files(paths: Sequence[Path], spec: ImportSpec) -> tuple[list[UserEvent], LoadReport]:
    """Import ``paths`` (each file's time unit detected on its own) into one list in event-time
    order (stable: ties keep file order) and the report that accounts for every row."""
    spec.check()
    stems = [path.name.removesuffix(".gz").rsplit(".", 1)[0] for path in paths]
    if len(set(stems)) != len(stems):
        raise ImportSpecError(f"file names {stems} repeat, so their event ids would collide")
    report = LoadReport(source=", ".join(str(p) for p in paths))
    events: list[UserEvent] = []
    for path, stem in zip(paths, stems, strict=True):
        if spec.canonical:
            events.extend(_read_canonical(path, report))
            continue
        prefix = spec.id_prefix or stem
        if spec.id_prefix and len(paths) > 1:
            prefix = f"{spec.id_prefix}-{stem}"
        events.extend(_read_mapped(path, spec, report, prefix))
    events.sort(key=lambda e: e.timestamp_ms)
    if not spec.canonical and not spec.session_col:
        assign_sessions(events, spec.session_gap_min)
        report.notes.append(f"sessions derived per user, gap > {spec.session_gap_min:g} min")
    report.events = len(events)
    return events, report


def write_jsonl(events: Iterable[UserEvent], path: Path) -> int:
    """Write canonical events, one ``UserEvent.to_dict()`` JSON object per line (gzip when the
    name ends in ``.gz``), atomically so a reader never sees half a file. Returns the count."""
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with gzip.open(tmp, "wb") if path.suffix == ".gz" else open(tmp, "wb") as fh:
        for e in events:
            fh.write(orjson.dumps(e.to_dict()) + b"\n")
            n += 1
    os.replace(tmp, path)
    return n


def _read_canonical(path: Path, report: LoadReport) -> list[UserEvent]:
    events: list[UserEvent] = []
    with open_binary(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            report.rows += 1
            where = f"{path.name} line {line_no}"
            if not line.strip():
                report.add_skipped("blank_line", where)
                continue
            if line_no == 1 and not line.lstrip().startswith(b"{"):
                raise ImportSpecError(f"{path.name} is not canonical JSONL; map it with {_NEEDED}")
            try:
                events.append(parse_event(line, _LIMITS))
            except InvalidEvent as exc:
                report.add_bad(exc.reason.value, where, exc.detail)
    return events


class _Layout(Protocol):
    """What ``_records`` reads of an ``ImportSpec`` or ``ItemImportSpec``."""

    @property
    def fmt(self) -> str: ...
    @property
    def delimiter(self) -> str | None: ...
    @property
    def encoding(self) -> str: ...
    def columns(self) -> dict[str, str]: ...


def _records(path: Path, spec: _Layout, report: LoadReport) -> list[tuple[int, dict[str, Any]]]:
    """(line, role -> raw cell) for every structurally sound row; structural problems (column
    count, JSON syntax) are counted here. A mapped column absent from the file raises
    ``ImportSpecError``, naming its flag."""
    with open_text(path, spec.encoding) as fh:
        first = fh.readline()
        fmt = spec.fmt
        if fmt == "auto":
            ext = Path(path.name.removesuffix(".gz")).suffix.lower()
            fmt = _FORMATS.get(ext) or ("jsonl" if first.lstrip().startswith("{") else "csv")
        lines = itertools.chain([first], fh)
        if fmt == "jsonl":
            return list(_jsonl_records(path.name, lines, spec.columns(), report))
        delimiter = spec.delimiter or ("\t" if fmt == "tsv" else None)
        if delimiter is None:  # csv: the most frequent usual separator in the header line
            delimiter = max(",;|\t", key=first.count)
        return list(_table_records(path.name, lines, delimiter, spec.columns(), report))


def _jsonl_records(
    name: str, lines: Iterable[str], cols: dict[str, str], report: LoadReport
) -> Iterator[tuple[int, dict[str, Any]]]:
    seen: set[str] = set()
    for line_no, line in enumerate(lines, start=1):
        report.rows += 1
        where = f"{name} line {line_no}"
        if not line.strip():
            report.add_skipped("blank_line", where)
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            report.add_bad("malformed_json", where, str(exc)[:120])
            continue
        if not isinstance(obj, dict):
            report.add_bad("not_an_object", where, type(obj).__name__)
            continue
        seen.update(obj)
        yield line_no, {role: obj.get(col) for role, col in cols.items()}
    absent = [f"--{r}-col {c!r}" for r, c in cols.items() if seen and c not in seen]
    if absent:
        raise ImportSpecError(f"{name}: {', '.join(absent)}: no object has that key")


def _table_records(
    name: str, lines: Iterable[str], delimiter: str, cols: dict[str, str], report: LoadReport
) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(reader, [])]
    absent = [f"--{r}-col {c!r}" for r, c in cols.items() if c not in header]
    if absent:
        raise ImportSpecError(
            f"{name}: {', '.join(absent)}: no such column in the header {header} "
            f"(delimiter {delimiter!r}; set --delimiter if that is wrong)"
        )
    index = {role: header.index(col) for role, col in cols.items()}
    prev_line = reader.line_num
    for row in reader:  # a quoted field may span lines: a row starts after the previous one
        line_no, prev_line = prev_line + 1, reader.line_num
        report.rows += 1
        where = f"{name} line {line_no}"
        if not row:
            report.add_skipped("blank_line", where)
        elif len(row) != len(header):
            report.add_bad("wrong_column_count", where, f"{len(row)} fields, not {len(header)}")
        else:
            yield line_no, {role: row[i] for role, i in index.items()}


def _text(value: Any, role: str) -> str | None:
    """A cell as stripped text, or None for an empty / null cell."""
    if value is None:
        return None
    if isinstance(value, bool | dict | list):
        raise _BadRow("wrong_type", f"{role} is {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return None if text in NULLS else text


def _id(raw: dict[str, Any], role: str) -> str | None:
    text = _text(raw.get(role), role)
    if text is not None and len(text) > ID_MAX_CHARS:
        raise _BadRow("id_too_long", f"{role} has {len(text)} characters")
    return text


def _read_mapped(path: Path, spec: ImportSpec, report: LoadReport, prefix: str) -> list[UserEvent]:
    rows = _records(path, spec, report)
    unit = spec.time_unit
    if unit is TimeUnit.AUTO:
        sample = (t for _, raw in rows[:_DETECT_SAMPLE] if (t := _safe_text(raw.get("time"))))
        unit = detect_time_unit(sample)
        report.notes.append(f"{path.name}: time unit auto-detected as {unit.value}")
    tz = resolve_tz(spec.timezone)
    events: list[UserEvent] = []
    for line_no, raw in rows:
        try:
            events.append(_to_event(raw, spec, unit, tz, f"{prefix}-{line_no}"))
        except _BadRow as exc:
            report.add_bad(exc.reason, f"{path.name} line {line_no}", str(exc))
    return events


def _safe_text(value: Any) -> str | None:
    try:
        return _text(value, "time")
    except _BadRow:
        return None


def _to_event(
    raw: dict[str, Any], spec: ImportSpec, unit: TimeUnit, tz: tzinfo, event_id: str
) -> UserEvent:
    when = _text(raw.get("time"), "time")
    if when is None:
        raise _BadRow("missing_timestamp")
    try:
        ts = parse_time_ms(when, unit, tz)
    except ValueError:
        raise _BadRow("bad_timestamp", f"{when!r} is not a time in unit {unit.value}") from None
    kind = spec.default_type
    if spec.type_col:
        value = _text(raw.get("type"), "type") or ""
        found = spec.type_map.get(value) or _TYPES.get(value.lower())
        if found is None:
            raise _BadRow("unknown_event_type", f"{value!r} (map it with --type-map)")
        kind = found
    item = _id(raw, "item")
    query = _text(raw.get("query"), "query")
    if kind is EventType.SEARCH and query is None:
        raise _BadRow("missing_query", "a search needs a query")
    if kind is not EventType.SEARCH and item is None:
        raise _BadRow("missing_item")
    if query is not None and len(query) > _LIMITS.max_query_chars:
        raise _BadRow("query_too_long", f"{len(query)} characters")
    user, session = _id(raw, "user"), _id(raw, "session")
    if spec.session_col and session is None:
        raise _BadRow("missing_session")
    if user is None and session is None:
        raise _BadRow("missing_user")
    return UserEvent(
        event_id=event_id,
        event_type=kind,
        user_id=user if user is not None else f"anon-{session}",
        session_id=session or "",
        timestamp_ms=ts,
        item_id=item,
        query=query,
        quantity=_number(raw, "quantity", int),
        price=_number(raw, "price", float),
    )


def _number(raw: dict[str, Any], role: str, kind: type[int] | type[float]) -> Any:
    """An optional quantity (whole number) or price (finite number); else a bad row."""
    text = _text(raw.get(role), role)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (kind is int and not value.is_integer()):
        raise _BadRow(f"bad_{role}", repr(text))
    return kind(value)


# ------------------------------------------------------------------------------ catalogue

_ITEM_ROLES = ("item", "title", "category", "price")
_ITEM_NEEDED = "--item-col and --title-col"
_CATALOGUE_LIMITS = CatalogueLimits()


@dataclass(frozen=True, slots=True)
class ItemImportSpec:
    """How a catalogue file's columns map to ``CatalogueItem`` fields (``streamrec import
    --items`` flags). No column flag at all means the files are canonical catalogue JSONL.
    Files carry no time: every item gets ``timestamp_ms`` (the import's start by default)."""

    item_col: str | None = None
    title_col: str | None = None
    category_col: str | None = None
    price_col: str | None = None
    fmt: str = "auto"
    delimiter: str | None = None
    encoding: str = "utf-8"
    timestamp_ms: int = 0

    @property
    def canonical(self) -> bool:
        return not self.columns()

    def check(self) -> None:
        """Raise ``ImportSpecError`` naming the flags a mapped import still needs."""
        if self.canonical:
            if self.fmt in ("csv", "tsv"):
                raise ImportSpecError(f"--format {self.fmt} needs {_ITEM_NEEDED}")
            return
        missing = [f for f, c in (("--item-col", self.item_col), ("--title-col", self.title_col))
                   if not c]  # fmt: skip
        if missing:
            raise ImportSpecError(f"missing {', '.join(missing)} (a catalogue import needs both)")

    def columns(self) -> dict[str, str]:
        return {r: c for r in _ITEM_ROLES if (c := getattr(self, f"{r}_col"))}


def import_items(
    paths: Sequence[Path], spec: ItemImportSpec
) -> tuple[list[CatalogueItem], LoadReport]:
    """Import catalogue files into one list, one item per id (a later row of the same id
    replaces the earlier one and is counted under ``skipped: duplicate_item``), in order of
    each id's last row; the report accounts for every row."""
    spec.check()
    report = LoadReport(source=", ".join(str(p) for p in paths))
    latest: dict[str, CatalogueItem] = {}
    for path in paths:
        if spec.canonical:
            read = _read_canonical_items(path, report)
        else:
            read = _read_mapped_items(path, spec, report)
        for where, item in read:
            if latest.pop(item.item_id, None) is not None:
                report.add_skipped("duplicate_item", where, f"item {item.item_id!r} again")
            latest[item.item_id] = item
    report.events = len(latest)
    return list(latest.values()), report


def write_items_jsonl(items: Iterable[CatalogueItem], path: Path) -> int:
    """Write canonical catalogue records, one JSON object per line (gzip when the name ends
    in ``.gz``), atomically. Returns the count."""
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with gzip.open(tmp, "wb") if path.suffix == ".gz" else open(tmp, "wb") as fh:
        for item in items:
            fh.write(item.to_bytes() + b"\n")
            n += 1
    os.replace(tmp, path)
    return n


def _read_canonical_items(path: Path, report: LoadReport) -> list[tuple[str, CatalogueItem]]:
    out: list[tuple[str, CatalogueItem]] = []
    with open_binary(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            report.rows += 1
            where = f"{path.name} line {line_no}"
            if not line.strip():
                report.add_skipped("blank_line", where)
                continue
            if line_no == 1 and not line.lstrip().startswith(b"{"):
                raise ImportSpecError(
                    f"{path.name} is not canonical catalogue JSONL; map it with {_ITEM_NEEDED}"
                )
            try:
                out.append((where, parse_catalogue_item(line, _CATALOGUE_LIMITS)))
            except InvalidEvent as exc:
                report.add_bad(exc.reason.value, where, exc.detail)
    return out


def _read_mapped_items(
    path: Path, spec: ItemImportSpec, report: LoadReport
) -> list[tuple[str, CatalogueItem]]:
    out: list[tuple[str, CatalogueItem]] = []
    limits = _CATALOGUE_LIMITS
    for line_no, raw in _records(path, spec, report):
        where = f"{path.name} line {line_no}"
        try:
            item = _id(raw, "item")
            if item is None:
                raise _BadRow("missing_item")
            title = _text(raw.get("title"), "title")
            if title is None:
                raise _BadRow("missing_title")
            if len(title) > limits.max_title_chars:
                raise _BadRow("title_too_long", f"{len(title)} characters")
            category = _text(raw.get("category"), "category")
            if category is not None and len(category) > limits.max_category_chars:
                raise _BadRow("category_too_long", f"{len(category)} characters")
            price = _number(raw, "price", float)
            if price is not None and price < 0:
                raise _BadRow("bad_price", repr(price))
        except _BadRow as exc:
            report.add_bad(exc.reason, where, str(exc))
            continue
        out.append((where, CatalogueItem(item, title, spec.timestamp_ms, category, price)))
    return out
