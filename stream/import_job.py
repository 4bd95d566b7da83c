"""``streamrec import``: files or a ready-made dataset -> canonical JSONL and/or a Kafka topic.

The parsing lives in ``topics.importer`` / ``topics.loaders``, so tests and training code can
use it without Kafka. This module only maps flags to an ``ImportSpec``, prints the
``LoadReport`` (every row that did not become an event is counted there by reason) and writes
the output. Kafka messages are keyed by ``user_id``, like every producer of ``user-events``.

``--items FILE`` imports a catalogue instead (``topics.importer.import_items``): item id,
title, category and price columns -> canonical ``CatalogueItem`` JSONL and/or the catalogue
topic, keyed by ``item_id``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from stream.settings import load_settings
from topics.catalogue import CatalogueItem
from topics.datasets import LoadReport, TimeUnit, load_diginetica_views, open_text
from topics.events import EventType, UserEvent
from topics.importer import (
    ImportSpec,
    ImportSpecError,
    ItemImportSpec,
    import_files,
    import_items,
    parse_type_map,
    write_items_jsonl,
    write_jsonl,
)
from topics.loaders import DATASETS, datasets_root, load_dataset


class _Record(Protocol):
    def to_bytes(self) -> bytes: ...


R = TypeVar("R", bound=_Record)


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    """The ``import`` flags (documented in docs/evaluation.md, "Importing data")."""
    src = p.add_argument_group("input")
    src.add_argument("paths", nargs="*", type=Path, help="CSV/TSV/JSONL files (.gz allowed)")
    src.add_argument(
        "--items",
        action="append",
        type=Path,
        metavar="FILE",
        help="a catalogue file (repeatable) instead of events: --item-col, --title-col, "
        "--category-col, --price-col; --topic then takes the catalogue topic",
    )
    src.add_argument("--dataset", choices=sorted(DATASETS), help="a ready-made loader instead")
    src.add_argument("--datasets-root", help="default: $STREAMREC_DATASETS or ../shared/datasets")
    src.add_argument("--format", default="auto", choices=["auto", "csv", "tsv", "jsonl"])
    src.add_argument("--delimiter", help="CSV field separator (default: sniffed from the header)")
    src.add_argument("--encoding", default="utf-8", help="text encoding (default utf-8)")
    cols = p.add_argument_group("columns (no column flag: the input is canonical JSONL)")
    cols.add_argument("--user-col", help="user id column")
    cols.add_argument("--session-col", help="session id column (default: derived by gap)")
    cols.add_argument("--item-col", help="item id column")
    cols.add_argument("--time-col", help="event time column")
    cols.add_argument(
        "--time-unit", default="auto", choices=[u.value for u in TimeUnit], help="default auto"
    )
    cols.add_argument("--timezone", default="UTC", help="zone of ISO times without an offset")
    cols.add_argument("--type-col", help="event type column")
    cols.add_argument("--type-map", default="", help="e.g. purchase=buy,view=pv|detail")
    cols.add_argument(
        "--default-type",
        default=EventType.VIEW.value,
        choices=[t.value for t in EventType],
        help="event type when there is no --type-col (default view)",
    )
    cols.add_argument("--query-col", help="search query column")
    cols.add_argument("--quantity-col", help="quantity column (whole numbers)")
    cols.add_argument("--price-col", help="unit price column")
    cols.add_argument("--title-col", help="item title column (--items)")
    cols.add_argument("--category-col", help="item category column (--items)")
    cols.add_argument("--session-gap-min", type=float, default=30.0, help="default 30")
    cols.add_argument("--id-prefix", help="event ids are PREFIX-LINE (default: the file stem)")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, help="write canonical JSONL here (.gz compresses)")
    out.add_argument(
        "--topic", help="produce to this Kafka topic, keyed by user_id (--items: by item_id)"
    )
    out.add_argument("--rate", type=float, default=0.0, help="events/s to Kafka (0 = max)")
    out.add_argument("--strict", action="store_true", help="any bad row: write nothing, exit 1")


def spec_from_args(args: argparse.Namespace) -> ImportSpec:
    """The ``ImportSpec`` the flags describe (``--delimiter '\\t'`` or ``tab`` means a tab)."""
    if getattr(args, "title_col", None) or getattr(args, "category_col", None):
        raise ImportSpecError("--title-col and --category-col map a catalogue: use --items FILE")
    delimiter = args.delimiter
    if delimiter in ("\\t", "tab"):
        delimiter = "\t"
    return ImportSpec(
        item_col=args.item_col,
        user_col=args.user_col,
        session_col=args.session_col,
        time_col=args.time_col,
        time_unit=TimeUnit(args.time_unit),
        timezone=args.timezone,
        type_col=args.type_col,
        type_map=parse_type_map(args.type_map),
        default_type=EventType(args.default_type),
        query_col=args.query_col,
        quantity_col=args.quantity_col,
        price_col=args.price_col,
        fmt=args.format,
        delimiter=delimiter,
        encoding=args.encoding,
        session_gap_min=args.session_gap_min,
        id_prefix=args.id_prefix,
    )


def load_from_args(args: argparse.Namespace) -> tuple[list[UserEvent], LoadReport]:
    """Events and report for either ``--dataset`` or the given files."""
    if args.dataset:
        if args.paths:
            raise ImportSpecError("give either files or --dataset, not both")
        return load_dataset(args.dataset, datasets_root(args.datasets_root))
    if not args.paths:
        raise ImportSpecError("give files to import, or --dataset NAME")
    for path in args.paths:
        if not path.is_file():
            raise ImportSpecError(f"{path}: no such file")
    return import_files(args.paths, spec_from_args(args))


def item_spec_from_args(args: argparse.Namespace) -> ItemImportSpec:
    """The ``ItemImportSpec`` of the ``--items`` flags; every item is stamped with now."""
    event_flags = ("user_col", "session_col", "time_col", "type_col", "query_col", "quantity_col")
    used = [f"--{f.removesuffix('_col')}-col" for f in event_flags if getattr(args, f)]
    if used:
        raise ImportSpecError(f"{', '.join(used)}: event columns, not for --items")
    if args.dataset or args.paths:
        raise ImportSpecError("--items takes the catalogue files; give no other files or --dataset")
    delimiter = "\t" if args.delimiter in ("\\t", "tab") else args.delimiter
    return ItemImportSpec(
        item_col=args.item_col,
        title_col=args.title_col,
        category_col=args.category_col,
        price_col=args.price_col,
        fmt=args.format,
        delimiter=delimiter,
        encoding=args.encoding,
        timestamp_ms=int(time.time() * 1000),
    )


def run_item_import(args: argparse.Namespace) -> int:
    """``streamrec import --items``: exit codes as ``run_import``."""

    def load() -> tuple[list[CatalogueItem], LoadReport]:
        spec = item_spec_from_args(args)
        for path in args.items:
            if not path.is_file():
                raise ImportSpecError(f"{path}: no such file")
        return import_items(args.items, spec)

    return _run(args, load, "catalogue items", write_items_jsonl, lambda i: i.item_id)


def run_import(args: argparse.Namespace) -> int:
    """Run one import: 0 on success, 2 for a usage or file problem, 1 with ``--strict`` when a
    row was bad (then nothing is written, so a partial import never reaches Kafka)."""
    if getattr(args, "items", None):
        return run_item_import(args)
    return _run(args, lambda: load_from_args(args), "events", write_jsonl, lambda e: e.user_id)


def _run(
    args: argparse.Namespace,
    load: Callable[[], tuple[Sequence[R], LoadReport]],
    noun: str,
    write: Callable[[Sequence[R], Path], int],
    key: Callable[[R], str],
) -> int:
    """Read (``load``), report, and write to ``--out`` and/or produce to ``--topic`` keyed by
    ``key``: the steps events and catalogue items share."""
    started = time.perf_counter()
    try:
        records, report = load()
    except UnicodeDecodeError as exc:
        print(f"streamrec import: error: {exc} (set --encoding, e.g. latin-1)", file=sys.stderr)
        return 2
    except (ValueError, OSError, KeyError) as exc:  # ImportSpecError, missing or broken files
        print(f"streamrec import: error: {exc}", file=sys.stderr)
        return 2
    summary = report.summary()
    print(summary if noun == "events" else summary.replace("  events ", "  items ", 1))
    print(f"read in {time.perf_counter() - started:.2f} s")
    if args.strict and report.bad_rows:
        print(f"--strict: {report.bad_rows:,} bad rows, nothing written", file=sys.stderr)
        return 1
    if args.out:
        n = write(records, args.out)
        print(f"wrote {n:,} {noun} to {args.out}")
    if args.topic:
        from stream.replay import produce  # aiokafka only when producing

        bootstrap = load_settings().kafka_bootstrap_servers
        messages = [(key(r).encode(), r.to_bytes()) for r in records]
        asyncio.run(produce(bootstrap, args.topic, messages, rate=args.rate))
        print(f"produced {len(messages):,} {noun} to {args.topic} at {bootstrap}")
    return 0


def load_events_file(path: Path) -> tuple[list[UserEvent], LoadReport]:
    """Events of one file: a DIGINETICA views file (recognised by its header) or canonical
    JSONL (``streamrec import --out``'s format). Used by ``train --data`` and ``evaluate
    --data``; other layouts go through ``streamrec import`` first."""
    if not path.is_file():
        raise ImportSpecError(f"{path}: no such file")
    with open_text(path) as fh:
        header = fh.readline().strip().lower().replace("_", "")
    if header.startswith("sessionid;") and "itemid" in header:
        return load_diginetica_views(path)
    return import_files([path], ImportSpec())
