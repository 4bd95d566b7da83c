"""Ready-made loaders on the real files in ../shared/datasets: counts against the numbers the
READMEs state, the documented choices, and canonical validity of every event produced.

The real-data tests are skipped only when the datasets directory is absent. Each dataset is
loaded once per module (Online Retail, the largest, takes about 5 s; ``pytest --durations=0``
shows the times). The last test builds small copies with broken rows, to check that they are
counted rather than dropped.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stream.cli import main
from topics.datasets import LoadReport, load_diginetica_views
from topics.events import EventType, UserEvent, parse_event
from topics.importer import ImportSpec, import_files
from topics.loaders import DATASETS, datasets_root, load_dataset, load_online_retail

ROOT = datasets_root()
real_data = pytest.mark.skipif(not ROOT.is_dir(), reason=f"datasets not present at {ROOT}")
Loaded = tuple[list[UserEvent], LoadReport]


def _utc_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def loaded() -> Callable[[str], Loaded]:
    cache: dict[str, Loaded] = {}

    def get(name: str) -> Loaded:
        if name not in cache:
            started = time.perf_counter()
            cache[name] = load_dataset(name, ROOT)
            assert time.perf_counter() - started < 30, f"{name} loads too slowly"
        return cache[name]

    return get


@real_data
@pytest.mark.parametrize("name", sorted(DATASETS))
@real_data
def test_every_row_is_accounted_for_and_events_are_canonical(
    loaded: Callable[[str], Loaded], name: str
) -> None:
    events, report = loaded(name)
    assert report.rows == report.events + report.bad_rows + report.skipped_rows
    assert report.events == len(events) > 0
    assert len({e.event_id for e in events}) == len(events)
    times = [e.timestamp_ms for e in events]
    assert times == sorted(times)
    for e in events[:: max(1, len(events) // 3000)]:  # parse_event is the worker's check
        assert parse_event(e.to_bytes()) == e


@real_data
def test_diginetica_views_match_the_readme(loaded: Callable[[str], Loaded]) -> None:
    path = ROOT / "diginetica" / "sample_train-item-views.csv.gz"
    views, report = load_diginetica_views(path)  # the demo's loader keeps working
    assert report.rows == report.events == 12_391
    assert report.bad_rows == 0 and report.first_error == ""
    assert len({e.session_id for e in views}) == 2_986
    assert len({e.item_id for e in views}) == 7_139
    assert _utc_ms("2016-01-03") <= views[0].timestamp_ms < _utc_ms("2016-01-04")
    assert views[-1].timestamp_ms < _utc_ms("2016-06-02")

    events, report = loaded("diginetica")
    assert report.rows == 12_391 + 18_025  # views + every purchase line, each accounted for
    purchases = [e for e in events if e.event_type is EventType.PURCHASE]
    assert len(purchases) == report.events - 12_391 > 0
    assert report.skipped == {"purchase_session_not_in_views_sample": 18_025 - len(purchases)}
    users = {e.session_id: e.user_id for e in views}
    assert all(users[p.session_id] == p.user_id for p in purchases)


@real_data
def test_online_retail_matches_the_readme(loaded: Callable[[str], Loaded]) -> None:
    events, report = loaded("online-retail")
    assert report.rows == 541_909
    assert report.skipped["cancellation"] == 9_288
    assert report.bad_rows == 0
    assert set(report.skipped) <= {
        "cancellation", "stock_adjustment", "non_product_code", "non_positive_price"
    }  # fmt: skip
    assert all(e.event_type is EventType.PURCHASE for e in events)
    assert all(e.quantity and e.quantity > 0 and e.price and e.price > 0 for e in events)
    assert all(not e.item_id.startswith(("POST", "DOT")) for e in events if e.item_id)
    # UK local time: winter = UTC, summer = UTC+1
    assert events[0].timestamp_ms == _utc_ms("2010-12-01 08:26:00")
    assert events[-1].timestamp_ms == _utc_ms("2011-12-09 12:50:00")
    june = next(e for e in events if e.event_id == "or-2011-06-01-2")
    assert june.timestamp_ms == _utc_ms("2011-06-01 06:37:00")  # 07:37 BST
    assert (june.user_id, june.session_id, june.item_id) == ("15643", "555156", "23299")
    assert (june.quantity, june.price) == (6, 3.75)
    guests = [e for e in events if e.user_id.startswith("guest-")]
    assert guests and all(e.user_id == f"guest-{e.session_id}" for e in guests)
    assert not any(e.user_id.endswith(".0") for e in events)


@real_data
def test_movielens_matches_the_readme(loaded: Callable[[str], Loaded]) -> None:
    events, report = loaded("movielens")
    assert report.rows == report.events == 100_836
    assert len({e.user_id for e in events}) == 610
    assert len({e.item_id for e in events}) == 9_724
    assert events[0].timestamp_ms == _utc_ms("1996-03-29 18:36:55")
    assert events[-1].timestamp_ms == _utc_ms("2018-09-24 14:27:30")
    kinds = {e.event_type for e in events}
    assert kinds == {EventType.VIEW, EventType.PURCHASE}  # purchase = rating >= 4 ('liked')
    assert all(e.session_id.startswith(f"{e.user_id}-s") for e in events)


@real_data
def test_amazon_fashion_matches_the_readme(loaded: Callable[[str], Loaded]) -> None:
    events, report = loaded("amazon-fashion")
    assert report.rows == 3_176
    assert set(report.skipped) <= {"duplicate_review"} and report.bad_rows == 0
    assert len({e.user_id for e in events}) == 406
    assert len({e.item_id for e in events}) == 31
    assert events[0].timestamp_ms == _utc_ms("2009-12-25")
    assert events[-1].timestamp_ms == _utc_ms("2018-07-05")


@real_data
def test_dataset_output_round_trips_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "amazon.jsonl"
    args = ["import", "--dataset", "amazon-fashion", "--datasets-root", str(ROOT)]
    assert main([*args, "--out", str(out)]) == 0
    events, _ = load_dataset("amazon-fashion", ROOT)
    back, report = import_files([out], ImportSpec(fmt="jsonl"))
    assert back == events and report.bad_rows == 0


@real_data
def test_unknown_or_absent_dataset_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(KeyError, match="choose from"):
        load_dataset("yoochoose", ROOT)
    with pytest.raises(FileNotFoundError, match="STREAMREC_DATASETS"):
        load_dataset("movielens", tmp_path)
    monkeypatch.setenv("STREAMREC_DATASETS", str(tmp_path))
    assert datasets_root() == tmp_path
    assert datasets_root("/elsewhere") == Path("/elsewhere")


def test_loaders_count_broken_rows_by_reason(tmp_path: Path) -> None:
    day = tmp_path / "online-retail-uci" / "by-day"
    day.mkdir(parents=True)
    head = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    rows = [
        "1,A1,CUP,2,2011-01-04 10:00:00,1.5,17850.0,UK",
        "2,A2,MUG,two,2011-01-04 10:01:00,1.5,17850.0,UK",  # line 3: bad quantity
        '3,A3,"PLATE, BLUE",1,2011-01-04 10:02:00,2.0,,UK',  # guest, quoted comma
        "C4,A1,CUP,-2,2011-01-04 10:03:00,1.5,17850.0,UK",  # cancellation
        "5,A5,BOWL,1,2011-01-04 25:00:00,1.0,17850.0,UK",  # line 6: bad time
        "6,A6,SHORT,1",  # line 7: a row cut short
    ]
    (day / "2011-01-04.csv.gz").write_bytes(gzip.compress((head + "\n".join(rows)).encode()))
    events, report = load_dataset("online-retail", tmp_path)
    assert [(e.user_id, e.item_id) for e in events] == [("17850", "A1"), ("guest-3", "A3")]
    assert report.bad == {"bad_quantity_or_price": 1, "bad_timestamp": 1, "wrong_column_count": 1}
    assert report.examples["bad_timestamp"] == ["2011-01-04.csv.gz line 6: '2011-01-04 25:00:00'"]
    assert report.skipped == {"cancellation": 1}
    _, strict = load_online_retail(tmp_path, keep_guests=False)
    assert strict.skipped["no_customer_id"] == 1

    amazon = tmp_path / "amazon-fashion-5core"
    amazon.mkdir()
    text = (
        '{\n "reviewerID": "r1", "asin": "a1",\n'  # lines 1-4: one pretty-printed object
        ' "unixReviewTime": 1441324800,\n "verified": true}\n'
        '{\n "reviewerID": "r1", "asin": \n}\n'  # line 5: broken object
        '{"reviewerID": "r2", "asin": "a1", "unixReviewTime": 1441411200}\n'
        '{"reviewerID": "r3", "asin": "a2"}\n'  # line 9: no time
    )
    (amazon / "AMAZON_FASHION_5.json.gz").write_bytes(gzip.compress(text.encode()))
    events, report = load_dataset("amazon-fashion", tmp_path)
    assert [(e.event_id, e.event_type) for e in events] == [
        ("amzf-1", EventType.PURCHASE), ("amzf-8", EventType.VIEW)
    ]  # fmt: skip
    assert report.rows == 4 and report.bad == {"malformed_json": 1, "missing_field": 1}
    assert report.examples["malformed_json"][0].startswith("AMAZON_FASHION_5.json.gz line 5")
    assert report.examples["missing_field"][0].startswith("AMAZON_FASHION_5.json.gz line 9")
