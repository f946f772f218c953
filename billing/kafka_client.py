"""Every Kafka client's connection and topic settings, built in one place from the settings.

aiokafka producers, consumers and admin clients take ``**client_kwargs(settings)``; Faust apps
take ``**faust_kwargs(settings)``. With ``BILLING_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` that is
SCRAM (``BILLING_KAFKA_SASL_*``) over TLS verified against ``BILLING_KAFKA_SSL_CAFILE`` (or the
system's CAs); the password is read here and nowhere else, and never logged.

``check_topics`` is what a process runs at start: the billing topics (and its own Faust
changelogs) must have the partitions, replication and configuration the settings describe.
In prod a mismatch stops the process with a message naming the topic and the setting; outside
prod it is a warning (the local broker is one node).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from billing.config import KafkaFields
from schemas import topics as schema_topics

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class TopicMismatch(RuntimeError):
    """A topic's partitions, replication or configuration is not what the settings say."""


def ssl_context(settings: KafkaFields) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    context: ssl.SSLContext = create_ssl_context(cafile=cafile)
    return context


def client_kwargs(settings: KafkaFields) -> dict[str, Any]:
    """``bootstrap_servers`` and the security arguments of an aiokafka client."""
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        kwargs.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password else "",
        )
    return kwargs


def faust_kwargs(settings: KafkaFields) -> dict[str, Any]:
    """``broker``, ``broker_credentials`` and ``topic_replication_factor`` of a Faust app (its
    changelogs and repartition topics get the billing topics' replication)."""
    kwargs: dict[str, Any] = {
        "broker": f"kafka://{settings.kafka_bootstrap}",
        "topic_replication_factor": settings.kafka_replication_factor,
    }
    protocol = settings.kafka_security_protocol
    context = ssl_context(settings)
    if protocol.startswith("SASL_"):
        from faust.auth import SASLCredentials

        password = settings.kafka_sasl_password
        kwargs["broker_credentials"] = SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else "",
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    elif context is not None:
        from faust.auth import SSLCredentials

        kwargs["broker_credentials"] = SSLCredentials(context)
    return kwargs


def topic_configs(settings: KafkaFields) -> dict[str, dict[str, str]]:
    """Each billing topic's configuration from the settings."""
    return schema_topics.topic_configs(
        min_insync_replicas=settings.kafka_min_insync_replicas,
        events_retention_ms=settings.kafka_events_retention_ms,
        input_retention_ms=settings.kafka_input_retention_ms,
        max_message_bytes=settings.kafka_max_message_bytes,
    )


# The setting each checked topic property comes from (for the message).
_SETTING_OF = {
    "partitions": "BILLING_KAFKA_PARTITIONS",
    "replication": "BILLING_KAFKA_REPLICATION_FACTOR",
    "min.insync.replicas": "BILLING_KAFKA_MIN_INSYNC_REPLICAS",
    "max.message.bytes": "BILLING_KAFKA_MAX_MESSAGE_BYTES",
    "cleanup.policy": "the topic's cleanup policy (billing init-topics applies it)",
    "unclean.leader.election.enable": "unclean leader election (must stay off)",
}


def _setting_of(topic: str, key: str) -> str:
    if key == "retention.ms":
        return (
            "BILLING_KAFKA_EVENTS_RETENTION_MS"
            if topic == schema_topics.EVENTS
            else "BILLING_KAFKA_INPUT_RETENTION_MS"
        )
    return _SETTING_OF.get(key, key)


