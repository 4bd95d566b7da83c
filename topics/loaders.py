"""Ready-made loaders for the public datasets in ``../shared/datasets`` (``streamrec import
--dataset NAME``).

Each loader turns one dataset's native files into canonical events and a ``LoadReport`` in
which every input row is an event, a bad row or a deliberately skipped row, each by reason.
Every choice a loader makes (what a row becomes, what is skipped) is listed in
docs/evaluation.md. Event ids come from file names and line numbers, so a re-import gives the
same ids. The root is ``--datasets-root``, else ``$STREAMREC_DATASETS``, else
``<repo>/../shared/datasets``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from zoneinfo import ZoneInfo

from topics.datasets import (
    LoadReport,
    assign_sessions,
    load_diginetica_views,
    open_text,
    read_diginetica_views,
)
from topics.events import EventType, UserEvent

SESSION_GAP_MIN = 30.0
# Online Retail stock codes that are fees or postage rather than products; codes starting with
# "gift" (gift vouchers) are skipped too.
RETAIL_NON_PRODUCTS = frozenset(
    {"POST", "DOT", "M", "m", "C2", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS"}
)
RETAIL_TZ = "Europe/London"  # InvoiceDate is UK local time
_NON_SPACE = re.compile(r"\S")
LIKE_THRESHOLD = 4.0  # MovieLens rating from which a rating counts as a 'purchase' (liked)


def datasets_root(override: str | Path | None = None) -> Path:
    """``override``, else ``$STREAMREC_DATASETS``, else ``<repo>/../shared/datasets``."""
    if override:
        return Path(override)
    if env := os.environ.get("STREAMREC_DATASETS"):
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _header(reader: Iterator[list[str]], path: Path, names: tuple[str, ...]) -> list[int]:
    header = [h.strip() for h in next(reader, [])]
    if not set(names) <= set(header):
        raise ValueError(f"{path}: expected columns {list(names)}, header is {header}")
    return [header.index(n) for n in names]


def load_diginetica(root: Path) -> tuple[list[UserEvent], LoadReport]:
    """The views sample plus those purchases whose session is in it.

    A purchase joins its session at the session's clock (midnight of its first view day plus
    the purchase's ``timeframe``, ms since session start), as the user of the session's last
    view. The other purchases belong to sessions absent from the sample: skipped, by reason.
    """
    folder = root / "diginetica"
    report = LoadReport(source=str(folder))
    views, start = read_diginetica_views(folder / "sample_train-item-views.csv.gz", report)
    views.sort(key=lambda e: (e.timestamp_ms, e.session_id))
    user = {e.session_id: e.user_id for e in views}  # 8 sessions log in midway: latest wins
    events = list(views)
    path = folder / "train-purchases.csv.gz"
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=";")
        col = _header(reader, path, ("sessionId", "timeframe", "itemId"))
        for line_no, row in enumerate(reader, start=2):
            report.rows += 1
            where = f"{path.name} line {line_no}"
            if len(row) != 6:
                report.add_bad("wrong_column_count", where, f"{len(row)} fields")
                continue
            session, frame, item = (row[i].strip() for i in col)
            if session not in start:
                report.add_skipped("purchase_session_not_in_views_sample", where)
                continue
            if not item or not frame.isdigit():
                report.add_bad("missing_item" if not item else "bad_timestamp", where, frame)
                continue
            events.append(
                UserEvent(
                    event_id=f"dg-buy-{session}-{line_no}",
                    event_type=EventType.PURCHASE,
                    user_id=user[session],
                    session_id=session,
                    timestamp_ms=start[session] + int(frame),
                    item_id=item,
                )
            )
    events.sort(key=lambda e: (e.timestamp_ms, e.session_id))
    report.events = len(events)
    return events, report


def load_online_retail(
    root: Path, *, keep_guests: bool = True
) -> tuple[list[UserEvent], LoadReport]:
    """UCI Online Retail invoice lines as ``purchase`` events (quantity and unit price kept).

    session = invoice (one basket); user = CustomerID, or ``guest-<invoice>`` for the 135k
    lines without one (``keep_guests=False`` skips them). Cancellations (``C`` invoices),
    stock adjustments (quantity <= 0), fees/postage/vouchers and zero-price lines are skipped.
    """
    folder = root / "online-retail-uci" / "by-day"
    files = sorted(folder.glob("*.csv.gz"))
    if not files:
        raise FileNotFoundError(f"{folder}: no per-day files")
    report = LoadReport(source=str(folder))
    tz = ZoneInfo(RETAIL_TZ)
    times: dict[str, int] = {}
    events: list[UserEvent] = []
    names = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")
    for path in files:
        day, at = path.name.split(".")[0], f"{path.name} line "
        with open_text(path) as fh:
            reader = csv.reader(fh)
            pick = itemgetter(*_header(reader, path, names))
            prev = reader.line_num
            for row in reader:
                line_no, prev = prev + 1, reader.line_num
                report.rows += 1
                if len(row) != 8:
                    report.add_bad("wrong_column_count", at + str(line_no), f"{len(row)} fields")
                    continue
                invoice, code, qty_text, when, price_text, customer = pick(row)
                try:
                    qty, price = int(qty_text), float(price_text)
                except ValueError:
                    detail = f"{qty_text!r} {price_text!r}"
                    report.add_bad("bad_quantity_or_price", at + str(line_no), detail)
                    continue
                if reason := _retail_skip(invoice, code, qty, price, bool(customer) or keep_guests):
                    detail = f"{invoice} {code} qty {qty} price {price}"
                    report.add_skipped(reason, at + str(line_no), detail)
                    continue
                if not code or not invoice:
                    report.add_bad("missing_item", at + str(line_no))
                    continue
                if (ts := times.get(when)) is None:
                    try:
                        dt = datetime.strptime(when, "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz)
                    except ValueError:
                        report.add_bad("bad_timestamp", at + str(line_no), repr(when))
                        continue
                    ts = times[when] = int(dt.timestamp() * 1000)
                events.append(
                    UserEvent(
                        event_id=f"or-{day}-{line_no}",
                        event_type=EventType.PURCHASE,
                        user_id=customer.removesuffix(".0") if customer else f"guest-{invoice}",
                        session_id=invoice,
                        timestamp_ms=ts,
                        item_id=code,
                        quantity=qty,
                        price=price,
                    )
                )
    events.sort(key=lambda e: e.timestamp_ms)
    report.events = len(events)
    return events, report


def _retail_skip(invoice: str, code: str, qty: int, price: float, keep: bool) -> str:
    """Why an invoice line is not a sale of a product ('' when it is one)."""
    if invoice.startswith("C"):
        return "cancellation"
    if qty <= 0:
        return "stock_adjustment"
    if code in RETAIL_NON_PRODUCTS or code.startswith("gift"):
        return "non_product_code"
    if price <= 0:
        return "non_positive_price"
    return "" if keep else "no_customer_id"


def load_movielens(
    root: Path, *, like_threshold: float | None = LIKE_THRESHOLD
) -> tuple[list[UserEvent], LoadReport]:
    """One event per rating: ``purchase`` ('liked') when rating >= ``like_threshold``, else
    ``view`` (``like_threshold=None``: all views). Sessions: 30-minute gap per user."""
    path = root / "movielens-ml-latest-small" / "ratings.csv.gz"
    report = LoadReport(source=str(path))
    events: list[UserEvent] = []
    with open_text(path) as fh:
        reader = csv.reader(fh)
        col = _header(reader, path, ("userId", "movieId", "rating", "timestamp"))
        for line_no, row in enumerate(reader, start=2):
            report.rows += 1
            where = f"{path.name} line {line_no}"
            if len(row) != 4:
                report.add_bad("wrong_column_count", where, f"{len(row)} fields")
                continue
            user, item, rating_text, when = (row[i].strip() for i in col)
            try:
                rating, ts = float(rating_text), int(when) * 1000
            except ValueError:
                report.add_bad("bad_rating_or_timestamp", where, f"{rating_text!r} {when!r}")
                continue
            if not user or not item:
                report.add_bad("missing_user_or_item", where)
                continue
            liked = like_threshold is not None and rating >= like_threshold
            kind = EventType.PURCHASE if liked else EventType.VIEW
            events.append(UserEvent(f"ml-{line_no}", kind, user, "", ts, item_id=item))
    events.sort(key=lambda e: e.timestamp_ms)
    assign_sessions(events, SESSION_GAP_MIN)
    report.events = len(events)
    return events, report


def load_amazon_fashion(root: Path) -> tuple[list[UserEvent], LoadReport]:
    """One event per review: ``purchase`` when ``verified``, else ``view``; time is
    ``unixReviewTime`` (a day). The file is concatenated pretty-printed JSON, so objects are
    decoded one after another; an object's line is where it starts. A review repeated with the
    same reviewer, item, day and text (the source lists it once per style variant) is skipped.
    """
    path = root / "amazon-fashion-5core" / "AMAZON_FASHION_5.json.gz"
    report = LoadReport(source=str(path))
    with open_text(path) as fh:
        text = fh.read()
    decoder, pos, line, seen = json.JSONDecoder(), 0, 1, set()
    events: list[UserEvent] = []
    while match := _NON_SPACE.search(text, pos):
        start = match.start()
        line += text.count("\n", pos, start)
        first_line, where = line, f"{path.name} line {line}"
        report.rows += 1
        try:
            obj, pos = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:  # resume at the next object that starts a line
            report.add_bad("malformed_json", where, exc.msg)
            pos = text.find("\n{", start + 1) + 1 or len(text)
            line += text.count("\n", start, pos)
            continue
        line += text.count("\n", start, pos)
        user, item, when = obj.get("reviewerID"), obj.get("asin"), obj.get("unixReviewTime")
        if not user or not item or not isinstance(when, int) or isinstance(when, bool):
            report.add_bad("missing_field", where, "reviewerID, asin and unixReviewTime needed")
            continue
        key = (user, item, when, obj.get("reviewText"))
        if key in seen:
            report.add_skipped("duplicate_review", where, f"{user} {item}")
            continue
        seen.add(key)
        kind = EventType.PURCHASE if obj.get("verified") else EventType.VIEW
        events.append(UserEvent(f"amzf-{first_line}", kind, str(user), "", when * 1000, str(item)))
    events.sort(key=lambda e: e.timestamp_ms)
    assign_sessions(events, SESSION_GAP_MIN)
    report.events = len(events)
    return events, report


@dataclass(frozen=True, slots=True)
class Dataset:
    """A ``--dataset`` name, its folder under the datasets root and its loader."""

    name: str
    folder: str
    load: Callable[[Path], tuple[list[UserEvent], LoadReport]]
    about: str


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("diginetica", "diginetica", load_diginetica, "views sample + its purchases"),
        Dataset("online-retail", "online-retail-uci", load_online_retail, "invoice lines"),
        Dataset("movielens", "movielens-ml-latest-small", load_movielens, "ratings"),
        Dataset("amazon-fashion", "amazon-fashion-5core", load_amazon_fashion, "reviews"),
    )
}


def load_dataset(name: str, root: Path | None = None) -> tuple[list[UserEvent], LoadReport]:
    """Load a dataset by its ``--dataset`` name from ``root`` (default: ``datasets_root()``)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    folder = (root or datasets_root()) / dataset.folder
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found (set --datasets-root or STREAMREC_DATASETS)")
    return dataset.load(folder.parent)


__all__ = [
    "DATASETS",
    "Dataset",
    "datasets_root",
    "load_amazon_fashion",
    "load_dataset",
    "load_diginetica",
    "load_diginetica_views",
    "load_movielens",
    "load_online_retail",
]
