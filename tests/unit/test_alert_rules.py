"""The Prometheus alert rules (deploy/prometheus/alerts.yml) and config, checked by promtool.

promtool comes from `deploy/local/promtool.sh install` (run by `make install`): on PATH or in
$STREAMREC_HOME/bin (default ~/.cache/streamrec/bin). The promtool tests are skipped, saying
so, only when it is absent; the structural tests below need no promtool.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "alerts.yml"
CONFIG = PROM_DIR / "prometheus.yml"
RULE_TESTS = ROOT / "tests" / "promtool" / "alerts_test.yml"
RUNBOOK = ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning"}


def promtool_path() -> str | None:
    """promtool on PATH, else the one deploy/local/promtool.sh installs."""
    found = shutil.which("promtool")
    if found:
        return found
    home = Path(os.environ.get("STREAMREC_HOME", Path.home() / ".cache" / "streamrec"))
    local = Path(home).expanduser() / "bin" / "promtool"
    return str(local) if os.access(local, os.X_OK) else None


PROMTOOL = promtool_path()
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH nor in $STREAMREC_HOME/bin: run deploy/local/promtool.sh install",
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def _alerts() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of a Markdown file's headings."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text)))
    return anchors


@needs_promtool
def test_promtool_check_rules() -> None:
    r = _promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in r.stdout + r.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    # Also loads the rule_files the config names (alerts.yml, relative to the config).
    r = _promtool("check", "config", str(CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout + r.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    r = _promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_config_loads_the_alert_rules() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    # The alerts select these job names.
    assert {"streamrec-worker", "streamrec-trainer"} <= jobs
    assert 'job="streamrec-worker"' in RULES.read_text()
    assert 'job="streamrec-trainer"' in RULES.read_text()


def test_every_alert_has_severity_and_annotations() -> None:
    alerts = _alerts()
    assert len(alerts) >= 12
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names)), "duplicate alert names"
    anchors = github_anchors(RUNBOOK.read_text())
    for a in alerts:
        name = a["alert"]
        assert name.startswith("Streamrec"), name
        assert a.get("labels", {}).get("severity") in SEVERITIES, name
        ann = a.get("annotations", {})
        assert {"summary", "description", "runbook_url"} <= set(ann), name
        url = ann["runbook_url"]
        assert url == f"docs/operations.md#{name.lower()}", (name, url)
        assert name.lower() in anchors, f"docs/operations.md has no section '{name}'"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == ["../../deploy/prometheus/alerts.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for t in case.get("alert_rule_test", []):
            (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a not-firing case"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_no_reference_to_the_old_config_path() -> None:
    docs = sorted((ROOT / "docs").glob("*.md"))
    for path in [ROOT / "docker-compose.yml", ROOT / "README.md", *docs]:
        assert "deploy/prometheus.yml" not in path.read_text(), path
