"""Settings fail closed (issue 15): unset BILLING_ENV is prod; prod names the setting it refuses;
the history worker's pages check their shared token; prod's Kafka defaults are a cluster's;
the start check names topic and setting."""

from __future__ import annotations

import os
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from billing.config import (
    ApiSettings,
    CliSettings,
    HistorySettings,
    JwtFields,
    KafkaFields,
    WebhookFields,
)
from billing.kafka_client import client_kwargs, mismatches, topic_configs
from schemas.topics import BILLING_TOPICS, EVENTS

KAFKA_OK: dict[str, Any] = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_username": "billing-worker",
    "kafka_sasl_password": "k" * 24,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BILLING_"):
            monkeypatch.delenv(name)


def test_unset_env_is_prod_and_refuses_the_repository_defaults() -> None:
    with pytest.raises(ValidationError, match="BILLING_"):
        CliSettings()
    assert JwtFields(env="dev").env == "dev"
    with pytest.raises(ValidationError, match="BILLING_JWT_SECRET"):
        JwtFields()


@pytest.mark.parametrize(
    ("secret", "why"),
    [("changeme", "placeholder"), ("x" * 31, "too short"), ("", "must be set")],
)
def test_prod_refuses_known_or_short_jwt_secrets(secret: str, why: str) -> None:
    with pytest.raises(
        ValidationError, match=f"BILLING_JWT_SECRET .*{why}|BILLING_JWT_SECRET {why}"
    ):
        JwtFields(jwt_secret=SecretStr(secret), jwt_issuer="https://auth.example")
    JwtFields(jwt_secret=SecretStr("s" * 32), jwt_issuer="https://auth.example")


def test_prod_requires_a_jwt_issuer() -> None:
    with pytest.raises(ValidationError, match="BILLING_JWT_ISSUER"):
        JwtFields(jwt_secret=SecretStr("s" * 40))


@pytest.mark.parametrize("cidr", ["127.0.0.1/32", "::1/128", "0.0.0.0/0", "127.0.0.0/8"])
def test_prod_refuses_loopback_or_any_address_in_the_webhook_allowlist(cidr: str) -> None:
    with pytest.raises(ValidationError, match="BILLING_WEBHOOK_ALLOWED_IPS"):
        WebhookFields(webhook_allowed_ips=["185.71.76.0/27", cidr])


def test_loopback_is_allowed_by_default_only_outside_prod() -> None:
    assert "127.0.0.1/32" in WebhookFields(env="dev").webhook_allowed_ips
    assert "127.0.0.1/32" in WebhookFields(env="test").webhook_allowed_ips
    assert "127.0.0.1/32" not in WebhookFields().webhook_allowed_ips


def test_prod_refuses_placeholder_shop_credentials() -> None:
    base: dict[str, Any] = {
        "postgres_dsn": "postgresql://u:p@db/billing",
        "yookassa_api_url": "https://api.yookassa.ru/v3",
        "history_token": "h" * 40,
        **KAFKA_OK,
    }
    with pytest.raises(ValidationError, match="BILLING_YOOKASSA_SHOP_ID"):
        HistorySettings(**base, yookassa_secret_key=SecretStr("live_secret_1234"))
    with pytest.raises(ValidationError, match="BILLING_YOOKASSA_SECRET_KEY"):
        HistorySettings(**base, yookassa_shop_id="512345")
    HistorySettings(
        **base, yookassa_shop_id="512345", yookassa_secret_key=SecretStr("live_secret_1234")
    )


def test_prod_kafka_defaults_are_a_clusters_and_transport_is_authenticated() -> None:
    prod = KafkaFields(**KAFKA_OK)
    assert (prod.kafka_partitions, prod.kafka_replication_factor) == (64, 3)
    assert prod.kafka_min_insync_replicas == 2
    assert KafkaFields(env="dev").kafka_partitions == 4
    with pytest.raises(ValidationError, match="BILLING_KAFKA_SECURITY_PROTOCOL"):
        KafkaFields()
    with pytest.raises(ValidationError, match="BILLING_KAFKA_REPLICATION_FACTOR"):
        KafkaFields(**KAFKA_OK, kafka_replication_factor=1, kafka_min_insync_replicas=1)
    with pytest.raises(ValidationError, match="BILLING_KAFKA_SASL_USERNAME"):
        KafkaFields(env="dev", kafka_security_protocol="SASL_SSL")
    kwargs = client_kwargs(prod)
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["security_protocol"] == "SASL_SSL" and "ssl_context" in kwargs
    assert "k" * 24 not in repr(prod)  # the password is a SecretStr


def test_history_token_is_required_in_prod_and_checked_in_constant_time() -> None:
    with pytest.raises(ValidationError, match="BILLING_HISTORY_TOKEN"):
        ApiSettings(env="prod", history_token=SecretStr("short"))
    open_ = ApiSettings(env="dev")
    assert open_.history_headers() == {} and open_.history_authorized(None)
    token = "t" * 40
    closed = ApiSettings(env="dev", history_token=SecretStr(token))
    assert closed.history_headers() == {"Authorization": f"Bearer {token}"}
    assert closed.history_authorized(f"Bearer {token}")
    assert not closed.history_authorized(None)
    assert not closed.history_authorized("Bearer " + "t" * 39)
    assert HistorySettings(env="dev").history_host == "127.0.0.1"  # loopback by default


def test_topic_check_names_topic_and_setting() -> None:
    settings = KafkaFields(env="dev", kafka_replication_factor=3, kafka_min_insync_replicas=2)
    wanted = topic_configs(settings)
    found = {t: (4, 3, dict(wanted[t])) for t in BILLING_TOPICS}
    assert mismatches(settings, found) == []
    found[EVENTS] = (4, 1, {**wanted[EVENTS], "retention.ms": str(7 * 86_400_000)})
    problems = mismatches(settings, found)
    assert any(
        EVENTS in p and "replication" in p and "BILLING_KAFKA_REPLICATION_FACTOR" in p
        for p in problems
    )
    assert any(
        EVENTS in p and "retention.ms" in p and "BILLING_KAFKA_EVENTS_RETENTION_MS" in p
        for p in problems
    )
    assert wanted[EVENTS]["retention.ms"] == "-1"  # the log of record is kept for good
    changelog = "billing-ledger-changelog"
    found[changelog] = (4, 3, {"cleanup.policy": "delete", "min.insync.replicas": "2"})
    assert any("compacted" in p for p in mismatches(settings, found, changelogs=[changelog]))
