"""The Grafana dashboard (deploy/grafana/dashboards/streamrec.json) and its provisioning.

Every panel query must parse as PromQL (checked with `promtool check rules` on a temporary
rules file holding each query as a recording rule; a structural check when promtool is absent)
and use only metrics that the code exposes, found by parsing the metric constructors of
stream/*.py, or that are PLANNED below. The alert rules are held to the same metric list.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamrec.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "streamrec.yml"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"

# Metrics that the dashboard and the alerts use before the application exposes them (the
# operations issue): name -> (type, label names). Remove a name from here once stream/ creates
# it; test_planned_metrics_are_not_yet_in_the_code fails as a reminder.
PLANNED: dict[str, tuple[str, tuple[str, ...]]] = {}

# prometheus_client: the series each metric type is exposed as.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
CONSTRUCTORS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram",
                "Summary": "summary", "Info": "info"}  # fmt: skip
# Labels every scraped series has, and the extra label of histogram buckets.
TARGET_LABELS = {"instance", "job"}
REQUIRED_ROWS = {"Throughput", "Latency", "Kafka", "Quality", "Model", "Cache",
                 "Training agent", "Health"}  # fmt: skip
# Grafana variables, replaced by a representative value before parsing.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$window": "30m",
             "$instance": ".*"}  # fmt: skip


def code_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Metric constructor calls (Counter("streamrec_...", ...)) in stream/: name -> kind, labels."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for path in sorted((ROOT / "stream").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            fname = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            first = node.args[0]
            if fname not in CONSTRUCTORS or not isinstance(first, ast.Constant):
                continue
            if not isinstance(first.value, str) or not first.value.startswith("streamrec_"):
                continue
            labels: tuple[str, ...] = ()
            spec = node.args[2] if len(node.args) > 2 else None
            for kw in node.keywords:
                if kw.arg == "labelnames":
                    spec = kw.value
            if isinstance(spec, ast.List | ast.Tuple):
                labels = tuple(e.value for e in spec.elts if isinstance(e, ast.Constant))
            found[first.value] = (CONSTRUCTORS[fname], labels)
    return found


def exposed_series() -> dict[str, set[str]]:
    """Series name as scraped -> the label names it may carry."""
    series: dict[str, set[str]] = {}
    for name, (kind, labels) in {**code_metrics(), **PLANNED}.items():
        for suffix in SUFFIXES[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            series[name + suffix] = set(labels) | TARGET_LABELS | extra
    return series


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bstreamrec_[a-zA-Z0-9_:]*", _strip_strings(expr)))


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched in its {...}) for every selector attached to a metric."""
    out = []
    for m in re.finditer(r"\b(streamrec_[a-zA-Z0-9_:]*)\{([^}]*)\}", expr):
        out.append((m.group(1), set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2)))))
    return out


def substitute(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def _load() -> dict:
    return json.loads(DASHBOARD.read_text())


def _queries() -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every target of every panel, rows' panels included."""
    out = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"{p['title']} / {t['refId']}", t["expr"]))
            walk(p.get("panels", []))

    walk(_load()["panels"])
    return out


def _rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r.get("alert") or r["record"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def _promtool() -> str | None:
    found = shutil.which("promtool")
    if found:
        return found
    home = Path(os.environ.get("STREAMREC_HOME", Path.home() / ".cache" / "streamrec"))
    local = home.expanduser() / "bin" / "promtool"
    return str(local) if os.access(local, os.X_OK) else None


def test_dashboard_structure() -> None:
    d = _load()
    assert d["uid"] == "streamrec" and d["title"]
    assert 36 <= d["schemaVersion"] <= 41
    rows = [p for p in d["panels"] if p["type"] == "row"]
    assert {r["title"] for r in rows} >= REQUIRED_ROWS
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["title"] and p.get("description"), p["id"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        assert all(t["expr"].strip() for t in p["targets"]), p["title"]


def test_dashboard_uses_the_provisioned_datasource() -> None:
    ds = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(ds) == 1 and ds[0]["type"] == "prometheus"
    uid = ds[0]["uid"]
    d = _load()
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid, p["title"]
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == uid
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert providers[0]["options"]["path"] == "/etc/grafana/dashboards"


def test_dashboard_variables_are_known() -> None:
    for where, expr in _queries():
        left = re.findall(r"\$\w+", substitute(expr))
        assert not left, f"{where}: unknown variable {left}"


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_exists(source: str) -> None:
    series = exposed_series()
    exprs = _queries() if source == "dashboard" else _rule_exprs()
    for where, expr in exprs:
        for name in metric_names(expr):
            assert name in series, f"{where}: {name} is neither exposed by stream/ nor PLANNED"
        for name, labels in selector_labels(expr):
            assert labels <= series.get(name, set()), f"{where}: {name} has no label {labels}"


def test_dashboard_covers_the_operations_metrics() -> None:
    used = set().union(*(metric_names(e) for _, e in _queries()))
    wanted = {
        "streamrec_events_in_total", "streamrec_recommendations_out_total",
        "streamrec_dead_letters_total", "streamrec_trigger_to_publish_ms_bucket",
        "streamrec_stage_latency_ms_bucket", "streamrec_batch_size_bucket",
        "streamrec_batch_wait_ms_bucket", "streamrec_consumer_lag", "streamrec_online_hits_total",
        "streamrec_online_judged_total", "streamrec_online_rr_total",
        "streamrec_online_clicks_total", "streamrec_online_impressions_total",
        "streamrec_model_info", "streamrec_model_age_seconds", "streamrec_model_last_swap_ms",
        "streamrec_model_swap_failures_total", "streamrec_model_rollbacks_total",
        "streamrec_result_cache_lookups_total", "streamrec_trainer_examples_per_second",
        "streamrec_trainer_loss", "streamrec_trainer_prequential",
        "streamrec_trainer_candidates_total", "streamrec_trainer_gate_failures_total",
        "streamrec_ready",
    }  # fmt: skip
    assert wanted - used == set()
    assert any(re.search(r"\bup\{", e) for _, e in _queries())


def test_planned_metrics_are_not_yet_in_the_code() -> None:
    done = set(PLANNED) & set(code_metrics())
    assert not done, f"stream/ now exposes {sorted(done)}: remove them from PLANNED"


def test_code_metrics_are_found() -> None:
    # The parser above must see the existing families, or every check above is vacuous.
    found = code_metrics()
    assert found["streamrec_events_in"] == ("counter", ("event_type",))
    assert found["streamrec_trigger_to_publish_ms"][0] == "histogram"
    assert found["streamrec_trainer_prequential"] == ("gauge", ("model", "metric"))
    assert found["streamrec_model_swap_failures"] == ("counter", ("reason",))


def _balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in _strip_strings(expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    queries = [(w, substitute(e)) for w, e in _queries()]
    for where, expr in queries:
        assert _balanced(expr), f"{where}: unbalanced brackets: {expr}"
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool not found (deploy/local/promtool.sh install); structure checked only")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                       timeout=120, check=False)  # fmt: skip
    detail = r.stdout + r.stderr
    for i, (where, _) in enumerate(queries):
        detail = detail.replace(f"dashboard:query_{i}", where)
    assert r.returncode == 0, detail
    assert f"SUCCESS: {len(queries)} rules found" in r.stdout
