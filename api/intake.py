"""Intake: the idempotency record and the command (an outbox row) in ONE transaction, before
the API answers 202 (ARCHITECTURE.md, "Effectively once" → Intake).

Idempotency follows the IETF Idempotency-Key draft, scoped per user:
- same key, same request → the stored first answer, replayed;
- same key, different request → 422 ``idempotency_key_reused``;
- same key while the first request is still in its transaction → 409
  ``idempotency_key_in_flight``. ``pg_try_advisory_xact_lock`` on a hash of (user, key) makes
  that decision without waiting, and the primary key of ``idempotency_keys`` backs it up.
Ids are derived, never random, so a retried request can only ever name the same command.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from api.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    PaymentNotFound,
    PlanNotFound,
    PlanUnavailable,
    RefundInvalid,
    SubscriptionNotFound,
)
from api.models import AutoRenewUpdate, PaymentCreate, RefundCreate
from billing.config import Settings
from schemas.ids import command_id_for, derived_id, payment_id_for, subscription_id_for
from schemas.messages import Command, PaySubscription, RefundPayment, SetAutoRenew, encode
from schemas.money import Money, MoneyError

MAX_DESCRIPTION_LEN = 128  # YooKassa's limit


@dataclass(frozen=True)
class OutboxMessage:
    """A command ready to publish to billing.commands, keyed by its subscription."""

    command_id: str
    subscription_id: str
    payload: bytes

    @property
    def key(self) -> bytes:
        return self.subscription_id.encode()


@dataclass(frozen=True)
class IntakeOutcome:
    status_code: int
    body: dict[str, Any]
    replayed: bool
    message: OutboxMessage | None  # set only when this request created the command

    @property
    def location(self) -> str | None:
        url = self.body.get("status_url")
        return url if isinstance(url, str) else None


def fingerprint(method: str, path: str, body: dict[str, Any]) -> str:
    """sha256 of method, path and the canonical JSON of the validated body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method.upper()} {path}\n{canonical}".encode()).hexdigest()


def advisory_lock_key(user_id: str, idem_key: str) -> int:
    """A signed 64-bit key for pg_try_advisory_xact_lock; collisions only cost a spurious 409."""
    digest = hashlib.sha256(f"intake\x00{user_id}\x00{idem_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def status_url(payment_id: str) -> str:
    return f"/api/v1/payments/{payment_id}"


Build = Callable[[psycopg.AsyncConnection[Any]], Awaitable[tuple[Command, dict[str, Any]]]]


async def accept_command(
    pool: AsyncConnectionPool[Any],
    settings: Settings,
    *,
    user_id: str,
    idem_key: str,
    fp: str,
    build: Build,
    payment_id: str | None = None,
    refund_id: str | None = None,
) -> IntakeOutcome:
    """Store the idempotency record and the command built by ``build`` in one transaction.

    ``build`` runs inside it (it may read plans or check ownership and raise an ApiError, in
    which case nothing is stored) and returns the command and the 202 body."""
    command_id = command_id_for(user_id, idem_key)
    try:
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s)", (advisory_lock_key(user_id, idem_key),)
            )
            locked = await cur.fetchone()
            if locked is None or not locked[0]:
                raise IdempotencyKeyInFlight()

            cur = await conn.execute(
                "SELECT fingerprint, response_status, response_body FROM idempotency_keys"
                " WHERE user_id = %s AND idem_key = %s",
                (user_id, idem_key),
            )
            stored = await cur.fetchone()
            if stored is not None:
                if stored[0] != fp:
                    raise IdempotencyKeyReused()
                return IntakeOutcome(int(stored[1]), dict(stored[2]), True, None)

            command, body = await build(conn)
            assert command.command_id == command_id
            payload = encode(command)
            cur = await conn.execute(
                "INSERT INTO command_outbox (command_id, subscription_id, user_id, command_type,"
                " payload, payment_id, refund_id, next_publish_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))"
                " ON CONFLICT (command_id) DO NOTHING RETURNING command_id",
                (
                    command_id,
                    command.subscription_id,
                    user_id,
                    type(command).__name__,
                    payload,
                    payment_id,
                    refund_id,
                    settings.relay_delay_s,
                ),
            )
            # No row: the command exists from before an idempotency record expired; the relay
            # owns it, and the answer names the same ids anyway.
            created = await cur.fetchone() is not None
            await conn.execute(
                "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, command_id,"
                " response_status, response_body) VALUES (%s, %s, %s, %s, %s, %s)",
                (user_id, idem_key, fp, command_id, 202, Jsonb(body)),
            )
    except psycopg.errors.UniqueViolation as exc:
        # Two transactions got past the advisory lock (hash collision or a lock-less
        # writer): the other one wins, this one is "in flight" from the client's view.
        raise IdempotencyKeyInFlight() from exc
    message = OutboxMessage(command_id, command.subscription_id, payload) if created else None
    return IntakeOutcome(202, body, False, message)


