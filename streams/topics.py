"""Faust topic objects. Values travel as raw bytes and are decoded by schemas.messages
(msgspec), which costs far less per event than faust.Record (STACK-NOTES: Faust's cost is per
event, so the hot path avoids its model layer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas import topics


@dataclass(frozen=True)
class Topics:
    commands: Any
    provider_events: Any
    events: Any
    ledger_input: Any  # commands + provider events, co-partitioned, one agent
    notifications: Any
    entitlements: Any


def raw_topic(app: Any, *names: str, partitions: int) -> Any:
    """A Faust topic over ``names`` whose keys and values stay raw bytes."""
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        internal=False,
    )


def declare(app: Any, partitions: int) -> Topics:
    def topic(*names: str) -> Any:
        return raw_topic(app, *names, partitions=partitions)

    return Topics(
        commands=topic(topics.COMMANDS),
        provider_events=topic(topics.PROVIDER_EVENTS),
        events=topic(topics.EVENTS),
        ledger_input=topic(topics.COMMANDS, topics.PROVIDER_EVENTS),
        notifications=topic(topics.NOTIFICATIONS),
        entitlements=topic(topics.ENTITLEMENTS),
    )
