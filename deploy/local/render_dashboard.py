"""Renders the Grafana dashboard (deploy/grafana/dashboards/streamrec.json) to one PNG from a
Prometheus server, without Grafana: the same queries, the same layout.

Every panel's targets run against Prometheus' HTTP API (``/api/v1/query_range`` over
``--start``..``--end``) after the dashboard's template variables are resolved as Grafana
would (``$instance``: its current value, "All" -> its ``allValue``; ``$window``: its current
value; ``$__rate_interval``, ``$__interval``, ``$__range``: from the step and the scrape
interval). Rows become headings; panels keep their ``gridPos`` (24 columns, rows of 30 px);
time series are lines named by ``legendFormat``; stat panels show their last value (value
mappings, thresholds, text mode) as a big number; units come from ``fieldConfig``.

    python deploy/local/render_dashboard.py --prometheus http://127.0.0.1:29090 \\
        --start 1795000000 --end 1795000180 --out docs/dashboard.png

Only the standard library, numpy and matplotlib (the train extra); nothing from stream/.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamrec.json"

GRID_COLUMNS = 24
# Grafana's grid: one gridPos unit of height is 30 px; a 24-column width of ~1800 px.
UNIT_H_PX = 30
WIDTH_PX = 1800

ALL = "$__all"

# Grafana's dark theme and its classic palette.
BG = "#111217"
PANEL_BG = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9e"
PALETTE = [
    "#73BF69",
    "#F2CC0C",
    "#8AB8FF",
    "#FF780A",
    "#F2495C",
    "#5794F2",
    "#B877D9",
    "#705DA0",
    "#37872D",
    "#FADE2A",
    "#447EBC",
    "#C15C17",
]
NAMED_COLORS = {
    "green": "#73BF69",
    "red": "#F2495C",
    "orange": "#FF9830",
    "yellow": "#FADE2A",
    "blue": "#5794F2",
    "purple": "#B877D9",
    "text": TEXT,
    "transparent": PANEL_BG,
}


# --- Layout ---------------------------------------------------------------------------------


def flatten_panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel in dashboard order, rows included; the panels of a collapsed row (kept
    inside the row) follow the row, as Grafana shows them when it is expanded."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
    return out


def grid_height(panels: Iterable[Mapping[str, Any]]) -> int:
    """Height of the dashboard in grid units: the lowest panel bottom."""
    return max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels), default=0)


@dataclass(frozen=True, slots=True)
class Rect:
    """A panel's place as figure fractions (matplotlib's ``add_axes`` order)."""

    left: float
    bottom: float
    width: float
    height: float


def panel_rect(
    grid_pos: Mapping[str, int], total_h: int, *, top: float = 0.0, gap: float = 0.0
) -> Rect:
    """Where ``grid_pos`` (x, y, w, h in Grafana grid units; y downwards) goes in a figure
    whose grid is ``total_h`` units tall below a header of ``top`` (fraction of the figure
    height); ``gap`` (fraction of the width) is left free around each panel."""
    usable = 1.0 - top
    left = grid_pos["x"] / GRID_COLUMNS
    width = grid_pos["w"] / GRID_COLUMNS
    height = grid_pos["h"] / total_h * usable
    bottom = usable - (grid_pos["y"] + grid_pos["h"]) / total_h * usable
    gap_y = gap * WIDTH_PX / max(1, total_h * UNIT_H_PX) * usable
    return Rect(left + gap / 2, bottom + gap_y / 2, width - gap, height - gap_y)


# --- Variables ------------------------------------------------------------------------------


def _regex_escape(value: str) -> str:
    """Grafana's escaping of a value inside a Prometheus regex (prometheusRegularEscape)."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\1", value)


def format_variable(
    values: Sequence[str], *, multi: bool, all_value: str | None, options: Sequence[str]
) -> str:
    """A variable's text in a query: "All" is its ``allValue`` (else every option); several
    values of a multi-value variable become a regex alternation of escaped values."""
    vals = list(values)
    if ALL in vals:
        if all_value is not None:
            return all_value
        vals = list(options)
    if not multi or len(vals) == 1:
        return _regex_escape(vals[0]) if multi else (vals[0] if vals else "")
    return "(" + "|".join(_regex_escape(v) for v in vals) + ")"


