"""``streamrec import --items``: catalogue files -> canonical CatalogueItems (topics/importer.py,
stream/import_job.py), every row accounted for."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from stream.cli import build_parser, main
from topics.catalogue import parse_catalogue_item
from topics.importer import ImportSpecError, ItemImportSpec, import_items, write_items_jsonl

CSV = """product_uid,product_title,search_term,dept,cost
100001,Simpson Strong-Tie 12-Gauge Angle,angle bracket,Hardware,3.5
100002,"BEHR Premium Textured DeckOver 1-gal. #SC-141 Tugboat Wood, Concrete",deck,Paint,
100001,Simpson Strong-Tie 12-Gauge Angle,l bracket,Hardware,3.5
100003,,empty title,Paint,1
,No id,x,Paint,1
100004,Cordless drill,drill,Tools,-2
100005,Lawn mower,mower,Outdoor,cheap
100006,Kitchen faucet,faucet,Plumbing
"""


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(text.encode(encoding))
    else:
        path.write_bytes(text.encode(encoding))
    return path


SPEC = ItemImportSpec(
    item_col="product_uid", title_col="product_title", category_col="dept",
    price_col="cost", timestamp_ms=123,
)  # fmt: skip


def test_mapped_csv_rows_become_items_and_bad_rows_are_counted(tmp_path: Path) -> None:
    items, report = import_items([write(tmp_path, "hd.csv.gz", CSV)], SPEC)
    assert [(i.item_id, i.title, i.category, i.price) for i in items] == [
        ("100002", "BEHR Premium Textured DeckOver 1-gal. #SC-141 Tugboat Wood, Concrete",
         "Paint", None),
        ("100001", "Simpson Strong-Tie 12-Gauge Angle", "Hardware", 3.5),
    ]  # fmt: skip
    assert all(i.timestamp_ms == 123 for i in items)
    assert report.rows == 8 and report.events == 2
    assert dict(report.bad) == {
        "missing_title": 1,
        "missing_item": 1,
        "bad_price": 2,
        "wrong_column_count": 1,
    }
    assert dict(report.skipped) == {"duplicate_item": 1}
    assert report.rows == report.events + report.bad_rows + report.skipped_rows


def test_canonical_jsonl_round_trips(tmp_path: Path) -> None:
    items, _ = import_items([write(tmp_path, "hd.csv", CSV)], SPEC)
    out = tmp_path / "items.jsonl"
    assert write_items_jsonl(items, out) == 2
    assert [parse_catalogue_item(line) for line in out.read_bytes().splitlines()] == items
    again, report = import_items([out], ItemImportSpec())
    assert again == items and report.bad_rows == 0
    (tmp_path / "bad.jsonl").write_text(out.read_text() + '{"item_id": "x"}\n')
    _, report = import_items([tmp_path / "bad.jsonl"], ItemImportSpec())
    assert dict(report.bad) == {"missing_field": 1}


def test_a_mapped_import_needs_item_and_title_columns(tmp_path: Path) -> None:
    with pytest.raises(ImportSpecError, match="--title-col"):
        import_items([write(tmp_path, "a.csv", CSV)], ItemImportSpec(item_col="product_uid"))
    with pytest.raises(ImportSpecError, match="--title-col 'nope'"):
        import_items(
            [write(tmp_path, "a.csv", CSV)],
            ItemImportSpec(item_col="product_uid", title_col="nope"),
        )


def test_cli_writes_canonical_items_and_strict_refuses_bad_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path, "hd.csv", CSV.replace("Angle", "Angle \u00e5"), encoding="latin-1")
    out = tmp_path / "items.jsonl"
    flags = ["import", "--items", str(src), "--encoding", "latin-1",
             "--item-col", "product_uid", "--title-col", "product_title"]  # fmt: skip
    assert main([*flags, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "items 4" in printed and "missing_title" in printed
    assert len(out.read_bytes().splitlines()) == 4
    assert "\u00e5" in out.read_text(encoding="utf-8")
    out.unlink()
    assert main([*flags, "--out", str(out), "--strict"]) == 1 and not out.exists()
    assert main(["import", "--items", str(src), "--item-col", "product_uid"]) == 2
    assert main([*flags, "--user-col", "x"]) == 2  # an event column with --items


def test_catalogue_flags_without_items_are_refused(tmp_path: Path) -> None:
    src = write(tmp_path, "ev.csv", "u,i,t\nu1,i1,1700000000\n")
    args = ["import", str(src), "--user-col", "u", "--item-col", "i", "--time-col", "t"]
    assert main([*args, "--title-col", "x"]) == 2
    assert build_parser().parse_args(["import", "--items", "a.csv"]).items == [Path("a.csv")]