async def describe(admin: Any, names: list[str]) -> dict[str, tuple[int, int, dict[str, str]]]:
    """(partitions, smallest replica count, effective config) of each existing topic."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    found: dict[str, tuple[int, int, dict[str, str]]] = {}
    meta = [t for t in await admin.describe_topics(names) if t["error_code"] == 0]
    if not meta:
        return found
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t["topic"]) for t in meta]
    )
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries)
            entries = resource[4]
            configs[str(resource[3])] = {str(e[0]): str(e[1]) for e in entries}
    for t in meta:
        parts = t["partitions"]
        replicas = min((len(p["replicas"]) for p in parts), default=0)
        found[t["topic"]] = (len(parts), replicas, configs.get(t["topic"], {}))
    return found


def mismatches(
    settings: KafkaFields,
    found: Mapping[str, tuple[int, int, Mapping[str, str]]],
    *,
    topics: Iterable[str] = schema_topics.BILLING_TOPICS,
    changelogs: Iterable[str] = (),
) -> list[str]:
    """What differs between the topics found and the settings, one line per property."""
    wanted = topic_configs(settings)
    problems: list[str] = []
    for name in topics:
        if name not in found:
            problems.append(f"topic {name} does not exist (run `billing init-topics`)")
            continue
        partitions, replicas, config = found[name]
        expected: dict[str, str] = {
            "partitions": str(settings.kafka_partitions),
            "replication": str(settings.kafka_replication_factor),
            **wanted.get(name, {}),
        }
        actual = {"partitions": str(partitions), "replication": str(replicas), **config}
        problems += [
            f"topic {name}: {key} is {actual.get(key)!r}, expected {value!r} "
            f"(from {_setting_of(name, key)})"
            for key, value in expected.items()
            if actual.get(key) != value
        ]
    for name in changelogs:
        if name not in found:
            continue  # Faust creates it on first start, from faust_kwargs
        _partitions, replicas, config = found[name]
        if replicas < settings.kafka_replication_factor:
            problems.append(
                f"topic {name}: replication is {replicas}, expected "
                f"{settings.kafka_replication_factor} (from BILLING_KAFKA_REPLICATION_FACTOR)"
            )
        if config.get("cleanup.policy") != schema_topics.CHANGELOG_CONFIG["cleanup.policy"]:
            problems.append(f"topic {name}: a table changelog must be compacted")
        isr = int(config.get("min.insync.replicas", "1"))
        if isr < settings.kafka_min_insync_replicas:
            problems.append(
                f"topic {name}: min.insync.replicas is {isr}, expected "
                f"{settings.kafka_min_insync_replicas} (from BILLING_KAFKA_MIN_INSYNC_REPLICAS)"
            )
    return problems


async def verify_topics(
    settings: KafkaFields,
    *,
    topics: Iterable[str] = schema_topics.BILLING_TOPICS,
    changelogs: Iterable[str] = (),
    timeout_s: float = 15.0,
) -> list[str]:
    """The mismatches of the running cluster's topics (see :func:`mismatches`)."""
    from aiokafka.admin import AIOKafkaAdminClient

    names, logs = list(topics), list(changelogs)
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        found = await asyncio.wait_for(describe(admin, names + logs), timeout_s)
    finally:
        await admin.close()
    return mismatches(settings, found, topics=names, changelogs=logs)


def check_topics(
    settings: KafkaFields,
    *,
    topics: Iterable[str] = schema_topics.BILLING_TOPICS,
    changelogs: Iterable[str] = (),
    process: str = "this process",
) -> list[str]:
    """Run at a process's start: raise TopicMismatch in prod, warn otherwise. A broker that
    cannot be reached is only logged (the process's own clients wait and retry for it)."""
    try:
        problems = _run_sync(verify_topics(settings, topics=topics, changelogs=changelogs))
    except Exception as exc:  # the broker is down or refuses us: the clients will say so
        log.warning("could not check the Kafka topics at start (%s)", type(exc).__name__)
        return []
    if problems and settings.env == "prod":
        raise TopicMismatch(
            f"{process} refuses to run: the Kafka topics do not match the settings:\n  "
            + "\n  ".join(problems)
        )
    for line in problems:
        log.warning("%s", line)
    return problems


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion even when the caller is inside a running event loop."""
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="kafka-topic-check", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def init_topics(settings: KafkaFields) -> None:
    """Create (or bring up to date) the billing topics as the settings describe them:
    ``billing init-topics``, the local stack."""
    from billing.kafka_local import ensure_topics

    await ensure_topics(
        settings.kafka_bootstrap,
        settings.kafka_partitions,
        replication=settings.kafka_replication_factor,
        configs=topic_configs(settings),
        client=client_kwargs(settings),
    )


def exit_on_topic_mismatch(
    settings: KafkaFields, process: str, *, changelogs: Iterable[str] = ()
) -> None:
    """The start check of a process's main: exit with the mismatches in prod (``changelogs``:
    the process's own Faust table changelogs, which must be compacted)."""
    import sys

    try:
        check_topics(settings, changelogs=changelogs, process=process)
    except TopicMismatch as exc:
        sys.exit(str(exc))