def _current_values(var: Mapping[str, Any]) -> list[str]:
    value = var.get("current", {}).get("value")
    if value is None:
        opts = [o["value"] for o in var.get("options", []) if o.get("selected")]
        return opts[:1] or [""]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def resolve_variables(
    dashboard: Mapping[str, Any],
    overrides: Mapping[str, str] | None = None,
    query_options: Callable[[Mapping[str, Any]], list[str]] | None = None,
) -> dict[str, str]:
    """The query text of every template variable: its current value in the JSON, or
    ``overrides[name]`` (comma-separated for several; "All" for all). ``query_options`` lists
    the values of a query variable (only asked when "All" has no ``allValue``)."""
    out: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var["name"]
        values = _current_values(var)
        if overrides and name in overrides:
            raw = overrides[name]
            values = [ALL] if raw.lower() == "all" else [v for v in raw.split(",") if v]
        options: list[str] = [str(o["value"]) for o in var.get("options", [])]
        if ALL in values and var.get("allValue") is None and query_options is not None:
            options = query_options(var)
        out[name] = format_variable(
            values,
            multi=bool(var.get("multi")),
            all_value=var.get("allValue"),
            options=[o for o in options if o != ALL],
        )
    return out


def duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds (``15s``) or milliseconds (``1500ms``)."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def rate_interval(step_s: float, scrape_s: float) -> float:
    """Grafana's ``$__rate_interval``: max(interval + scrape interval, 4 x scrape interval)."""
    return max(step_s + scrape_s, 4 * scrape_s)


def builtin_variables(step_s: float, scrape_s: float, range_s: float) -> dict[str, str]:
    return {
        "__rate_interval": duration(rate_interval(step_s, scrape_s)),
        "__interval": duration(step_s),
        "__interval_ms": str(round(step_s * 1000)),
        "__range": duration(round(range_s)),
        "__range_s": str(round(range_s)),
        "__range_ms": str(round(range_s * 1000)),
    }


_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """``$name``, ``${name}``, ``${name:format}`` and ``[[name]]`` replaced by their text;
    unknown names are left as they are (Grafana does the same)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return variables.get(name, m.group(0))

    return _VAR.sub(repl, expr)


# --- Legends, units, values -----------------------------------------------------------------

_LEGEND = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def legend_text(legend_format: str | None, labels: Mapping[str, str]) -> str:
    """The series name: ``{{label}}`` replaced by the label's value (empty when absent), as
    Grafana does; no format (or ``__auto``) gives the selector ``name{a="b", ...}``."""
    if legend_format and legend_format != "__auto":
        text = _LEGEND.sub(lambda m: labels.get(m.group(1), ""), legend_format)
        if text.strip():
            return text
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    if rest:
        return f"{name}{{{rest}}}"
    return name or "{}"


_UNIT_SUFFIX = {
    "reqps": " req/s",
    "ops": " ops/s",
    "rps": " rd/s",
    "wps": " wr/s",
    "ms": " ms",
    "s": " s",
    "bytes": " B",
}


def _number(value: float, decimals: int | None = None) -> str:
    if decimals is not None:
        return f"{value:.{decimals}f}"
    mag = abs(value)
    if mag == 0:
        return "0"
    if mag >= 1e9:
        return f"{value / 1e9:.3g} Bil"
    if mag >= 1e6:
        return f"{value / 1e6:.3g} Mil"
    if mag >= 1e3:
        return f"{value / 1e3:.3g} K"
    if mag >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def format_value(value: float, unit: str | None) -> str:
    """A value as Grafana would print it for ``unit`` (the units this dashboard uses; others
    as plain numbers)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    unit = unit or "short"
    if unit == "percentunit":
        return f"{_number(value * 100)}%"
    if unit == "percent":
        return f"{_number(value)}%"
    if unit == "s" and abs(value) >= 60:
        if abs(value) >= 3600:
            return f"{value / 3600:.3g} h"
        return f"{value / 60:.3g} min"
    if unit == "ms" and abs(value) >= 1000:
        return f"{value / 1000:.3g} s"
    if unit == "none":
        return _number(value)
    return _number(value) + _UNIT_SUFFIX.get(unit, "")