async def accept_payment(
    pool: AsyncConnectionPool[Any],
    settings: Settings,
    *,
    user_id: str,
    idem_key: str,
    request: PaymentCreate,
    method: str,
    path: str,
) -> IntakeOutcome:
    command_id = command_id_for(user_id, idem_key)
    payment_id = payment_id_for(command_id)
    subscription_id = subscription_id_for(user_id)

    async def build(conn: psycopg.AsyncConnection[Any]) -> tuple[Command, dict[str, Any]]:
        command = await _build_command(
            conn,
            request,
            user_id=user_id,
            command_id=command_id,
            payment_id=payment_id,
            subscription_id=subscription_id,
        )
        body: dict[str, Any] = {
            "payment_id": payment_id,
            "subscription_id": subscription_id,
            "status": "accepted",
            "status_url": status_url(payment_id),
        }
        return command, body

    return await accept_command(
        pool,
        settings,
        user_id=user_id,
        idem_key=idem_key,
        fp=fingerprint(method, path, request.model_dump(mode="json")),
        build=build,
        payment_id=payment_id,
    )


async def accept_refund(
    pool: AsyncConnectionPool[Any],
    settings: Settings,
    *,
    user_id: str,
    idem_key: str,
    payment_id: str,
    request: RefundCreate,
    method: str,
    path: str,
    actor: str = "user",
    owner_id: str | None = None,
) -> IntakeOutcome:
    """Ask for a refund of one of ``owner_id``'s payments (the caller's own unless an admin
    acts). The refundable amount is enforced by the ledger, serially per subscription."""
    owner = owner_id or user_id
    command_id = command_id_for(user_id, idem_key)
    refund_id = derived_id(command_id, "refund")

    async def build(conn: psycopg.AsyncConnection[Any]) -> tuple[Command, dict[str, Any]]:
        cur = await conn.execute(
            "SELECT subscription_id::text, currency FROM payments"
            " WHERE payment_id = %s AND user_id = %s",
            (payment_id, owner),
        )
        row = await cur.fetchone()
        if row is None:
            raise PaymentNotFound()
        subscription_id, currency = row[0], str(row[1]).strip()
        amount = None
        if request.amount is not None:
            if request.amount.currency != currency:
                raise RefundInvalid(
                    "the refund currency must be the payment's",
                    details={"payment_currency": currency},
                )
            try:
                amount = Money.from_decimal(Decimal(request.amount.value), currency)
            except (MoneyError, InvalidOperation) as exc:
                raise RefundInvalid(str(exc)) from exc
            if amount.amount_minor <= 0:
                raise RefundInvalid("the refund amount must be positive")
        command = RefundPayment(
            command_id=command_id,
            subscription_id=subscription_id,
            issued_at=int(time.time() * 1000),
            user_id=owner,
            refund_id=refund_id,
            payment_id=payment_id,
            amount=amount,
            reason=request.reason,
            actor=actor,
        )
        body: dict[str, Any] = {
            "refund_id": refund_id,
            "payment_id": payment_id,
            "status": "accepted",
            "status_url": f"/api/v1/refunds/{refund_id}",
        }
        return command, body

    return await accept_command(
        pool,
        settings,
        user_id=user_id,
        idem_key=idem_key,
        fp=fingerprint(method, path, request.model_dump(mode="json")),
        build=build,
        refund_id=refund_id,
    )


async def accept_auto_renew(
    pool: AsyncConnectionPool[Any],
    settings: Settings,
    *,
    user_id: str,
    idem_key: str,
    request: AutoRenewUpdate,
    method: str,
    path: str,
) -> IntakeOutcome:
    """Turn auto-renewal off (access lasts to the period end, then it expires) or on."""
    command_id = command_id_for(user_id, idem_key)
    subscription_id = subscription_id_for(user_id)

    async def build(conn: psycopg.AsyncConnection[Any]) -> tuple[Command, dict[str, Any]]:
        cur = await conn.execute(
            "SELECT 1 FROM subscriptions WHERE subscription_id = %s", (subscription_id,)
        )
        if await cur.fetchone() is None:
            raise SubscriptionNotFound()
        command = SetAutoRenew(
            command_id=command_id,
            subscription_id=subscription_id,
            issued_at=int(time.time() * 1000),
            user_id=user_id,
            enabled=request.enabled,
        )
        body: dict[str, Any] = {
            "subscription_id": subscription_id,
            "auto_renew": request.enabled,
            "status": "accepted",
            "status_url": "/api/v1/subscriptions/me",
        }
        return command, body

    return await accept_command(
        pool,
        settings,
        user_id=user_id,
        idem_key=idem_key,
        fp=fingerprint(method, path, request.model_dump(mode="json")),
        build=build,
    )


async def _build_command(
    conn: psycopg.AsyncConnection[Any],
    request: PaymentCreate,
    *,
    user_id: str,
    command_id: str,
    payment_id: str,
    subscription_id: str,
) -> PaySubscription:
    cur = await conn.execute(
        "SELECT name, amount_minor, currency, period_months, archived FROM plans"
        " WHERE plan_id = %s",
        (request.plan_id,),
    )
    plan = await cur.fetchone()
    if plan is None:
        raise PlanNotFound(details={"plan_id": request.plan_id})
    name, amount_minor, currency, period_months, archived = plan
    if archived:
        raise PlanUnavailable(details={"plan_id": request.plan_id})
    try:
        amount = Money(int(amount_minor), str(currency).strip())
    except MoneyError as exc:
        raise PlanUnavailable(details={"plan_id": request.plan_id}) from exc
    return PaySubscription(
        command_id=command_id,
        subscription_id=subscription_id,
        issued_at=int(time.time() * 1000),
        user_id=user_id,
        payment_id=payment_id,
        plan_id=request.plan_id,
        amount=amount,
        period_months=int(period_months),
        return_url=request.return_url,
        description=str(name)[:MAX_DESCRIPTION_LEN],
    )
