"""Notifier: billing.events → billing.notifications and billing.entitlements.

Pure mapping (``derive``) plus thin glue. Ids are derived from the event id, so the same fact
always carries the same id, whatever the transport replays (schemas/notifications.py).
"""

from __future__ import annotations

from typing import Any

from schemas import notifications as contract
from schemas.ids import derived_id
from schemas.messages import (
    AccessShortened,
    AnyEvent,
    PaymentCanceled,
    PaymentSucceeded,
    PeriodAdjusted,
    RefundSucceeded,
    RenewalUpcoming,
    SubscriptionActivated,
    SubscriptionCanceled,
    SubscriptionExpired,
    SubscriptionPastDue,
    decode_event,
)
from schemas.notifications import Entitlement, Notification
from streams.topics import Topics

_RELEVANT = tuple(
    f'{{"type":"{name}"'.encode()
    for name in (
        "PaymentSucceeded",
        "PaymentCanceled",
        "RefundSucceeded",
        "RenewalUpcoming",
        "SubscriptionActivated",
        "PeriodAdjusted",
        "AccessShortened",
        "SubscriptionPastDue",
        "SubscriptionExpired",
        "SubscriptionCanceled",
    )
)


def derive(event: AnyEvent) -> list[Notification | Entitlement]:
    """The notifications and entitlement changes one domain event stands for."""
    base: dict[str, Any] = {
        "user_id": event.user_id,
        "subscription_id": event.subscription_id,
        "occurred_at": event.occurred_at,
        "event_id": event.event_id,
    }

    def note(kind: contract.NotificationKind, **fields: Any) -> Notification:
        return Notification(
            notification_id=derived_id(event.event_id, f"notification-{kind}"),
            kind=kind,
            **base,
            **fields,
        )

    def entitlement(action: str, **fields: Any) -> Entitlement:
        return Entitlement(
            entitlement_id=derived_id(event.event_id, f"entitlement-{action}"),
            action=action,  # type: ignore[arg-type]
            version=event.version,
            **base,
            **fields,
        )

    if isinstance(event, PaymentSucceeded):
        return [note("payment_succeeded", payment_id=event.payment_id, amount=event.amount)]
    if isinstance(event, PaymentCanceled):
        return [note("payment_failed", payment_id=event.payment_id, reason=event.reason)]
    if isinstance(event, RefundSucceeded):
        return [
            note(
                "refund_succeeded",
                payment_id=event.payment_id,
                refund_id=event.refund_id,
                amount=event.amount,
            )
        ]
    if isinstance(event, RenewalUpcoming):
        return [
            note(
                "renewal_upcoming",
                plan_id=event.plan_id,
                amount=event.amount,
                period_end=event.period_end,
            )
        ]
    if isinstance(event, AccessShortened):
        return [entitlement("granted", plan_id=event.plan_id, until=event.period_end)]
    if isinstance(event, SubscriptionActivated | PeriodAdjusted):
        return [entitlement("granted", plan_id=event.plan_id, until=event.period_end)]
    if isinstance(event, SubscriptionPastDue):
        return [
            note("past_due", period_end=event.period_end),
            entitlement("revoked", reason="past_due"),
        ]
    if isinstance(event, SubscriptionExpired):
        return [
            note("expired", period_end=event.period_end, reason=event.reason),
            entitlement("revoked", reason=f"expired: {event.reason}"),
        ]
    if isinstance(event, SubscriptionCanceled):
        return [
            note("canceled", reason=event.reason),
            entitlement("revoked", reason=f"canceled: {event.reason}", until=event.access_until),
        ]
    return []


def register_notifier(app: Any, topics: Topics, notifications: Any, entitlements: Any) -> Any:
    @app.agent(topics.events, name="notifier")
    async def notifier(stream: Any) -> None:
        async for event in stream.events():
            value: bytes = event.value
            if not value.startswith(_RELEVANT):
                continue
            for msg in derive(decode_event(value)):
                target = notifications if isinstance(msg, Notification) else entitlements
                await target.send(key=event.key, value=contract.encode(msg))

    return notifier