def last_not_null(values: Sequence[float]) -> float | None:
    for v in reversed(values):
        if not math.isnan(v):
            return v
    return None


def threshold_color(value: float, thresholds: Mapping[str, Any] | None) -> str | None:
    """The color of the highest absolute threshold step at or below ``value``."""
    if not thresholds:
        return None
    color = None
    for step in thresholds.get("steps", []):
        if step.get("value") is None or value >= float(step["value"]):
            color = step.get("color")
    return NAMED_COLORS.get(color, color) if color else None


def value_mapping(value: float, mappings: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(text, color) of a value mapping that matches ``value``, if any."""
    for mapping in mappings:
        if mapping.get("type") != "value":
            continue
        for key, result in mapping.get("options", {}).items():
            try:
                hit = float(key) == value
            except ValueError:
                hit = False
            if hit:
                color = result.get("color", "")
                return str(result.get("text", key)), NAMED_COLORS.get(color, color)
    return None


# --- Prometheus -----------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    times: list[float]
    values: list[float]


@dataclass
class PanelData:
    series: list[Series] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Prometheus:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: Sequence[tuple[str, str]]) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=self.timeout_s) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(body.get("error", body))
        return body["data"]

    def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[tuple[dict[str, str], list[float], list[float]]]:
        data = self._get(
            "/api/v1/query_range",
            [
                ("query", expr),
                ("start", f"{start:.3f}"),
                ("end", f"{end:.3f}"),
                ("step", duration(step)),
            ],
        )
        out = []
        for result in data.get("result", []):
            times = [float(t) for t, _ in result["values"]]
            values = [float(v) for _, v in result["values"]]
            out.append((dict(result.get("metric", {})), times, values))
        return out

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        params = [("match[]", match), ("start", f"{start:.0f}"), ("end", f"{end:.0f}")]
        return [str(v) for v in self._get(f"/api/v1/label/{label}/values", params)]


_LABEL_VALUES = re.compile(r"label_values\(\s*(.*?)\s*,\s*(\w+)\s*\)\s*$")


def fetch_panel(
    prom: Prometheus,
    panel: Mapping[str, Any],
    variables: Mapping[str, str],
    start: float,
    end: float,
    step: float,
) -> PanelData:
    out = PanelData()
    for target in panel.get("targets", []):
        if target.get("hide") or not target.get("expr"):
            continue
        expr = substitute(target["expr"], variables)
        try:
            results = prom.query_range(expr, start, end, step)
        except Exception as err:  # one panel's error is shown in it, like Grafana
            out.errors.append(f"{target.get('refId', '?')}: {err}")
            continue
        for labels, times, values in results:
            name = legend_text(target.get("legendFormat"), labels)
            out.series.append(Series(name, times, values))
    return out


# --- Drawing --------------------------------------------------------------------------------


def _draw_frame(fig: Any, rect: Rect, title: str) -> Any:
    from matplotlib.patches import FancyBboxPatch

    fig.patches.append(
        FancyBboxPatch(
            (rect.left, rect.bottom),
            rect.width,
            rect.height,
            boxstyle="round,pad=0,rounding_size=0.002",
            transform=fig.transFigure,
            facecolor=PANEL_BG,
            edgecolor=BORDER,
            linewidth=0.8,
            zorder=-1,  # under the axes (figure patches are drawn after axes of equal zorder)
        )
    )
    fig.text(
        rect.left + 0.006,
        rect.bottom + rect.height - 0.004,
        title,
        color=TEXT,
        fontsize=10.5,
        fontweight="bold",
        va="top",
        ha="left",
    )


def _inner(rect: Rect, title_frac: float, legend_frac: float, left_frac: float) -> Rect:
    return Rect(
        rect.left + left_frac,
        rect.bottom + legend_frac,
        rect.width - left_frac - 0.008,
        rect.height - title_frac - legend_frac,
    )


def _no_data(fig: Any, rect: Rect, text: str = "No data") -> None:
    fig.text(
        rect.left + rect.width / 2,
        rect.bottom + rect.height / 2,
        text,
        color=MUTED,
        fontsize=11,
        ha="center",
        va="center",
    )


def draw_timeseries(
    fig: Any,
    rect: Rect,
    panel: Mapping[str, Any],
    data: PanelData,
    start: float,
    end: float,
    unit_h: float,
) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    series = [s for s in data.series if any(not math.isnan(v) for v in s.values)]
    n_legend = min(len(series), 6)
    legend_rows = math.ceil(n_legend / 3) if n_legend else 0
    legend_frac = (0.75 + 0.5 * legend_rows) * unit_h
    ax = fig.add_axes(as_tuple(_inner(rect, 1.1 * unit_h, legend_frac, 64 / WIDTH_PX)))
    ax.set_facecolor(PANEL_BG)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=7.5, length=0)
    ax.grid(True, color=BORDER, linewidth=0.6)
    ax.set_xlim(start, end)
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _: datetime.fromtimestamp(x, tz=UTC).strftime("%H:%M:%S"))
    )
    ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: format_value(y, unit)))
    if data.errors and not series:
        _no_data(fig, rect, "query error: " + data.errors[0][:80])
        ax.set_yticks([])
        return
    if not series:
        ax.set_yticks([])
        _no_data(fig, rect)
        return
    fill = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {}).get("fillOpacity", 0)
    handles = []
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        (line,) = ax.plot(s.times, s.values, color=color, linewidth=1.2, label=s.name)
        if fill:
            ax.fill_between(s.times, s.values, color=color, alpha=float(fill) / 200, linewidth=0)
        handles.append(line)
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(0.0, lo), hi if hi > 0 else 1.0)
    labels = [s.name for s in series[:n_legend]]
    if len(series) > n_legend:
        labels[-1] += f"  (+{len(series) - n_legend} more)"
    fig.legend(
        handles[:n_legend],
        labels,
        loc="lower left",
        bbox_to_anchor=(rect.left + 0.004, rect.bottom + 0.12 * unit_h),
        bbox_transform=fig.transFigure,
        ncol=min(3, n_legend),
        frameon=False,
        fontsize=7.5,
        labelcolor=TEXT,
        handlelength=1.2,
        columnspacing=1.2,
        borderaxespad=0,
        borderpad=0,
    )


def as_tuple(rect: Rect) -> tuple[float, float, float, float]:
    return (rect.left, rect.bottom, rect.width, rect.height)


def stat_items(panel: Mapping[str, Any], data: PanelData) -> list[tuple[str, str, str | None]]:
    """(name, value text, color) of each series of a stat panel, by its options: the last
    non-null value, value mappings before thresholds, ``textMode`` deciding what is shown."""
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    options = panel.get("options", {})
    unit = defaults.get("unit")
    color_mode = options.get("colorMode", "value")
    items: list[tuple[str, str, str | None]] = []
    for s in data.series:
        value = last_not_null(s.values)
        if value is None:
            continue
        mapped = value_mapping(value, defaults.get("mappings", []))
        text = mapped[0] if mapped else format_value(value, unit)
        color = (mapped[1] if mapped and mapped[1] else None) or threshold_color(
            value, defaults.get("thresholds")
        )
        if color_mode == "none":
            color = None
        items.append((s.name, text, color))
    return items


def draw_stat(
    fig: Any, rect: Rect, panel: Mapping[str, Any], data: PanelData, unit_h: float
) -> None:
    from matplotlib.patches import FancyBboxPatch

    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    options = panel.get("options", {})
    text_mode = options.get("textMode", "auto")
    color_mode = options.get("colorMode", "value")
    items = stat_items(panel, data)
    if not items:
        _no_data(fig, rect, str(defaults.get("noValue", "No data")))
        return
    series = [s for s in data.series if last_not_null(s.values) is not None]
    if options.get("graphMode") == "area" and len(series) == 1:
        # Grafana's sparkline: the series under the number, in the value's colour.
        spark = _inner(rect, 0.55 * rect.height, 0.15 * unit_h, 0.003)
        ax = fig.add_axes(as_tuple(spark))
        ax.set_axis_off()
        spark_color = items[0][2] or PALETTE[0]
        ax.fill_between(
            series[0].times, series[0].values, color=spark_color, alpha=0.25, linewidth=0
        )
        ax.plot(series[0].times, series[0].values, color=spark_color, linewidth=1)
    area = _inner(rect, 1.0 * unit_h, 0.25 * unit_h, 0.006)
    n = len(items)
    cols = min(n, 3 if n > 4 else n)
    rows = math.ceil(n / cols)
    cell_w = area.width / cols
    cell_h = area.height / rows
    big = max(9.0, min(30.0, 26.0 / max(1, rows) * (1.0 if cols < 3 else 0.8)))
    for i, (name, text, color) in enumerate(items):
        r, c = divmod(i, cols)
        x0 = area.left + c * cell_w
        y0 = area.bottom + area.height - (r + 1) * cell_h
        fg = color or TEXT
        if color_mode == "background" and color:
            fig.patches.append(
                FancyBboxPatch(
                    (x0 + 0.002, y0 + 0.0015),
                    cell_w - 0.004,
                    cell_h - 0.003,
                    boxstyle="round,pad=0,rounding_size=0.002",
                    transform=fig.transFigure,
                    facecolor=color,
                    edgecolor="none",
                    zorder=1,
                )
            )
            fg = "#ffffff"
        show_name = text_mode in ("name", "value_and_name") or (text_mode == "auto" and n > 1)
        show_value = text_mode != "name"
        cx = x0 + cell_w / 2
        if show_name and show_value:
            fig.text(
                cx,
                y0 + cell_h * 0.72,
                name,
                color=fg,
                fontsize=8.5,
                ha="center",
                va="center",
                zorder=2,
            )
            fig.text(
                cx,
                y0 + cell_h * 0.36,
                text,
                color=fg,
                fontsize=big,
                ha="center",
                va="center",
                fontweight="bold",
                zorder=2,
            )
        else:
            label = name if show_name else text
            size = big if show_value else max(9.0, min(18.0, big * 0.7))
            fig.text(
                cx,
                y0 + cell_h / 2,
                label,
                color=fg,
                fontsize=size,
                ha="center",
                va="center",
                fontweight="bold",
                zorder=2,
            )


def render(
    dashboard: Mapping[str, Any],
    panel_data: Mapping[int, PanelData],
    out: Path,
    *,
    start: float,
    end: float,
    title: str,
    subtitle: str,
    dpi: int = 72,
) -> None:
    """Draw the dashboard with ``panel_data`` (by index into ``flatten_panels``) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = flatten_panels(dashboard)
    total_h = grid_height(panels)
    header_px = 70
    height_px = total_h * UNIT_H_PX + header_px
    fig = plt.figure(figsize=(WIDTH_PX / dpi, height_px / dpi), dpi=dpi, facecolor=BG)
    top = header_px / height_px
    unit_h = (1 - top) / total_h  # one grid unit as a figure fraction of height
    fig.text(
        0.004,
        1 - 0.35 * top,
        title,
        color=TEXT,
        fontsize=17,
        fontweight="bold",
        va="center",
        ha="left",
    )
    fig.text(0.004, 1 - 0.75 * top, subtitle, color=MUTED, fontsize=10, va="center", ha="left")
    for i, panel in enumerate(panels):
        rect = panel_rect(panel["gridPos"], total_h, top=top, gap=0.004)
        if panel.get("type") == "row":
            fig.text(
                rect.left,
                rect.bottom + rect.height / 2,
                panel.get("title", ""),
                color=TEXT,
                fontsize=13,
                fontweight="bold",
                va="center",
                ha="left",
            )
            continue
        _draw_frame(fig, rect, panel.get("title", ""))
        data = panel_data.get(i, PanelData())
        if panel.get("type") == "stat":
            draw_stat(fig, rect, panel, data, unit_h)
        elif panel.get("type") == "timeseries":
            draw_timeseries(fig, rect, panel, data, start, end, unit_h)
        else:
            _no_data(fig, rect, f"(panel type {panel.get('type')} not rendered)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor=BG)
    plt.close(fig)
    _shrink_png(out)


def _shrink_png(path: Path) -> None:
    """Re-save with an adaptive 256-colour palette (Pillow, a matplotlib dependency): the
    dark flat UI loses nothing visible and the file shrinks severalfold."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


# --- CLI ------------------------------------------------------------------------------------


def choose_step(start: float, end: float, scrape_s: float, points: int = 300) -> float:
    """Grafana's interval: the range over the panel's points, never below the scrape
    interval, rounded up to whole seconds."""
    return float(max(scrape_s, math.ceil((end - start) / points)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:29090", help="Prometheus URL")
    ap.add_argument("--dashboard", default=str(DASHBOARD), help="dashboard JSON")
    ap.add_argument("--start", type=float, help="epoch seconds (default: --end minus 15 min)")
    ap.add_argument("--end", type=float, help="epoch seconds (default: now)")
    ap.add_argument("--scrape-interval", type=float, default=1.0, help="seconds, for rates")
    ap.add_argument("--var", action="append", default=[], help="NAME=VALUE[,VALUE] (or All)")
    ap.add_argument("--subtitle", default="", help="second title line (run, commit)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    ap.add_argument("--dpi", type=int, default=72)
    args = ap.parse_args(argv)

    dashboard = json.loads(Path(args.dashboard).read_text())
    end = args.end if args.end is not None else time.time()
    start = args.start if args.start is not None else end - 900
    step = choose_step(start, end, args.scrape_interval)
    prom = Prometheus(args.prometheus)
    overrides = dict(v.split("=", 1) for v in args.var)

    def options(var: Mapping[str, Any]) -> list[str]:
        m = _LABEL_VALUES.match(str(var.get("definition", "")))
        return prom.label_values(m.group(2), m.group(1), start, end) if m else []

    variables = resolve_variables(dashboard, overrides, options)
    variables.update(builtin_variables(step, args.scrape_interval, end - start))
    panels = flatten_panels(dashboard)
    data: dict[int, PanelData] = {}
    empty: list[str] = []
    for i, panel in enumerate(panels):
        if panel.get("type") == "row":
            continue
        data[i] = fetch_panel(prom, panel, variables, start, end, step)
        if not any(any(not math.isnan(v) for v in s.values) for s in data[i].series):
            empty.append(panel.get("title", "?"))
        for err in data[i].errors:
            print(f"{panel.get('title')}: {err}", file=sys.stderr)
    span = (
        f"{datetime.fromtimestamp(start, tz=UTC):%Y-%m-%d %H:%M:%S} - "
        f"{datetime.fromtimestamp(end, tz=UTC):%H:%M:%S} UTC"
    )
    shown = ", ".join(f"{k}={v}" for k, v in variables.items() if not k.startswith("__"))
    subtitle = " | ".join(x for x in (args.subtitle, span, shown) if x)
    title = f"{dashboard.get('title', 'dashboard')} (rendered from Prometheus, not Grafana)"
    out = Path(args.out)
    render(dashboard, data, out, start=start, end=end, title=title, subtitle=subtitle, dpi=args.dpi)
    n = len(data)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB): {n - len(empty)}/{n} panels with data")
    if empty:
        print("no data: " + "; ".join(empty))
    return 0


if __name__ == "__main__":
    sys.exit(main())
