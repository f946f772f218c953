"""Deterministic identifiers.

Every id that matters for idempotency is derived, never random: the same user and
Idempotency-Key always give the same command, the same command the same payment (and so the
same provider Idempotence-Key), the same source message the same event ids. This is what
makes replays harmless end to end.
"""

from __future__ import annotations

import uuid

NS_BILLING = uuid.UUID("6f1c9e0a-3b7d-5c2e-9a41-0d8e2f7b6c15")
NS_SUBSCRIPTION = uuid.uuid5(NS_BILLING, "subscription")
NS_USER = uuid.uuid5(NS_BILLING, "user")


def subscription_id_for(user_id: str) -> str:
    """One user has one subscription; its id (the Kafka key) is derived from the user id."""
    return str(uuid.uuid5(NS_SUBSCRIPTION, user_id))


def command_id_for(user_id: str, idempotency_key: str) -> str:
    """Command id = uuid5(user, Idempotency-Key) (ARCHITECTURE.md, intake)."""
    return str(uuid.uuid5(uuid.uuid5(NS_USER, user_id), idempotency_key))


def payment_id_for(command_id: str, attempt: int = 0) -> str:
    """The payment a command creates; also the provider Idempotence-Key (36 chars <= 64)."""
    name = "payment" if attempt == 0 else f"payment-{attempt}"
    return str(uuid.uuid5(uuid.UUID(command_id), name))


def _base(source_id: str) -> uuid.UUID:
    """The id itself when uuid-shaped (every id we mint), else one derived from it: an id
    from elsewhere (an old or hand-made message) must not stop a partition's ledger."""
    try:
        return uuid.UUID(source_id)
    except ValueError:
        return uuid.uuid5(NS_BILLING, f"id:{source_id}")


def derived_id(source_id: str, name: str) -> str:
    """A child id of another id (renewal payments, sweep commands, observations)."""
    return str(uuid.uuid5(_base(source_id), name))


def event_id_for(source_id: str, n: int) -> str:
    """Event id = uuid5(source message id, n): a replayed source re-emits the same ids."""
    return str(uuid.uuid5(_base(source_id), f"event-{n}"))


def observation_id_for(provider_object_id: str, status: str) -> str:
    """Provider outcomes dedupe on (provider object id, status), whatever delivered them."""
    return str(uuid.uuid5(NS_BILLING, f"obs:{provider_object_id}:{status}"))
