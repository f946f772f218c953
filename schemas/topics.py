"""Kafka topic names. Everything about a subscription is keyed by its subscription_id, and all
billing topics share one partition count, so they are co-partitioned."""

from __future__ import annotations

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
