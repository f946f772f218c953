"""Projection: billing.events -> PostgreSQL read models, idempotent.

A batch is applied in one transaction. Per subscription, an event applies only if its version
is newer than the version already projected (``projection_versions``), so replays and
re-emissions change nothing. Every event is also kept in ``subscription_events`` (the audit
trail, deduplicated by event id). Projecting an outcome closes the intake loop: the command's
outbox row becomes processing, done or rejected.

Every kind of outbox row has an event that closes it (a row left ``accepted`` is republished
by the relay forever, ARCHITECTURE.md invariant 3):
- PaySubscription, RetryPayment, ChangePlan (upgrade): PaymentRejected / PlanChangeRejected,
  or PaymentRequested (processing) then the payment's PaymentSucceeded / PaymentCanceled
  (done); a downgrade: PlanChangeScheduled.
- RefundPayment: RefundRejected, or RefundRequested (processing) then RefundSucceeded /
  RefundFailed.
- SetAutoRenew: AutoRenewChanged. AdminAdjust: PeriodAdjusted, SubscriptionCanceled (with
  its command id) or AdminActionRejected.
- SettlePayment (an admin's capture/release): PaymentSettleRejected, or PaymentSettleRequested
  (processing) then the payment's PaymentSucceeded / PaymentCanceled (done): see
  ``_close_about``.
- A reconciliation correction (a provider observation on billing.provider-events, written by
  the API's resolution route): done when the payment's PaymentCanceled or the refund's
  RefundFailed is projected, whichever source caused it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from billing import metrics
from billing.config import WorkerSettings
from billing.kafka_client import client_kwargs
from schemas import topics as topic_names
from schemas.messages import (
    AccessShortened,
    AdminActionRejected,
    AnyEvent,
    AutoRenewChanged,
    DecodeError,
    MethodDetails,
    PaymentCanceled,
    PaymentMethodChanged,
    PaymentMethodRejected,
    PaymentMethodSaved,
    PaymentOutcomeUnknown,
    PaymentPending,
    PaymentRedriven,
    PaymentRejected,
    PaymentRequested,
    PaymentSettleRejected,
    PaymentSettleRequested,
    PaymentSucceeded,
    PeriodAdjusted,
    PlanChangeRejected,
    PlanChangeScheduled,
    RefundFailed,
    RefundOutcomeUnknown,
    RefundRedriven,
    RefundRejected,
    RefundRequested,
    RefundSucceeded,
    RenewalFailed,
    SubscriptionActivated,
    SubscriptionCanceled,
    SubscriptionExpired,
    SubscriptionPastDue,
    TrialStarted,
    ValidationError,
    decode_event,
    encode,
)
from schemas.periods import ms_to_dt
from streams.topics import Topics

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
BATCH_WITHIN_S = 0.02


def _ts(ms: int) -> datetime:
    return ms_to_dt(ms)


def _ms(ms: int) -> timedelta:
    return timedelta(milliseconds=ms)


def _period_ends(ends: dict[str, int]) -> list[tuple[str, tuple[Any, ...]]]:
    """Payments whose period now ends sooner (an upgrade's credit sources, a cancel): the
    event names them and their new ends, as evolve reads it."""
    return [
        ("UPDATE payments SET period_end = %s WHERE payment_id = %s", (_ts(end), payment_id))
        for payment_id, end in sorted(ends.items())
    ]


def statements(event: AnyEvent) -> list[tuple[str, tuple[Any, ...]]]:
    """The SQL that projects one event (applied only when its version is new)."""
    at = _ts(event.occurred_at)
    v = event.version
    sub = event.subscription_id
    if isinstance(event, PaymentRequested):
        r = event.request
        return [
            (
                "INSERT INTO payments (payment_id, subscription_id, user_id, command_id, plan_id,"
                " amount_minor, currency, status, created_at, updated_at, version, kind,"
                " price_version)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, 'requested', %s, %s, %s, %s, %s)"
                " ON CONFLICT (payment_id) DO NOTHING",
                (
                    r.payment_id,
                    sub,
                    event.user_id,
                    r.command_id,
                    r.plan_id,
                    r.amount.amount_minor,
                    r.amount.currency,
                    at,
                    at,
                    v,
                    r.kind,
                    r.price_version,
                ),
            ),
            (
                # A wallet's card check leaves the subscription's status alone (evolve).
                "INSERT INTO subscriptions (subscription_id, user_id, status, version, updated_at)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (subscription_id) DO UPDATE SET"
                " status = CASE WHEN %s AND subscriptions.status"
                " IN ('none', 'inactive', 'expired', 'canceled')"
                " THEN 'pending' ELSE subscriptions.status END,"
                " version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
                (
                    sub,
                    event.user_id,
                    "none" if r.kind == "verify" else "pending",
                    v,
                    at,
                    r.kind != "verify",
                ),
            ),
            (
                "UPDATE command_outbox SET status = 'processing', updated_at = now()"
                " WHERE command_id = %s AND status = 'accepted'",
                (r.command_id,),
            ),
        ]
    if isinstance(event, PaymentRedriven):
        return [
            (
                "UPDATE payments SET status_reason = %s, updated_at = %s, version = %s"
                " WHERE payment_id = %s",
                (
                    f"awaiting provider outcome (check {event.attempt})",
                    at,
                    v,
                    event.request.payment_id,
                ),
            )
        ]
    if isinstance(event, PaymentRejected):
        return [
            (
                "UPDATE command_outbox SET status = 'rejected', status_reason = %s,"
                " updated_at = now() WHERE command_id = %s"
                " AND status IN ('accepted', 'processing')",
                (
                    f"{event.reason}: {event.detail}" if event.detail else event.reason,
                    event.command_id,
                ),
            ),
            (
                # A refused payment never used the promo code it redeemed at intake (issue
                # 16): the user's redemption and its count are given back (once: a second
                # projection of this event finds no row).
                "WITH gone AS (DELETE FROM promo_redemptions WHERE payment_id = %s"
                " RETURNING code)"
                " UPDATE promo_codes SET redeemed = redeemed - 1"
                " WHERE code IN (SELECT code FROM gone)",
                (event.payment_id,),
            ),
        ]
    if isinstance(event, PaymentPending):
        reason = "awaiting confirmation" if event.confirmation_url else "awaiting provider"
        return [
            (
                "UPDATE payments SET status = %s, provider_payment_id = %s,"
                " confirmation_url = %s, status_reason = %s, updated_at = %s, version = %s"
                " WHERE payment_id = %s",
                (
                    event.status,
                    event.provider_payment_id,
                    event.confirmation_url,
                    reason,
                    at,
                    v,
                    event.payment_id,
                ),
            )
        ]
    if isinstance(event, PaymentOutcomeUnknown):
        return [
            (
                "UPDATE payments SET status = 'unknown', status_reason = %s, updated_at = %s,"
                " provider_payment_id = COALESCE(%s, provider_payment_id),"
                " version = %s WHERE payment_id = %s",
                (event.error, at, event.provider_payment_id, v, event.payment_id),
            )
        ]
    if isinstance(event, PaymentSucceeded):
        return [
            (
                "UPDATE payments SET status = 'succeeded', provider_payment_id = %s,"
                " amount_minor = %s, confirmation_url = NULL, status_reason = NULL,"
                " receipt_registration = COALESCE(%s, receipt_registration),"
                " updated_at = %s, version = %s WHERE payment_id = %s",
                (
                    event.provider_payment_id,
                    event.amount.amount_minor,
                    event.receipt_registration,
                    at,
                    v,
                    event.payment_id,
                ),
            ),
            (
                "UPDATE command_outbox SET status = 'done', status_reason = 'succeeded',"
                " updated_at = now() WHERE command_id = %s"
                " AND status IN ('accepted', 'processing')",
                (event.command_id,),
            ),
            _close_about(sub, SETTLE, "payment_id", event.payment_id, "payment succeeded"),
            *(
                _method_saved(event, event.payment_method_id, event.payment_method)
                if event.payment_method_id
                else []
            ),
        ]
    if isinstance(event, PaymentCanceled):
        return [
            (
                "UPDATE payments SET status = 'canceled', status_reason = %s,"
                " provider_payment_id = COALESCE(%s, provider_payment_id),"
                " confirmation_url = NULL, updated_at = %s, version = %s WHERE payment_id = %s",
                (event.reason, event.provider_payment_id, at, v, event.payment_id),
            ),
            (
                "UPDATE command_outbox SET status = 'done', status_reason = %s,"
                " updated_at = now() WHERE command_id = %s"
                " AND status IN ('accepted', 'processing')",
                (f"canceled: {event.reason}", event.command_id),
            ),
            _close_about(
                sub,
                (*SETTLE, *PAYMENT_CORRECTION),
                "payment_id",
                event.payment_id,
                f"payment canceled: {event.reason}",
            ),
            (
                "UPDATE subscriptions SET status = 'inactive', version = %s, updated_at = %s"
                " WHERE subscription_id = %s AND status = 'pending'",
                (v, at, sub),
            ),
        ]
    if isinstance(event, SubscriptionActivated):
        return [
            (
                "UPDATE payments SET period_start = %s, period_end = %s, version = %s"
                " WHERE payment_id = %s",
                (_ts(event.period_start), _ts(event.period_end), v, event.payment_id),
            ),
            *_period_ends(event.supersedes),
            (
                "INSERT INTO subscriptions (subscription_id, user_id, status, plan_id,"
                " period_start, period_end, version, updated_at, promo)"
                " VALUES (%s, %s, 'active', %s, %s, %s, %s, %s, %s::jsonb)"
                " ON CONFLICT (subscription_id) DO UPDATE SET status = 'active',"
                " plan_id = EXCLUDED.plan_id, next_retry_at = NULL, status_reason = NULL,"
                " next_plan_id = NULL,"
                " period_start = CASE WHEN %s AND subscriptions.period_start IS NOT NULL"
                " THEN subscriptions.period_start ELSE EXCLUDED.period_start END,"
                " period_end = EXCLUDED.period_end, version = EXCLUDED.version,"
                " updated_at = EXCLUDED.updated_at, promo = EXCLUDED.promo",
                (
                    sub,
                    event.user_id,
                    event.plan_id,
                    _ts(event.period_start),
                    _ts(event.period_end),
                    v,
                    at,
                    # The promo discount left for the next renewals (issue 16), as the state.
                    encode(event.promo).decode() if event.promo is not None else None,
                    event.extended,
                ),
            ),
        ]
    return _lifecycle_statements(event)


def _method_saved(
    event: AnyEvent, method_id: str, details: MethodDetails | None
) -> list[tuple[str, tuple[Any, ...]]]:
    """A saved method joins the wallet as its default (evolve: the newest saved is it)."""
    d = details or MethodDetails()
    at = _ts(event.occurred_at)
    return [
        (
            "UPDATE payment_methods SET is_default = false, updated_at = %s"
            " WHERE subscription_id = %s AND is_default AND method_id <> %s",
            (at, event.subscription_id, method_id),
        ),
        (
            "INSERT INTO payment_methods (method_id, subscription_id, user_id, type, title,"
            " first6, last4, expiry_month, expiry_year, card_type, issuer_country, issuer_name,"
            " saved_by_payment, is_default, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, true, %s, %s)"
            " ON CONFLICT (method_id) DO UPDATE SET is_default = true, deleted_at = NULL,"
            " updated_at = EXCLUDED.updated_at",
            (
                method_id,
                event.subscription_id,
                event.user_id,
                d.type,
                d.title,
                d.first6,
                d.last4,
                d.expiry_month,
                d.expiry_year,
                d.card_type,
                d.issuer_country,
                d.issuer_name,
                getattr(event, "payment_id", None),
                at,
                at,
            ),
        ),
        (
            "UPDATE subscriptions SET payment_method_saved = true WHERE subscription_id = %s",
            (event.subscription_id,),
        ),
    ]


def _wallet_statements(event: AnyEvent) -> list[tuple[str, tuple[Any, ...]]] | None:
    """Trials and the wallet (None: not one of theirs)."""
    at = _ts(event.occurred_at)
    if isinstance(event, TrialStarted):
        return [
            *_sub(
                "status = 'active', plan_id = %s, period_start = %s, period_end = %s,"
                " trial_end = %s, next_retry_at = NULL, status_reason = 'trial',"
                " next_plan_id = NULL",
                (
                    event.plan_id,
                    _ts(event.period_start),
                    _ts(event.period_end),
                    _ts(event.period_end),
                ),
                event,
            ),
            (
                "UPDATE payments SET status_reason = 'card checked: trial started',"
                " updated_at = %s WHERE payment_id = %s",
                (at, event.payment_id),
            ),
            _close(event.command_id, "done", "trial started"),
        ]
    if isinstance(event, PaymentMethodSaved):
        return _method_saved(event, event.method_id, event.details)
    if isinstance(event, PaymentMethodChanged):
        out: list[tuple[str, tuple[Any, ...]]] = []
        if event.action == "delete":
            out.append(
                (
                    "UPDATE payment_methods SET deleted_at = %s, is_default = false,"
                    " updated_at = %s WHERE method_id = %s AND subscription_id = %s",
                    (at, at, event.method_id, event.subscription_id),
                )
            )
        out += [
            (
                "UPDATE payment_methods SET is_default = (method_id = %s), updated_at = %s"
                " WHERE subscription_id = %s AND deleted_at IS NULL",
                (event.default_method or "", at, event.subscription_id),
            ),
            *_sub("payment_method_saved = %s", (event.default_method is not None,), event),
            _close(event.command_id, "done", f"payment method {event.action}"),
        ]
        return out
    if isinstance(event, PaymentMethodRejected):
        return [_close(event.command_id, "rejected", event.reason)]
    return None


# Outbox rows closed by the outcome of the payment or refund they are about, not by an event
# carrying their own id (see _close_about).
SETTLE = ("SettlePayment",)
PAYMENT_CORRECTION = ("PaymentObserved",)
REFUND_CORRECTION = ("RefundObserved",)


def _close_about(
    subscription_id: str, types: tuple[str, ...], field: str, object_id: str, reason: str
) -> tuple[str, tuple[Any, ...]]:
    """Close the open outbox rows of ``types`` about one payment or refund (``field`` of the
    payload names it) as done.

    An admin's capture/release is done when its payment ends (succeeded or canceled), not when
    the ledger asks the provider (PaymentSettleRequested: that only makes it processing, which
    already stops the relay). The outcome is what the admin asked about, a capture can still
    fail, and the ledger re-drives it itself until the payment ends, so until then the command
    is visibly pending with its reason. The outcome events carry the payment's original pay
    command id, never the settle's, and several admins' settles may wait on one payment (the
    same action asked twice): so they are found by payment, every one of them closed.
    A reconciliation correction is a provider observation whose effect is the payment (or
    refund) canceled: it is done once that is projected, whatever caused it, so a correction
    the ledger had nothing left to apply to (already canceled) does not stay open either. The
    partial index of migration 0009 keeps this to the subscription's few open rows."""
    return (
        "UPDATE command_outbox SET status = 'done', status_reason = %s, updated_at = now()"
        " WHERE subscription_id = %s AND status IN ('accepted', 'processing')"
        " AND command_type = ANY(%s)"
        " AND convert_from(payload, 'UTF8')::jsonb ->> %s = %s",
        (reason, subscription_id, list(types), field, object_id),
    )


def _close(command_id: str, status: str, reason: str) -> tuple[str, tuple[Any, ...]]:
    return (
        "UPDATE command_outbox SET status = %s, status_reason = %s, updated_at = now()"
        " WHERE command_id = %s AND status IN ('accepted', 'processing')",
        (status, reason, command_id),
    )


def _sub(sets: str, params: tuple[Any, ...], event: AnyEvent) -> list[tuple[str, tuple[Any, ...]]]:
    """Update the subscription row, creating it first for a user whose first event is not a
    payment's (auto-renew toggled before ever paying, an admin's grant to a new user): the
    update then applies to the new row too."""
    return [
        (
            "INSERT INTO subscriptions (subscription_id, user_id, status, version, updated_at)"
            " VALUES (%s, %s, 'none', %s, %s) ON CONFLICT (subscription_id) DO NOTHING",
            (event.subscription_id, event.user_id, event.version, _ts(event.occurred_at)),
        ),
        (
            f"UPDATE subscriptions SET {sets}, version = %s, updated_at = %s"
            " WHERE subscription_id = %s",
            (*params, event.version, _ts(event.occurred_at), event.subscription_id),
        ),
    ]


def _lifecycle_statements(event: AnyEvent) -> list[tuple[str, tuple[Any, ...]]]:
    wallet = _wallet_statements(event)
    if wallet is not None:
        return wallet
    at = _ts(event.occurred_at)
    v = event.version
    if isinstance(event, RefundRequested):
        r = event.request
        return [
            (
                "INSERT INTO refunds (refund_id, payment_id, subscription_id, user_id, command_id,"
                " amount_minor, currency, status, reason, actor, created_at, updated_at,"
                " version) VALUES (%s, %s, %s, %s, %s, %s, %s, 'requested', %s, %s, %s, %s, %s)"
                " ON CONFLICT (refund_id) DO NOTHING",
                (
                    r.refund_id,
                    r.payment_id,
                    event.subscription_id,
                    event.user_id,
                    r.command_id,
                    r.amount.amount_minor,
                    r.amount.currency,
                    r.reason,
                    r.actor,
                    at,
                    at,
                    v,
                ),
            ),
            (
                "UPDATE command_outbox SET status = 'processing', updated_at = now()"
                " WHERE command_id = %s AND status = 'accepted'",
                (r.command_id,),
            ),
        ]
    if isinstance(event, RefundRedriven):
        return [
            (
                "UPDATE refunds SET status_reason = %s, updated_at = %s, version = %s"
                " WHERE refund_id = %s",
                (
                    f"awaiting provider outcome (check {event.attempt})",
                    at,
                    v,
                    event.request.refund_id,
                ),
            )
        ]
    if isinstance(event, RefundOutcomeUnknown):
        return [
            (
                "UPDATE refunds SET status = 'unknown', status_reason = %s, updated_at = %s,"
                " version = %s WHERE refund_id = %s",
                (event.error, at, v, event.refund_id),
            )
        ]
    if isinstance(event, RefundSucceeded):
        return [
            (
                "UPDATE refunds SET status = 'succeeded', status_reason = NULL,"
                " provider_refund_id = %s,"
                " receipt_registration = COALESCE(%s, receipt_registration),"
                " updated_at = %s, version = %s WHERE refund_id = %s",
                (event.provider_refund_id, event.receipt_registration, at, v, event.refund_id),
            ),
            (
                "UPDATE payments SET refunded_minor = refunded_minor + %s, updated_at = %s"
                " WHERE payment_id = %s",
                (event.amount.amount_minor, at, event.payment_id),
            ),
            _close(event.command_id, "done", "refunded"),
        ]
    if isinstance(event, RefundFailed):
        return [
            (
                "UPDATE refunds SET status = 'canceled', status_reason = %s,"
                " provider_refund_id = COALESCE(%s, provider_refund_id), updated_at = %s,"
                " version = %s WHERE refund_id = %s",
                (event.reason, event.provider_refund_id, at, v, event.refund_id),
            ),
            _close(event.command_id, "done", f"refund failed: {event.reason}"),
            _close_about(
                event.subscription_id,
                REFUND_CORRECTION,
                "refund_id",
                event.refund_id,
                f"refund canceled: {event.reason}",
            ),
        ]
    if isinstance(event, RefundRejected):
        reason = f"{event.reason}: {event.detail}" if event.detail else event.reason
        return [_close(event.command_id, "rejected", reason)]
    if isinstance(event, AutoRenewChanged):
        return [
            *_sub("auto_renew = %s", (event.enabled,), event),
            _close(
                event.command_id, "done", "auto_renew on" if event.enabled else "auto_renew off"
            ),
        ]
    if isinstance(event, RenewalFailed):
        return [
            *_sub(
                "next_retry_at = %s, status_reason = %s",
                (
                    _ts(event.next_retry_at) if event.next_retry_at else None,
                    f"renewal declined: {event.reason}",
                ),
                event,
            )
        ]
    if isinstance(event, SubscriptionPastDue):
        return [*_sub("status = 'past_due'", (), event)]
    if isinstance(event, SubscriptionExpired):
        return [
            *_sub(
                "status = 'expired', status_reason = %s, next_retry_at = NULL",
                (event.reason,),
                event,
            )
        ]
    if isinstance(event, AccessShortened):
        out = [*_sub("period_end = %s", (_ts(event.period_end),), event)]
        if event.moved:
            out.append(
                (
                    "UPDATE payments SET period_start = period_start - %s,"
                    " period_end = period_end - %s WHERE payment_id = ANY(%s::uuid[])",
                    (_ms(event.moved_by_ms), _ms(event.moved_by_ms), event.moved),
                )
            )
        return out
    if isinstance(event, PlanChangeScheduled):
        return [
            *_sub("next_plan_id = %s", (event.plan_id,), event),
            _close(event.command_id, "done", f"plan change to {event.plan_id} at period end"),
        ]
    if isinstance(event, PaymentSettleRequested):
        reason = f"{event.action} requested by {event.actor} (attempt {event.attempt})"
        return [
            (
                "UPDATE payments SET status_reason = %s, updated_at = %s, version = %s"
                " WHERE payment_id = %s",
                (reason, at, v, event.payment_id),
            ),
            # Taken by the ledger: no more republishing; done when the payment ends.
            (
                "UPDATE command_outbox SET status = 'processing', status_reason = %s,"
                " updated_at = now() WHERE command_id = %s AND status = 'accepted'",
                (reason, event.command_id),
            ),
        ]
    if isinstance(event, PaymentSettleRejected):
        return [_close(event.command_id, "rejected", event.reason)]
    if isinstance(event, PlanChangeRejected | AdminActionRejected):
        return [_close(event.command_id, "rejected", event.reason)]
    if isinstance(event, PeriodAdjusted):
        return [
            *_sub(
                "status = 'active', plan_id = COALESCE(%s, subscriptions.plan_id),"
                " period_start = %s, period_end = %s, status_reason = %s, next_retry_at = NULL",
                (
                    event.plan_id,
                    _ts(event.period_start),
                    _ts(event.period_end),
                    f"{event.action} by {event.actor}: {event.reason}",
                ),
                event,
            ),
            _close(event.command_id, "done", event.action),
        ]
    if isinstance(event, SubscriptionCanceled):
        out = [
            *_sub(
                "status = 'canceled', status_reason = %s, period_end = %s",
                (event.reason, _ts(event.access_until)),
                event,
            ),
            *_period_ends(event.supersedes),
        ]
        if event.command_id:
            out.append(_close(event.command_id, "done", "canceled"))
        return out
    return []


async def project(
    conn: psycopg.AsyncConnection[Any], batch: Sequence[tuple[AnyEvent, bytes]]
) -> int:
    """Apply a batch of (event, raw bytes) in one transaction; returns events applied."""
    if not batch:
        return 0
    subs = sorted({e.subscription_id for e, _ in batch})
    async with conn.transaction():
        # Lock the guard rows in a fixed order: two workers briefly sharing a partition during
        # a rebalance serialise here instead of interleaving.
        await conn.execute(
            "INSERT INTO projection_versions (subscription_id, version)"
            " SELECT unnest(%s::uuid[]), 0 ON CONFLICT DO NOTHING",
            (subs,),
        )
        cur = await conn.execute(
            "SELECT subscription_id::text, version FROM projection_versions"
            " WHERE subscription_id = ANY(%s::uuid[]) ORDER BY subscription_id FOR UPDATE",
            (subs,),
        )
        current: dict[str, int] = {row[0]: row[1] for row in await cur.fetchall()}
        todo: list[tuple[AnyEvent, bytes]] = []
        for event, raw in batch:
            seen = current.get(event.subscription_id, 0)
            if event.version <= seen:
                continue
            if event.version != seen + 1:
                log.error(
                    "version gap for subscription %s: projected %s, got %s (%s)",
                    event.subscription_id,
                    seen,
                    event.version,
                    type(event).__name__,
                )
            current[event.subscription_id] = event.version
            todo.append((event, raw))
        if not todo:
            return 0
        async with conn.cursor() as c:
            await c.executemany(
                "INSERT INTO subscription_events (event_id, subscription_id, version, event_type,"
                " occurred_at, causation_id, body) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)"
                " ON CONFLICT DO NOTHING",
                [
                    (
                        e.event_id,
                        e.subscription_id,
                        e.version,
                        type(e).__name__,
                        _ts(e.occurred_at),
                        e.causation_id,
                        raw.decode(),
                    )
                    for e, raw in todo
                ],
            )
            for event, _ in todo:
                for sql, params in statements(event):
                    await c.execute(sql, params)
            await c.executemany(
                "UPDATE projection_versions SET version = %s WHERE subscription_id = %s",
                [(v, s) for s, v in current.items()],
            )
    return len(todo)


def register_projection(app: Any, topics: Topics, dsn: str, settings: WorkerSettings) -> Any:
    """The projection as a plain consumer (group ``<worker id>-projection``) that commits a
    batch's offsets only after its PostgreSQL transaction committed.

    Not a Faust agent on purpose: Faust acknowledges a ``take()`` batch in a ``finally`` even
    when the agent is cancelled mid-batch (a graceful stop or a revocation), so a stop could
    commit events that were never applied, and the version guard would then skip them for
    good (found by the chaos suite). Here a stop, a crash or a rebalance can only replay,
    and a replay is harmless (version guard)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import CommitFailedError

    group = f"{settings.worker_id}-projection"

    @app.task
    async def projection() -> None:
        consumer = AIOKafkaConsumer(
            topic_names.EVENTS,
            **client_kwargs(settings),
            group_id=group,
            client_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=BATCH_SIZE,
            session_timeout_ms=int(settings.broker_session_timeout_s * 1000),
            heartbeat_interval_ms=int(settings.broker_heartbeat_interval_s * 1000),
        )
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn, min_size=1, max_size=2, open=False
        )
        await pool.open(wait=True, timeout=30)
        await consumer.start()
        try:
            while True:
                got = await consumer.getmany(timeout_ms=200, max_records=BATCH_SIZE)
                if not got:
                    continue
                batch: list[tuple[AnyEvent, bytes]] = []
                for records in got.values():
                    for r in records:
                        try:
                            batch.append((decode_event(r.value or b""), r.value or b""))
                        except (DecodeError, ValidationError) as exc:
                            log.error("undecodable event at %s@%s: %s", r.topic, r.offset, exc)
                backoff = 0.2
                while True:
                    try:
                        async with pool.connection() as conn:
                            await project(conn, batch)
                        break
                    except (psycopg.OperationalError, psycopg.errors.DeadlockDetected) as exc:
                        log.warning("projection batch failed (%r); retrying", exc)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 10.0)
                offsets = {tp: records[-1].offset + 1 for tp, records in got.items() if records}
                metrics.made_durable("projection", [r for rs in got.values() for r in rs])
                try:
                    await consumer.commit(offsets)
                except CommitFailedError as exc:  # revoked meanwhile: the new owner replays
                    log.info("projection commit after a rebalance refused: %s", exc)
        finally:
            await consumer.stop()
            await pool.close()

    return projection
