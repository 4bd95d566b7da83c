"""The pure parts of deploy/local/render_dashboard.py (no Prometheus): layout from gridPos,
legendFormat, template variables, units and stat panel values; and one render of the real
dashboard JSON with synthetic data."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local" / "render_dashboard.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_dashboard", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_dashboard"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rd = _load()
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "streamrec.json").read_text())


# --- layout -----------------------------------------------------------------------------------


def test_panel_rect_maps_the_grid_to_figure_fractions() -> None:
    full = rd.panel_rect({"x": 0, "y": 0, "w": 24, "h": 10}, 10)
    assert (full.left, full.bottom, full.width, full.height) == pytest.approx((0, 0, 1, 1))
    # Right third, lower half of a 20-unit grid: y grows downwards in Grafana.
    r = rd.panel_rect({"x": 16, "y": 10, "w": 8, "h": 10}, 20)
    assert (r.left, r.bottom, r.width, r.height) == pytest.approx((2 / 3, 0, 1 / 3, 0.5))
    top = rd.panel_rect({"x": 0, "y": 0, "w": 12, "h": 10}, 20)
    assert top.bottom == pytest.approx(0.5) and top.bottom + top.height == pytest.approx(1)


def test_panel_rect_leaves_room_for_the_header_and_gaps() -> None:
    r = rd.panel_rect({"x": 0, "y": 0, "w": 24, "h": 10}, 10, top=0.1)
    assert r.bottom + r.height == pytest.approx(0.9)
    g = rd.panel_rect({"x": 0, "y": 0, "w": 12, "h": 10}, 10, gap=0.01)
    assert g.left == pytest.approx(0.005) and g.width == pytest.approx(0.49)
    assert g.height < 1


def test_the_real_dashboard_tiles_without_overlaps() -> None:
    panels = rd.flatten_panels(DASHBOARD)
    assert rd.grid_height(panels) == max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= rd.GRID_COLUMNS, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_collapsed_rows_keep_their_panels() -> None:
    dash = {
        "panels": [
            {
                "type": "row",
                "title": "A",
                "collapsed": True,
                "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1},
                "panels": [
                    {"type": "stat", "title": "inner", "gridPos": {"x": 0, "y": 1, "w": 8, "h": 4}}
                ],
            },
            {"type": "timeseries", "title": "after", "gridPos": {"x": 0, "y": 5, "w": 8, "h": 4}},
        ]
    }
    assert [p["title"] for p in rd.flatten_panels(dash)] == ["A", "inner", "after"]
    assert rd.grid_height(rd.flatten_panels(dash)) == 9


# --- legends ----------------------------------------------------------------------------------


def test_legend_format_substitutes_labels() -> None:
    labels = {"version": "v2", "arm": "B", "instance": "w1:9108"}
    assert rd.legend_text("{{version}} {{arm}}", labels) == "v2 B"
    assert rd.legend_text("{{ version }}/{{arm}}", labels) == "v2/B"
    assert rd.legend_text("error: {{stage}}", labels) == "error: "  # absent label: empty
    assert rd.legend_text("p99", labels) == "p99"


def test_no_legend_format_names_the_series_by_its_selector() -> None:
    labels = {"__name__": "up", "job": "w", "instance": "a:1"}
    assert rd.legend_text(None, labels) == 'up{instance="a:1", job="w"}'
    assert rd.legend_text("__auto", {"__name__": "up"}) == "up"
    assert rd.legend_text("{{missing}}", {"kind": "x"}) == '{kind="x"}'
    assert rd.legend_text("", {}) == "{}"


# --- variables --------------------------------------------------------------------------------


def test_dashboard_variables_resolve_to_their_defaults() -> None:
    v = rd.resolve_variables(DASHBOARD)
    assert v == {"instance": ".*", "window": "30m"}  # "All" -> allValue; the custom default


def test_variable_overrides() -> None:
    v = rd.resolve_variables(DASHBOARD, {"window": "10m", "instance": "10.0.0.1:9108,w-2:9108"})
    assert v["window"] == "10m"
    assert v["instance"] == r"(10\.0\.0\.1:9108|w-2:9108)"
    assert rd.resolve_variables(DASHBOARD, {"instance": "a.b:1"})["instance"] == r"a\.b:1"
    assert rd.resolve_variables(DASHBOARD, {"instance": "All"})["instance"] == ".*"


def test_all_without_all_value_lists_the_options() -> None:
    dash = {
        "templating": {
            "list": [
                {
                    "name": "job",
                    "multi": True,
                    "includeAll": True,
                    "current": {"value": ["$__all"]},
                    "definition": "label_values(up, job)",
                    "options": [],
                },
            ]
        }
    }
    asked: list[str] = []

    def options(var: dict[str, object]) -> list[str]:
        asked.append(str(var["definition"]))
        return ["a", "b.c"]

    assert rd.resolve_variables(dash, None, options) == {"job": r"(a|b\.c)"}
    assert asked == ["label_values(up, job)"]


def test_substitute_every_syntax() -> None:
    variables = {"instance": ".*", "window": "30m", "__rate_interval": "8s"}
    expr = 'rate(x{instance=~"$instance"}[$__rate_interval]) / rate(y[${window}]) + z[[window]]'
    assert rd.substitute(expr, variables) == ('rate(x{instance=~".*"}[8s]) / rate(y[30m]) + z30m')
    assert rd.substitute("a[${window:text}] $unknown", variables) == "a[30m] $unknown"
    # $instance must not eat a longer name's prefix.
    assert rd.substitute("$instances", variables) == "$instances"


def test_every_dashboard_query_is_left_without_variables() -> None:
    variables = rd.resolve_variables(DASHBOARD)
    variables.update(rd.builtin_variables(step_s=1, scrape_s=1, range_s=180))
    for panel in rd.flatten_panels(DASHBOARD):
        for target in panel.get("targets", []):
            assert "$" not in rd.substitute(target["expr"], variables), target["expr"]


def test_builtin_intervals_follow_grafana() -> None:
    assert rd.rate_interval(step_s=1, scrape_s=2) == 8  # 4 x scrape
    assert rd.rate_interval(step_s=30, scrape_s=2) == 32  # step + scrape
    b = rd.builtin_variables(step_s=2, scrape_s=1, range_s=180)
    assert b["__rate_interval"] == "4s" and b["__interval"] == "2s" and b["__range"] == "180s"
    assert rd.duration(0.5) == "500ms" and rd.duration(60) == "60s"
    assert rd.choose_step(0, 180, 1.0) == 1.0 and rd.choose_step(0, 3600, 1.0) == 12.0


# --- units and stat values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0.0123, "percentunit", "1.23%"),
        (40.0, "reqps", "40 req/s"),
        (12.5, "ops", "12.5 ops/s"),
        (85.0, "ms", "85 ms"),
        (2500.0, "ms", "2.5 s"),
        (90.0, "s", "1.5 min"),
        (1500.0, "short", "1.5 K"),
        (0.25, "none", "0.25"),
        (3.0, None, "3"),
        (float("nan"), "ms", "NaN"),
    ],
)
def test_format_value(value: float, unit: str | None, text: str) -> None:
    assert rd.format_value(value, unit) == text


def _panel(title: str) -> dict[str, object]:
    return next(p for p in rd.flatten_panels(DASHBOARD) if p.get("title") == title)


def test_stat_panels_use_mappings_thresholds_and_last_values() -> None:
    nan = math.nan
    up = rd.PanelData(
        [
            rd.Series("streamrec-worker w1", [1, 2, 3], [1.0, 0.0, nan]),
            rd.Series("streamrec-worker w2", [1, 2, 3], [1.0, 1.0, 1.0]),
            rd.Series("gone", [1, 2], [nan, nan]),
        ]
    )
    items = rd.stat_items(_panel("Targets up"), up)
    assert [(n, t) for n, t, _ in items] == [
        ("streamrec-worker w1", "down"),
        ("streamrec-worker w2", "up"),
    ]
    assert items[0][2] == rd.NAMED_COLORS["red"] and items[1][2] == rd.NAMED_COLORS["green"]
    lag = rd.stat_items(_panel("Total consumer lag"), rd.PanelData([rd.Series("lag", [1], [2000])]))
    assert lag == [("lag", "2 K", rd.NAMED_COLORS["orange"])]
    # colorMode none: no color.
    served = rd.PanelData([rd.Series("v1 (CPU)", [1], [2.0])])
    assert rd.stat_items(_panel("Served version"), served) == [("v1 (CPU)", "2", None)]


def test_render_the_dashboard_with_synthetic_data(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    panels = rd.flatten_panels(DASHBOARD)
    times = [1_795_000_000.0 + i for i in range(60)]
    data = {
        i: rd.PanelData([rd.Series("s", times, [float(j % 7) for j in range(60)])])
        for i, p in enumerate(panels)
        if p["type"] != "row" and i % 3
    }
    out = tmp_path / "d.png"
    rd.render(DASHBOARD, data, out, start=times[0], end=times[-1], title="t", subtitle="s")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size < 1_000_000
