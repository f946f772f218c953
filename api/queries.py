"""Reads: plain SQL on the Postgres read models (they bypass the ledger).

A payment the projection has not reached yet is answered from the outbox, so a client polling
right after its 202 sees ``accepted`` rather than a 404. Every user-facing query filters by the
caller's user id: another user's payment is indistinguishable from a missing one.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from api.errors import InvalidCursor
from api.models import (
    CommandOut,
    MoneyOut,
    PaymentOut,
    PaymentPage,
    PlanOut,
    PlanRef,
    RefundOut,
    SubscriptionOut,
)
from schemas.messages import DecodeError, PaySubscription, RefundPayment, decode_command
from schemas.money import MoneyError

Conn = psycopg.AsyncConnection[Any]

_PAYMENT_COLUMNS = (
    "payment_id::text, subscription_id::text, plan_id, status, status_reason, amount_minor,"
    " currency, confirmation_url, provider_payment_id, period_start, period_end, created_at,"
    " updated_at"
)


def _money(amount_minor: int | None, currency: str | None) -> MoneyOut | None:
    if amount_minor is None or currency is None:
        return None
    try:
        return MoneyOut.of(int(amount_minor), currency.strip())
    except MoneyError:
        return None


def _payment(row: dict[str, Any]) -> PaymentOut:
    return PaymentOut(
        payment_id=row["payment_id"],
        subscription_id=row["subscription_id"],
        plan_id=row["plan_id"],
        status=row["status"],
        status_reason=row["status_reason"],
        amount=_money(row["amount_minor"], row["currency"]),
        amount_minor=row["amount_minor"],
        confirmation_url=row["confirmation_url"],
        provider_payment_id=row["provider_payment_id"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def get_payment(conn: Conn, user_id: str, payment_id: uuid.UUID) -> PaymentOut | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE payment_id = %s AND user_id = %s",
            (payment_id, user_id),
        )
        row = await cur.fetchone()
        if row is not None:
            return _payment(row)
        await cur.execute(
            "SELECT command_id::text, subscription_id::text, status, status_reason, payload,"
            " created_at, updated_at FROM command_outbox"
            " WHERE payment_id = %s AND user_id = %s",
            (payment_id, user_id),
        )
        outbox = await cur.fetchone()
    if outbox is None:
        return None
    plan_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    try:
        cmd = decode_command(bytes(outbox["payload"]))
    except DecodeError:
        cmd = None
    if isinstance(cmd, PaySubscription):
        plan_id, amount_minor, currency = cmd.plan_id, cmd.amount.amount_minor, cmd.amount.currency
    return PaymentOut(
        payment_id=str(payment_id),
        subscription_id=outbox["subscription_id"],
        plan_id=plan_id,
        status=outbox["status"],
        status_reason=outbox["status_reason"],
        amount=_money(amount_minor, currency),
        amount_minor=amount_minor,
        confirmation_url=None,
        provider_payment_id=None,
        period_start=None,
        period_end=None,
        created_at=outbox["created_at"],
        updated_at=outbox["updated_at"],
    )


def encode_cursor(created_at: datetime, payment_id: str) -> str:
    raw = f"{created_at.isoformat()}|{payment_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, pid = raw.partition("|")
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, uuid.UUID(pid)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidCursor() from exc


async def list_payments(
    conn: Conn, user_id: str, *, limit: int, status: str | None, cursor: str | None
) -> PaymentPage:
    """Newest first; keyset pagination on (created_at, payment_id)."""
    where = ["user_id = %s"]
    params: list[Any] = [user_id]
    if status is not None:
        where.append("status = %s")
        params.append(status)
    if cursor is not None:
        at, pid = decode_cursor(cursor)
        where.append("(created_at, payment_id) < (%s, %s)")
        params.extend([at, pid])
    params.append(limit + 1)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, payment_id DESC LIMIT %s",
            params,
        )
        rows = await cur.fetchall()
    items = [_payment(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last["created_at"], last["payment_id"])
    return PaymentPage(items=items, next_cursor=next_cursor)


async def get_subscription(conn: Conn, user_id: str) -> SubscriptionOut | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT s.subscription_id::text, s.status, s.plan_id, p.name AS plan_name,"
            " s.period_start, s.period_end, s.updated_at, s.auto_renew, s.status_reason,"
            " s.next_retry_at, (s.status = 'active' AND s.period_end > now()) AS active"
            " FROM subscriptions s LEFT JOIN plans p ON p.plan_id = s.plan_id"
            " WHERE s.user_id = %s",
            (user_id,),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    plan = PlanRef(plan_id=row["plan_id"], name=row["plan_name"]) if row["plan_id"] else None
    return SubscriptionOut(
        subscription_id=row["subscription_id"],
        status=row["status"],
        active=bool(row["active"]),
        plan=plan,
        period_start=row["period_start"],
        period_end=row["period_end"],
        updated_at=row["updated_at"],
        auto_renew=row["auto_renew"],
        status_reason=row["status_reason"],
        next_retry_at=row["next_retry_at"],
    )


_REFUND_COLUMNS = (
    "refund_id::text, payment_id::text, status, status_reason, amount_minor, currency,"
    " provider_refund_id, reason, created_at, updated_at"
)


def _refund(row: dict[str, Any]) -> RefundOut:
    return RefundOut(
        refund_id=row["refund_id"],
        payment_id=row["payment_id"],
        status=row["status"],
        status_reason=row["status_reason"],
        amount=_money(row["amount_minor"], row["currency"]),
        provider_refund_id=row["provider_refund_id"],
        reason=row["reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def get_refund(conn: Conn, user_id: str, refund_id: uuid.UUID) -> RefundOut | None:
    """A refund of yours; before the ledger has it, its outbox row (accepted/rejected)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE refund_id = %s AND user_id = %s",
            (refund_id, user_id),
        )
        row = await cur.fetchone()
        if row is not None:
            return _refund(row)
        await cur.execute(
            "SELECT status, status_reason, payload, created_at, updated_at FROM command_outbox"
            " WHERE refund_id = %s AND user_id = %s",
            (refund_id, user_id),
        )
        outbox = await cur.fetchone()
    if outbox is None:
        return None
    try:
        cmd = decode_command(bytes(outbox["payload"]))
    except DecodeError:
        return None
    if not isinstance(cmd, RefundPayment):
        return None
    return RefundOut(
        refund_id=str(refund_id),
        payment_id=cmd.payment_id,
        status=outbox["status"],
        status_reason=outbox["status_reason"],
        amount=_money(cmd.amount.amount_minor, cmd.amount.currency) if cmd.amount else None,
        provider_refund_id=None,
        reason=cmd.reason,
        created_at=outbox["created_at"],
        updated_at=outbox["updated_at"],
    )


