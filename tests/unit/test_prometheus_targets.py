"""ops/prometheus.yml scrapes every process of docker-compose.yml that serves ``/metrics``, at
the port its settings give it there (issue 15: "scrapes every process"), and nothing else: a
new process, or a port moved in compose, fails here rather than going unwatched."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from billing.config import ApiSettings, EntitlementsSettings, HistorySettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
# A command -> the job that scrapes it and the setting holding its metrics port.
SERVED: dict[str, tuple[str, str, int]] = {
    r"-m api$": ("billing-api", "BILLING_API_PORT", ApiSettings.model_fields["api_port"].default),
    r"-m streams worker": (
        "billing-worker",
        "BILLING_WORKER_WEB_PORT",
        WorkerSettings.model_fields["worker_web_port"].default,
    ),
    r"-m streams\.history ": (
        "billing-history",
        "BILLING_HISTORY_PORT",
        HistorySettings.model_fields["history_port"].default,
    ),
    r"-m streams\.entitlements$": (
        "billing-entitlements",
        "BILLING_ENTITLEMENTS_WEB_PORT",
        EntitlementsSettings.model_fields["entitlements_web_port"].default,
    ),
}


def _load(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


def expected_targets() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, service in _load("docker-compose.yml")["services"].items():
        command = " ".join(service.get("command") or [])
        for pattern, (job, port_setting, default) in SERVED.items():
            if re.search(pattern, command):
                port = (service.get("environment") or {}).get(port_setting, default)
                out.setdefault(job, set()).add(f"{name}:{port}")
    return out


def scraped_targets() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for job in _load("ops/prometheus.yml")["scrape_configs"]:
        for static in job.get("static_configs", []):
            out.setdefault(job["job_name"], set()).update(static["targets"])
    return out


def test_prometheus_scrapes_every_process_at_its_compose_port() -> None:
    expected = expected_targets()
    assert expected["billing-entitlements"] == {"entitlements:6068"}
    assert scraped_targets() == expected


def test_prometheus_waits_for_every_scraped_service() -> None:
    services = {t.split(":")[0] for ts in expected_targets().values() for t in ts}
    prometheus = _load("docker-compose.yml")["services"]["prometheus"]
    assert services <= set(prometheus["depends_on"])
