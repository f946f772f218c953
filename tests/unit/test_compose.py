"""docker-compose.yml cannot run here (no Docker engine), so its consistency with the local
stack is checked by reading it: services present, every BILLING_* name is a setting, and each
service's environment is valid in prod for the settings class of the process it runs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from billing.config import (
    ApiSettings,
    CliSettings,
    CommonSettings,
    ConsoleSettings,
    EntitlementsSettings,
    HistorySettings,
    Settings,
    WorkerSettings,
)

ROOT = Path(__file__).resolve().parents[2]
# A service's command -> the settings class of the process it runs.
COMMANDS: dict[str, type[BaseSettings]] = {
    r"-m api$": ApiSettings,
    r"-m streams worker": WorkerSettings,
    r"-m streams\.history ": HistorySettings,
    r"-m dashboard$": ConsoleSettings,
    r"billing migrate": CliSettings,
    r"-m streams\.entitlements$": EntitlementsSettings,
}


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def billing_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return {k: str(v) for k, v in env.items() if k.startswith("BILLING_")}


def test_compose_has_the_stack_services_with_two_workers() -> None:
    services = load()["services"]
    assert {
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "postgres",
        "api",
        "worker-1",
        "worker-2",
        "init",
    } <= set(services)
    workers = [s for s in services.values() if "streams" in (s.get("command") or [])]
    assert len(workers) == 2


def test_every_billing_variable_is_a_settings_field() -> None:
    fields = {f"BILLING_{name.upper()}" for name in Settings.model_fields}
    used: set[str] = set()
    for service in load()["services"].values():
        used |= set(billing_env(service))
    assert used, "no BILLING_* settings in docker-compose.yml"
    assert used <= fields, f"unknown settings: {sorted(used - fields)}"


def service_settings() -> dict[str, type[BaseSettings]]:
    """Each service with BILLING_* variables and the settings class its command reads."""
    found: dict[str, type[BaseSettings]] = {}
    for name, service in load()["services"].items():
        if not billing_env(service):
            continue
        command = " ".join(service.get("command") or [])
        match = [cls for pattern, cls in COMMANDS.items() if re.search(pattern, command)]
        assert len(match) == 1, f"{name}: which settings does {command!r} read?"
        found[name] = match[0]
    return found


def test_each_service_sets_only_what_its_process_reads() -> None:
    shared = set(load()["x-billing-env"])
    services = load()["services"]
    for name, cls in service_settings().items():
        own = set(billing_env(services[name])) - shared
        fields = {f"BILLING_{n.upper()}" for n in cls.model_fields}
        assert own <= fields, f"{name} ({cls.__name__}) does not read {sorted(own - fields)}"


def test_receipt_settings_are_one_for_the_api_and_the_workers() -> None:
    """The API refuses a payment without a receipt contact and the gateway sends the receipt:
    both read the same BILLING_RECEIPT* values (the shared block; no service overrides)."""
    names = ("RECEIPTS_ENABLED", "RECEIPT_TAX_SYSTEM_CODE", "RECEIPT_VAT_CODE")
    shared = load()["x-billing-env"]
    assert all(f"BILLING_{n}" in shared for n in names)
    for name, service in load()["services"].items():
        env = billing_env(service)
        for n in names:
            assert env.get(f"BILLING_{n}", str(shared[f"BILLING_{n}"])) == str(
                shared[f"BILLING_{n}"]
            ), name
    for cls in (ApiSettings, WorkerSettings):
        assert {n.lower() for n in names} <= set(cls.model_fields)


def resolve(value: str) -> str:
    """A compose value with ``${VAR:-default}`` defaulted and ``${VAR:?…}`` set to a made-up
    value that is no placeholder (what an operator must set)."""

    def sub(m: re.Match[str]) -> str:
        return m.group(3) if m.group(2) == "-" else f"set-{m.group(1).lower()}-{'x' * 32}"

    return re.sub(r"\$\{(\w+)(?::([-?])([^}]*))?\}", sub, value)


@pytest.mark.parametrize(
    "service", ["init", "worker-1", "worker-2", "history", "api", "console", "entitlements"]
)
def test_compose_settings_validate_as_prod(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BILLING_"):
            monkeypatch.delenv(name)
    env = billing_env(load()["services"][service])
    assert env["BILLING_ENV"] == "prod"
    fields: dict[str, Any] = {
        k.removeprefix("BILLING_").lower(): resolve(v) for k, v in env.items()
    }
    cls = service_settings()[service]
    settings = cls(**fields)  # extra="ignore": the other processes' variables are dropped
    assert set(settings.model_dump()) == set(cls.model_fields)
    if isinstance(settings, CommonSettings):
        assert settings.env == "prod"
        assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
        assert settings.kafka_replication_factor == 3
        assert settings.kafka_min_insync_replicas == 2
        assert settings.kafka_security_protocol == "SASL_SSL"


def test_compose_kafka_never_auto_creates_topics() -> None:
    kafka = load()["services"]["kafka-1"]["environment"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_compose_runs_three_brokers_in_one_quorum_with_authentication() -> None:
    services = load()["services"]
    envs = [services[f"kafka-{i}"]["environment"] for i in (1, 2, 3)]
    assert {e["KAFKA_NODE_ID"] for e in envs} == {"1", "2", "3"}
    for e in envs:
        assert e["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 3
        assert e["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert e["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        assert "SASL_SSL://" in e["KAFKA_LISTENERS"]