async def list_refunds(conn: Conn, user_id: str, payment_id: uuid.UUID) -> list[RefundOut]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE payment_id = %s AND user_id = %s"
            " ORDER BY created_at, refund_id",
            (payment_id, user_id),
        )
        return [_refund(r) for r in await cur.fetchall()]


async def list_plans(conn: Conn) -> list[PlanOut]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT plan_id, name, amount_minor, currency, period_months, trial_days FROM plans"
            " WHERE NOT archived ORDER BY period_months, amount_minor, plan_id"
        )
        rows = await cur.fetchall()
    plans: list[PlanOut] = []
    for r in rows:
        price = _money(r["amount_minor"], r["currency"])
        if price is None:  # a currency we cannot bill in is not for sale
            continue
        plans.append(
            PlanOut(
                plan_id=r["plan_id"],
                name=r["name"],
                price=price,
                amount_minor=r["amount_minor"],
                period_months=r["period_months"],
                trial_days=r["trial_days"],
            )
        )
    return plans


async def list_open_commands(conn: Conn, *, status: str | None, limit: int) -> list[CommandOut]:
    """Commands not done yet, oldest first: a stuck one shows its attempts and last error."""
    where = "status = %s" if status is not None else "status <> 'done'"
    params: list[Any] = [status] if status is not None else []
    params.append(limit)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT command_id::text, command_type, subscription_id::text, user_id,"
            " payment_id::text, status, status_reason, publish_attempts, published_at,"
            " next_publish_at, last_error, created_at, updated_at"
            f" FROM command_outbox WHERE {where} ORDER BY created_at LIMIT %s",
            params,
        )
        rows = await cur.fetchall()
    return [CommandOut(**r) for r in rows]


async def ping(conn: Conn) -> None:
    await conn.execute("SELECT 1")
