"""The alert rules (ops/alerts.yml) are valid and behave as their unit tests say
(ops/alerts.test.yml), checked by Prometheus's own promtool (Debian package ``prometheus``;
.ci/run installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

OPS = Path(__file__).resolve().parents[2] / "ops"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; .ci/run does)"
)


@needs_promtool
def test_rules_are_valid() -> None:
    out = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(OPS / "alerts.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_rules_unit_tests_pass() -> None:
    out = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts.test.yml"],
        capture_output=True,
        text=True,
        cwd=OPS,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(PROMTOOL), "check", "config", "--syntax-only", str(OPS / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_issue_alert_exists_and_reads_metrics_we_export() -> None:
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {
        "CommandsStuck",
        "ConsumerLagHigh",
        "UnknownOutcomesAgeing",
        "ProviderErrorRate",
        "ReconciliationDayMissing",
        "ReconciliationDayIncomplete",  # a failed day between complete ones
    } <= names
    exported = set(re.findall(r'"(billing_\w+)"', (OPS.parent / "billing/metrics.py").read_text()))
    for rule in rules:
        for metric in re.findall(r"\b(billing_\w+)", rule["expr"]):
            assert metric in exported, f"{rule['alert']} reads {metric}, which nothing exports"


def test_every_dashboard_panel_reads_metrics_we_export() -> None:
    dashboard = json.loads((OPS / "grafana" / "billing.json").read_text())
    exported = set(re.findall(r'"(billing_\w+)"', (OPS.parent / "billing/metrics.py").read_text()))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert any("billing_recon_days_without_complete_run" in e for e in exprs)
    for expr in exprs:
        for metric in re.findall(r"\b(billing_\w+)", expr):
            base = re.sub(r"_(bucket|count|sum|total)$", "", metric)
            assert metric in exported or base in exported, f"{expr} reads {metric}"
