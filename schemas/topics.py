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


def partition_for(key: bytes, partitions: int) -> int:
    """The default (murmur2) partitioner that every producer of billing topics uses (Kafka's
    and aiokafka's default for a keyed message): the partition of ``key`` among
    ``partitions``."""
    h: int = murmur2(key)
    return (h & 0x7FFFFFFF) % partitions
