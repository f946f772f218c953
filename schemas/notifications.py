"""Outgoing contracts for the cinema's other services.

``billing.notifications`` (for the notification service: e-mails, pushes) and
``billing.entitlements`` (for the auth service: who may watch until when), both keyed by
subscription id, msgspec JSON with a ``type`` tag, times in epoch ms UTC.

Exactly once per fact: every message has an id derived from the domain event it reports
(uuid5(event_id, kind)). The ledger re-emits an event with the same id on a replay, and the
notifier derives the same message from it, so a redelivery carries the same id: consumers
keep the ids they have acted on (delivery is at least once, the fact is once).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.codec import JsonCodec
from schemas.money import Money

NotificationKind = Literal[
    "payment_succeeded",
    "payment_failed",
    "refund_succeeded",
    "renewal_upcoming",
    "past_due",
    "expired",
    "canceled",
    "trial_started",  # a free trial began; period_end is when the first charge is made
    "payment_method_needed",  # a renewal found no saved method: add a card (dunning goes on)
]


class Notification(msgspec.Struct, tag="Notification", tag_field="type", frozen=True, kw_only=True):
    notification_id: str
    kind: NotificationKind
    user_id: str
    subscription_id: str
    occurred_at: int
    event_id: str  # the domain event in billing.events this reports
    payment_id: str | None = None
    refund_id: str | None = None
    amount: Money | None = None
    plan_id: str | None = None
    period_end: int | None = None
    reason: str | None = None


class Entitlement(msgspec.Struct, tag="Entitlement", tag_field="type", frozen=True, kw_only=True):
    """``granted``: the user may watch until ``until``; ``revoked``: from ``occurred_at`` on.
    The latest message per subscription (by ``version``) is the truth."""

    entitlement_id: str
    action: Literal["granted", "revoked"]
    user_id: str
    subscription_id: str
    occurred_at: int
    version: int  # the subscription's event version: order per subscription
    event_id: str
    plan_id: str | None = None
    until: int | None = None
    reason: str | None = None


_codec: JsonCodec[Notification | Entitlement] = JsonCodec(Notification | Entitlement)
encode = _codec.encode
decode = _codec.decode
