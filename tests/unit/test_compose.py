"""docker-compose.yml cannot run here (no Docker engine), so its consistency with the local
stack is checked by reading it: services present, and every BILLING_* name is a setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from billing.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def billing_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return {k: str(v) for k, v in env.items() if k.startswith("BILLING_")}


def test_compose_has_the_stack_services_with_two_workers() -> None:
    services = load()["services"]
    assert {"kafka", "postgres", "api", "worker-1", "worker-2", "init"} <= set(services)
    workers = [s for s in services.values() if "streams" in (s.get("command") or [])]
    assert len(workers) == 2


def test_every_billing_variable_is_a_settings_field() -> None:
    fields = {f"BILLING_{name.upper()}" for name in Settings.model_fields}
    used: set[str] = set()
    for service in load()["services"].values():
        used |= set(billing_env(service))
    assert used, "no BILLING_* settings in docker-compose.yml"
    assert used <= fields, f"unknown settings: {sorted(used - fields)}"


def test_compose_settings_validate_as_prod() -> None:
    services = load()["services"]
    env = billing_env(services["api"])
    resolved = {
        k: v.replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", "pw")
        for k, v in env.items()
        if "${" not in v or "POSTGRES_PASSWORD" in v
    }
    resolved.update(
        BILLING_JWT_SECRET="a-real-secret",
        BILLING_YOOKASSA_SHOP_ID="1",
        BILLING_YOOKASSA_SECRET_KEY="live_x",
    )
    fields: dict[str, Any] = {k.removeprefix("BILLING_").lower(): v for k, v in resolved.items()}
    settings = Settings(**fields)
    assert settings.env == "prod"
    assert settings.kafka_bootstrap == "kafka:9092"


def test_compose_kafka_never_auto_creates_topics() -> None:
    kafka = load()["services"]["kafka"]["environment"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
