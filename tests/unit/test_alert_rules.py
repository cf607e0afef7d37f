"""The Prometheus rules and the Grafana dashboard in deploy/: promtool tests them, and every metric
they use is one the processes export (facefare/metrics.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana" / "facefare-fleet.json"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed; run scripts/install-servers.sh as root (Debian's prometheus)",
                    pytrace=False)  # fmt: skip
    return found


def test_promtool_checks_the_rules_and_the_example_config() -> None:
    res = subprocess.run([_promtool(), "check", "config", "prometheus.yml"], cwd=PROM, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_promtool_rule_tests_fire_and_stay_quiet_where_they_should() -> None:
    res = subprocess.run([_promtool(), "test", "rules", "facefare-rules.test.yml"], cwd=PROM, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    tests = (PROM / "facefare-rules.test.yml").read_text()
    for alert in re.findall(r"- alert: (\w+)", (PROM / "facefare-rules.yml").read_text()):
        # every alert is tested firing (with its labels) and quiet
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels", tests), alert
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts: \[\]", tests), alert


def _exported() -> set[str]:
    """Metric names the code exports, as Prometheus stores them (counters get _total, histograms _bucket...)."""
    src = (ROOT / "facefare" / "metrics.py").read_text()
    names = set()
    for name in re.findall(r'"(facefare_[a-z0-9_]+)"', src):
        names |= {name, name + "_total", name + "_bucket", name + "_sum", name + "_count", name + "_info"}
    return names


def _metrics_in(expr: str) -> set[str]:
    return {m for m in re.findall(r"\b(facefare_[a-z0-9_]+)", expr) if not m.startswith("facefare_door_")}


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = _exported()
    rules = (PROM / "facefare-rules.yml").read_text()
    assert _metrics_in(rules) and _metrics_in(rules) <= exported, _metrics_in(rules) - exported
    dash = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set().union(*(_metrics_in(e) for e in exprs))
    assert used <= exported, used - exported
    assert len(dash["panels"]) >= 15 and dash["uid"] == "facefare-fleet"


def test_every_alert_has_a_runbook_section() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    for alert in re.findall(r"- alert: (\w+)", (PROM / "facefare-rules.yml").read_text()):
        assert f"### {alert}" in doc, f"docs/operations.md has no runbook for {alert}"
