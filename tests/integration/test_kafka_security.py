"""Authenticated transport against a real broker in SASL_SSL mode (SCRAM-SHA-512 over TLS,
StandardAuthorizer, nothing allowed without an ACL), with the ACLs of billing.kafka_local:
an unauthenticated or wrongly authenticated client is refused, a user without the write ACL
cannot write provider events, and the clients built by billing.kafka_client from the settings
produce, consume and pass the start check of the topics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from aiokafka.helpers import create_ssl_context
from pydantic import SecretStr

from billing.config import Settings
from billing.kafka_client import check_topics, client_kwargs, topic_configs
from billing.kafka_local import (
    BrokerSecurity,
    KafkaBroker,
    acl_grants,
    ensure_acls,
    ensure_topics,
    free_port,
)
from schemas.topics import BILLING_TOPICS, PROVIDER_EVENTS
from tests.fixtures.kafka_tls import secure_broker_security

ROLES = {"api": "billing-api", "worker": "billing-worker", "history": "billing-history"}


@pytest.fixture(scope="module")
def secure(
    kafka_jars: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KafkaBroker, BrokerSecurity]]:
    root = tmp_path_factory.mktemp("kafka-secure")
    security = secure_broker_security(root / "tls")
    broker = KafkaBroker(root / "node", free_port(), free_port(), kafka_jars, security=security)
    broker.start()
    try:
        admin = broker.admin_kwargs()
        settings = _settings(broker, security, "admin")
        asyncio.run(
            ensure_topics(
                broker.bootstrap, 4, BILLING_TOPICS, configs=topic_configs(settings), client=admin
            )
        )
        asyncio.run(ensure_acls(admin, acl_grants(ROLES)))
        yield broker, security
    finally:
        broker.stop()


def _settings(broker: KafkaBroker, security: BrokerSecurity, user: str) -> Settings:
    return Settings(
        env="test",
        kafka_bootstrap=broker.bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username=user,
        kafka_sasl_password=SecretStr(security.users[user]),
        kafka_ssl_cafile=security.ca_pem,
    )


async def _produce(kwargs: dict[str, Any], topic: str = PROVIDER_EVENTS) -> None:
    producer = AIOKafkaProducer(**kwargs, acks="all", request_timeout_ms=8000)
    try:
        await asyncio.wait_for(producer.start(), 15)
        await asyncio.wait_for(producer.send_and_wait(topic, b"v", key=b"k"), 15)
    finally:
        await producer.stop()


async def test_an_unauthenticated_client_is_refused(
    secure: tuple[KafkaBroker, BrokerSecurity],
) -> None:
    broker, security = secure
    with pytest.raises((KafkaError, TimeoutError, OSError)):
        await _produce({"bootstrap_servers": broker.bootstrap})  # plaintext on the TLS port
    tls_only = {
        "bootstrap_servers": broker.bootstrap,
        "security_protocol": "SSL",
        "ssl_context": create_ssl_context(cafile=str(security.ca_pem)),
    }
    with pytest.raises((KafkaError, TimeoutError, OSError)):
        await _produce(tls_only)  # TLS but no SASL
    wrong = client_kwargs(_settings(broker, security, "billing-api"))
    wrong["sasl_plain_password"] = "not-the-password"
    with pytest.raises((KafkaError, TimeoutError, OSError)):
        await _produce(wrong)


async def test_only_the_api_and_worker_may_write_provider_events(
    secure: tuple[KafkaBroker, BrokerSecurity],
) -> None:
    broker, security = secure
    for user in ("outsider", "billing-history"):
        kwargs = client_kwargs(_settings(broker, security, user))
        with pytest.raises(TopicAuthorizationFailedError):
            await _produce(kwargs)
    for user in ("billing-api", "billing-worker"):
        await _produce(client_kwargs(_settings(broker, security, user)))


async def test_configured_clients_produce_consume_and_pass_the_topic_check(
    secure: tuple[KafkaBroker, BrokerSecurity],
) -> None:
    broker, security = secure
    api = _settings(broker, security, "billing-api")
    worker = _settings(broker, security, "billing-worker")
    key = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(**client_kwargs(api), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = await producer.send_and_wait(PROVIDER_EVENTS, b"observed", key=key)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        PROVIDER_EVENTS,
        **client_kwargs(worker),
        group_id=f"sec-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        seen: list[bytes] = []
        deadline = asyncio.get_running_loop().time() + 30
        while key not in seen and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            seen += [r.key for records in batch.values() for r in records if r.key]
        assert key in seen, f"record at offset {sent.offset} not consumed"
        await consumer.commit()
    finally:
        await consumer.stop()
    # The start check runs as an ordinary user (describe_configs is granted) and finds the
    # topics as their settings describe them; in prod a mismatch would stop the process.
    assert check_topics(worker, process="worker") == []
    shorter = worker.model_copy(update={"kafka_input_retention_ms": 3_600_000})
    problems = check_topics(shorter, process="worker")
    assert any("retention.ms" in p and "BILLING_KAFKA_INPUT_RETENTION_MS" in p for p in problems)
