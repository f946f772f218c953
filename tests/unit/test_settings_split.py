"""The settings split (issue 12): each process reads only its own settings, under one env
prefix, with no setting renamed; each field is declared once; every name the README and
docker-compose.yml use is read by some process; prod checks refuse what they refused."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from billing import config
from billing.config import (
    PROCESS_SETTINGS,
    ApiSettings,
    CliSettings,
    CommonSettings,
    ConsoleSettings,
    EmulatorSettings,
    EntitlementsSettings,
    HistorySettings,
    ProviderSettings,
    ReconcileSettings,
    Settings,
    WorkerSettings,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# Named in the README but read outside the settings classes (test seeds, the test clock file).
NOT_SETTINGS = {"BILLING_E2E_SEED", "BILLING_CHAOS_SEED", "BILLING_CLOCK_FILE"}
KAFKA = {
    "kafka_bootstrap",
    "kafka_partitions",
    "kafka_version",
    "kafka_replication_factor",
    "kafka_min_insync_replicas",
    "kafka_events_retention_ms",
    "kafka_input_retention_ms",
    "kafka_max_message_bytes",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_cafile",
}
COMMON = {"env", "state_dir", "log_level", "postgres_dsn"} | KAFKA
# The code each process runs with its settings (besides billing/config.py's own properties and
# prod checks). A field of a process class must be read there.
PROCESS_CODE: dict[type[BaseSettings], tuple[str, ...]] = {
    ApiSettings: ("api", "providers/yookassa_adapter.py"),
    WorkerSettings: (
        "streams/app.py",
        "streams/gateway",
        "streams/ledger",
        "streams/notify",
        "streams/projection",
        "streams/reconcile",
        "reconciler/feed.py",
        "providers/yookassa_adapter.py",
    ),
    HistorySettings: (
        "streams/history",
        "reconciler/feed.py",
        "providers/yookassa_adapter.py",
        "billing/clickhouse.py",
    ),
    EmulatorSettings: ("providers/emulator",),
    ConsoleSettings: ("dashboard",),
    ReconcileSettings: ("reconciler/cli.py", "reconciler/feed.py", "providers/yookassa_adapter.py"),
    CliSettings: ("billing/cli.py", "api/auth.py"),
    EntitlementsSettings: ("streams/entitlements",),
}
_READ = re.compile(r"settings\.(\w+)|getattr\(\s*\w+,\s*\"(\w+)\"")


def _classes() -> list[type[BaseSettings]]:
    return [
        c
        for c in vars(config).values()
        if isinstance(c, type) and issubclass(c, BaseSettings) and c.__module__ == config.__name__
    ]


def _reads(paths: tuple[str, ...]) -> set[str]:
    names: set[str] = set()
    for p in paths:
        target = ROOT / p
        if not target.exists():
            continue
        for f in sorted(target.rglob("*.py")) if target.is_dir() else [target]:
            for m in _READ.finditer(f.read_text()):
                names.add(m.group(1) or m.group(2))
    names |= set(re.findall(r"self\.(\w+)", (ROOT / "billing/config.py").read_text()))
    return names


def test_common_holds_what_every_process_on_kafka_and_postgres_reads() -> None:
    assert set(CommonSettings.model_fields) == COMMON
    for cls in (ApiSettings, WorkerSettings, HistorySettings, ReconcileSettings, CliSettings):
        assert issubclass(cls, CommonSettings)


def test_provider_adds_only_the_yookassa_client_and_emulator_address() -> None:
    added = set(ProviderSettings.model_fields) - COMMON
    assert added and all(n.startswith(("yookassa_", "provider_", "emulator_")) for n in added)


def test_every_class_keeps_the_one_prefix() -> None:
    for cls in _classes():
        assert cls.model_config.get("env_prefix") == "BILLING_", cls
        assert cls.model_config.get("extra") == "ignore", cls


def test_no_field_is_declared_in_two_classes() -> None:
    declared: dict[str, str] = {}
    for cls in _classes():
        for name in vars(cls).get("__annotations__", {}):
            assert name not in declared, f"{name}: {declared.get(name)} and {cls.__name__}"
            declared[name] = cls.__name__
    assert set(declared) == set(Settings.model_fields)


def test_settings_is_the_union_and_can_stand_for_every_process() -> None:
    union = set().union(*(cls.model_fields for cls in PROCESS_SETTINGS))
    assert set(Settings.model_fields) == union
    assert all(issubclass(Settings, cls) for cls in PROCESS_SETTINGS)


@pytest.mark.parametrize("cls", PROCESS_SETTINGS, ids=lambda c: c.__name__)
def test_each_process_class_has_only_fields_its_code_reads(cls: type[BaseSettings]) -> None:
    unread = set(cls.model_fields) - COMMON - _reads(PROCESS_CODE[cls])
    assert not unread, f"{cls.__name__} declares settings its process never reads: {unread}"


def test_processes_do_not_read_each_others_settings() -> None:
    api, worker, history = (
        set(c.model_fields) for c in (ApiSettings, WorkerSettings, HistorySettings)
    )
    console, emulator = set(ConsoleSettings.model_fields), set(EmulatorSettings.model_fields)
    assert not {"gateway_concurrency", "worker_id", "sweep_interval_s", "history_port"} & api
    assert not {"jwt_secret", "relay_delay_s", "history_port", "dashboard_admin_user"} & worker
    assert not {"jwt_secret", "gateway_concurrency", "recon_cron", "api_port"} & history
    assert not {"postgres_dsn", "kafka_bootstrap", "jwt_secret", "yookassa_secret_key"} & console
    assert not {"postgres_dsn", "kafka_bootstrap", "jwt_secret", "yookassa_api_url"} & emulator
    assert not {"gateway_concurrency", "history_port"} & set(ReconcileSettings.model_fields)
    jwt = {"jwt_secret", "jwt_algorithm", "jwt_audience", "jwt_issuer"}
    retention = {
        "idempotency_key_ttl_s",
        "outbox_closed_retention_s",
        "maintenance_interval_s",
        "events_retention_months",
    }
    assert set(CliSettings.model_fields) == COMMON | jwt | retention


def test_every_readme_and_compose_setting_is_read_by_a_process() -> None:
    text = README.read_text() + (ROOT / "docker-compose.yml").read_text()
    named = set(re.findall(r"BILLING_[A-Z0-9_]*[A-Z0-9]", text)) - NOT_SETTINGS
    read = {"BILLING_" + n.upper() for cls in PROCESS_SETTINGS for n in cls.model_fields}
    assert named <= read, sorted(named - read)


PROD: dict[str, Any] = {
    "env": "prod",
    "postgres_dsn": "postgresql://billing:pw@postgres:5432/billing",
    "jwt_secret": "a-real-secret-of-at-least-32-bytes!",
    "jwt_issuer": "https://auth.cinema.example/realms/cinema",
    "yookassa_shop_id": "512345",
    "yookassa_secret_key": "live_x_0123456789",
    "yookassa_api_url": "https://api.yookassa.ru/v3",
    "history_token": "h" * 40,
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_username": "billing-api",
    "kafka_sasl_password": "p" * 24,
    "oidc_issuer": "https://auth.cinema.example/realms/cinema",
    "keycloak_url": "https://auth.cinema.example",
    "keycloak_client_secret": "c" * 24,
}
# What each prod check refuses: a missing DSN (no embedded PostgreSQL), placeholder or short
# secrets, no issuer, placeholder shop id, no provider URL (no emulator), an open history
# worker, loopback webhooks, a single replica, unauthenticated Kafka.
BAD: dict[str, Any] = {
    "postgres_dsn": None,
    "jwt_secret": "dev-only-jwt-secret",
    "jwt_issuer": "",
    "yookassa_shop_id": "100500",
    "yookassa_secret_key": "emulator-secret",
    "yookassa_api_url": "",
    "history_token": None,
    "webhook_allowed_ips": ["185.71.76.0/27", "127.0.0.1/32"],
    "kafka_replication_factor": 1,
    "kafka_min_insync_replicas": 1,
    "kafka_security_protocol": "PLAINTEXT",
    "kafka_sasl_password": "short",
    "oidc_issuer": "",
    "keycloak_url": "http://127.0.0.1:8180",
    "keycloak_client_secret": None,
}
_KAFKA_BAD = {
    "kafka_replication_factor",
    "kafka_min_insync_replicas",
    "kafka_security_protocol",
    "kafka_sasl_password",
}
_SHOP = {"yookassa_shop_id", "yookassa_secret_key", "yookassa_api_url"}
REFUSES = {
    ApiSettings: set(BAD) - {"keycloak_url", "keycloak_client_secret"},
    WorkerSettings: {"postgres_dsn"} | _SHOP | _KAFKA_BAD,
    HistorySettings: {"postgres_dsn", "history_token"} | _SHOP | _KAFKA_BAD,
    ReconcileSettings: {"postgres_dsn", "history_token"} | _SHOP | _KAFKA_BAD,
    CliSettings: {"postgres_dsn", "jwt_secret", "jwt_issuer"} | _KAFKA_BAD,
    EmulatorSettings: {"yookassa_shop_id", "yookassa_secret_key"},
    ConsoleSettings: set(),
    EntitlementsSettings: {"postgres_dsn", "keycloak_url", "keycloak_client_secret"} | _KAFKA_BAD,
    Settings: set(BAD),
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BILLING_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("cls", list(REFUSES), ids=lambda c: c.__name__)
def test_prod_refuses_what_the_process_reads_unset(cls: type[BaseSettings]) -> None:
    own = {k: v for k, v in PROD.items() if k in cls.model_fields}
    cls(**own)
    # Every check a process had on a field it reads stays on it.
    assert REFUSES[cls] == set(BAD) & set(cls.model_fields)
    for name in REFUSES[cls]:
        bad = {k: v for k, v in own.items() if k != name}
        if BAD[name] is not None:
            bad[name] = BAD[name]
        with pytest.raises(ValidationError, match=f"BILLING_{name.upper()}"):
            cls(**bad)
        if name != "kafka_min_insync_replicas":  # 2 > 1 replica is refused everywhere
            cls(**{**bad, "env": "dev"})  # refused only in prod
