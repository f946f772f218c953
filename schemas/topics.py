"""Kafka topic names and how a key picks its partition. Everything about a subscription is
keyed by its subscription_id, and all billing topics share one partition count, so they are
co-partitioned: ``partition_for(key, n)`` is the same partition on every billing topic."""

from __future__ import annotations

from aiokafka.partitioner import murmur2

COMMANDS = "billing.commands"
PROVIDER_EVENTS = "billing.provider-events"
EVENTS = "billing.events"
PROVIDER_REPORT = "billing.provider-report"
NOTIFICATIONS = "billing.notifications"
ENTITLEMENTS = "billing.entitlements"

BILLING_TOPICS: tuple[str, ...] = (
    COMMANDS,
    PROVIDER_EVENTS,
    EVENTS,
    PROVIDER_REPORT,
    NOTIFICATIONS,
    ENTITLEMENTS,
)

DEFAULT_PARTITIONS = 4

# Inputs: replayable for a configured time (commands, provider facts, reports, outgoing
# notifications and entitlements). billing.events is the log of record, kept as configured
# (for good by default); it is never compacted, every event counts.
INPUT_TOPICS: tuple[str, ...] = tuple(t for t in BILLING_TOPICS if t != EVENTS)


def topic_configs(
    *,
    min_insync_replicas: int,
    events_retention_ms: int,
    input_retention_ms: int,
    max_message_bytes: int,
) -> dict[str, dict[str, str]]:
    """The topic-level configuration of every billing topic: what creation applies and what a
    process checks at start (Kafka's own names and string values)."""
    common = {
        "min.insync.replicas": str(min_insync_replicas),
        "max.message.bytes": str(max_message_bytes),
        "cleanup.policy": "delete",
        # Kafka's default; stated so that a broker's other default cannot lose acked events.
        "unclean.leader.election.enable": "false",
    }
    return {
        t: {
            **common,
            "retention.ms": str(events_retention_ms if t == EVENTS else input_retention_ms),
        }
        for t in BILLING_TOPICS
    }


# What Faust's table changelogs must be (Faust creates them itself, compacted).
CHANGELOG_CONFIG: dict[str, str] = {"cleanup.policy": "compact"}


def partition_for(key: bytes, partitions: int) -> int:
    """The default (murmur2) partitioner that every producer of billing topics uses (Kafka's
    and aiokafka's default for a keyed message): the partition of ``key`` among
    ``partitions``."""
    h: int = murmur2(key)
    return (h & 0x7FFFFFFF) % partitions
