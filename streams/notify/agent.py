"""Notifier: billing.events → billing.notifications and billing.entitlements.

Pure mapping (``derive``) plus thin glue. Ids are derived from the event id, so the same fact
always carries the same id, whatever the transport replays (schemas/notifications.py).

Nothing acked before it is done (invariant 8): a plain consumer (streams/consumer.py, group
``<worker id>-notifier``) commits a batch's offsets only after every message derived from it
was acknowledged by all in-sync replicas (idempotent producer, ``acks=all``). A stop, a crash
or a rebalance replays at most the uncommitted batch: the same messages with the same ids.

Where a new group starts (no committed offset: a first install, a renamed ``worker_id``, offsets
expired) is ``latest`` reached back ``notifier_reset_lookback_s`` (default an hour), never
``earliest`` by default: from the start of the log it would re-send every notification ever
(old e-mails to users, deduplicated only by consumers that keep every id forever) and replay
years of entitlements. The look-back covers the events the ledger emitted before the notifier
first joined and a deploy's gap; re-sent, they carry the same ids, and entitlements are
idempotent and ordered by their ``version`` per subscription. The start is committed at once,
so a crash before the first batch cannot skip ahead. Set ``BILLING_NOTIFIER_OFFSET_RESET=
earliest`` only to rebuild the topics for consumers that deduplicate by id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from billing.config import WorkerSettings
from billing.kafka_client import client_kwargs
from schemas import notifications as contract
from schemas import topics as topic_names
from schemas.ids import derived_id
from schemas.messages import (
    CARD_CHECK_RELEASED,
    AccessShortened,
    AnyEvent,
    DecodeError,
    PaymentCanceled,
    PaymentSucceeded,
    PeriodAdjusted,
    RefundSucceeded,
    RenewalFailed,
    RenewalUpcoming,
    SubscriptionActivated,
    SubscriptionCanceled,
    SubscriptionExpired,
    SubscriptionPastDue,
    TrialStarted,
    ValidationError,
    decode_event,
)
from schemas.notifications import Entitlement, Notification
from streams.consumer import Record, Start, run_consumer

log = logging.getLogger(__name__)

BATCH_SIZE = 1000

_RELEVANT = tuple(
    f'{{"type":"{name}"'.encode()
    for name in (
        "PaymentSucceeded",
        "PaymentCanceled",
        "RefundSucceeded",
        "RenewalUpcoming",
        "SubscriptionActivated",
        "PeriodAdjusted",
        "TrialStarted",
        "RenewalFailed",
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
        if event.reason == CARD_CHECK_RELEASED:
            return []  # a trial's or the wallet's card check, released as intended
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
    if isinstance(event, TrialStarted):
        return [
            note("trial_started", plan_id=event.plan_id, period_end=event.period_end),
            entitlement("granted", plan_id=event.plan_id, until=event.period_end),
        ]
    if isinstance(event, RenewalFailed) and event.reason == "no_payment_method":
        return [note("payment_method_needed", reason=event.reason)]
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


def outgoing(records: Sequence[Record]) -> list[tuple[str, bytes | None, bytes]]:
    """(topic, key, value) of every message a batch of billing.events records stands for, in
    order; keyed like the event (subscription id), so co-partitioned with it."""
    out: list[tuple[str, bytes | None, bytes]] = []
    for r in records:
        value = r.value or b""
        if not value.startswith(_RELEVANT):
            continue
        try:
            event = decode_event(value)
        except (DecodeError, ValidationError) as exc:
            log.error("notifier: undecodable event at %s@%s: %s", r.partition, r.offset, exc)
            continue
        for msg in derive(event):
            topic = (
                topic_names.NOTIFICATIONS
                if isinstance(msg, Notification)
                else topic_names.ENTITLEMENTS
            )
            out.append((topic, r.key, contract.encode(msg)))
    return out


async def publish(producer: AIOKafkaProducer, records: Sequence[Record]) -> None:
    """Send what ``records`` stand for and wait until every message is acknowledged (acks=all):
    only then may their offsets be committed. Raises if any send failed (the caller sends the
    batch again: same ids)."""
    sent = [await producer.send(t, v, key=k) for t, k, v in outgoing(records)]
    if sent:
        await asyncio.gather(*sent)


def register_notifier(app: Any, settings: WorkerSettings) -> Any:
    """The notifier as a task of the worker ``app``: its own consumer group and producer."""
    group = f"{settings.worker_id}-notifier"
    start = Start(settings.notifier_offset_reset, settings.notifier_reset_lookback_s)

    @app.task
    async def notifier() -> None:
        producer = AIOKafkaProducer(
            **client_kwargs(settings),
            client_id=group,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        try:
            await producer.start()
            await run_consumer(
                "notifier",
                bootstrap=client_kwargs(settings),
                topic=topic_names.EVENTS,
                group=group,
                start=start,
                handle=lambda records: publish(producer, records),
                max_records=BATCH_SIZE,
                session_timeout_s=settings.broker_session_timeout_s,
                heartbeat_interval_s=settings.broker_heartbeat_interval_s,
            )
        finally:
            await producer.stop()

    return notifier
