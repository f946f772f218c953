"""Reads: plain SQL on the Postgres read models (they bypass the ledger).

A payment the projection has not reached yet is answered from the outbox, so a client polling
right after its 202 sees ``accepted`` rather than a 404. Every user-facing query filters by the
caller's user id: another user's payment is indistinguishable from a missing one.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import msgspec
import psycopg
from psycopg.rows import dict_row

from api.errors import InvalidCursor
from billing.clock import now_ms
from schemas.http import (
    AdminPaymentOut,
    AdminPlanOut,
    AdminRefundOut,
    AdminSubscriptionDetail,
    AdminSubscriptionOut,
    AdminSubscriptionPage,
    CommandOut,
    EventOut,
    MoneyOut,
    PaymentOut,
    PaymentPage,
    PlanOut,
    PlanPriceOut,
    PlanRef,
    RefundOut,
    RefundPage,
    ScheduledPrice,
    SubscriptionOut,
)
from schemas.messages import (
    ChangePlan,
    DecodeError,
    PaySubscription,
    RefundPayment,
    RetryPayment,
    decode_command,
)
from schemas.money import Money, MoneyError
from schemas.periods import ms_to_dt
from schemas.promo import Discount, applies_to, charge_for

Conn = psycopg.AsyncConnection[Any]
T = TypeVar("T")

_PAYMENT_COLUMNS = (
    "payment_id::text, subscription_id::text, plan_id, status, status_reason, amount_minor,"
    " currency, confirmation_url, provider_payment_id, period_start, period_end, created_at,"
    " updated_at, receipt_registration"
)


def _money(amount_minor: int | None, currency: str | None) -> MoneyOut | None:
    if amount_minor is None or currency is None:
        return None
    try:
        return MoneyOut.of(int(amount_minor), currency.strip())
    except MoneyError:
        return None


async def _rows(conn: Conn, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


def _payment(row: dict[str, Any]) -> PaymentOut:
    """A row of ``_PAYMENT_COLUMNS`` (its other columns are not PaymentOut's)."""
    return PaymentOut(**row, amount=_money(row["amount_minor"], row["currency"]))


async def _own(
    conn: Conn,
    table: str,
    columns: str,
    key: str,
    item_id: uuid.UUID,
    user_id: str,
    read: Callable[[dict[str, Any]], T],
) -> tuple[T | None, dict[str, Any] | None]:
    """The caller's row of ``table`` whose ``key`` column is ``item_id`` (as ``read`` makes
    it), or else the outbox row of the command that asked for it (the projection has not
    reached it yet): (item, None), (None, outbox row) or (None, None)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {columns} FROM {table} WHERE {key} = %s AND user_id = %s", (item_id, user_id)
        )
        row = await cur.fetchone()
        if row is not None:
            return read(row), None
        await cur.execute(
            "SELECT command_id::text, subscription_id::text, status, status_reason, payload,"
            f" created_at, updated_at FROM command_outbox WHERE {key} = %s AND user_id = %s",
            (item_id, user_id),
        )
        return None, await cur.fetchone()


async def get_payment(conn: Conn, user_id: str, payment_id: uuid.UUID) -> PaymentOut | None:
    payment, outbox = await _own(
        conn, "payments", _PAYMENT_COLUMNS, "payment_id", payment_id, user_id, _payment
    )
    if outbox is None:  # in the read model, or nowhere
        return payment
    plan_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    try:
        cmd = decode_command(bytes(outbox["payload"]))
    except DecodeError:
        cmd = None
    if isinstance(cmd, PaySubscription):
        plan_id, amount_minor, currency = cmd.plan_id, cmd.amount.amount_minor, cmd.amount.currency
    elif isinstance(cmd, RetryPayment):
        plan_id = cmd.price.plan_id
        amount_minor, currency = cmd.price.amount.amount_minor, cmd.price.amount.currency
    elif isinstance(cmd, ChangePlan):
        plan_id = cmd.price.plan_id  # the amount (prorated, or none) is the ledger's to decide
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
    """Opaque keyset cursor over (created_at, id); also used for refunds."""
    raw = f"{created_at.isoformat()}|{payment_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def encode_id_cursor(item_id: str) -> str:
    return base64.urlsafe_b64encode(f"id|{item_id}".encode()).decode().rstrip("=")


def decode_id_cursor(cursor: str) -> uuid.UUID:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, _, item_id = raw.partition("|")
        if tag != "id":
            raise ValueError("not an id cursor")
        return uuid.UUID(item_id)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidCursor() from exc


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


async def _newest_first(
    conn: Conn,
    table: str,
    columns: str,
    key: str,
    user_id: str,
    filters: dict[str, Any],
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the caller's rows of ``table``, newest first, and the cursor of the next page
    (None: the last page): keyset pagination on (created_at, ``key``). ``filters`` maps a
    condition with one placeholder to its value; a None value filters nothing."""
    where = ["user_id = %s"]
    params: list[Any] = [user_id]
    for condition, value in filters.items():
        if value is not None:
            where.append(condition)
            params.append(value)
    if cursor is not None:
        at, item_id = decode_cursor(cursor)
        where.append(f"(created_at, {key}) < (%s, %s)")
        params.extend([at, item_id])
    params.append(limit + 1)
    rows = await _rows(
        conn,
        f"SELECT {columns} FROM {table} WHERE {' AND '.join(where)}"
        f" ORDER BY created_at DESC, {key} DESC LIMIT %s",
        params,
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last["created_at"], last[key])
    return rows[:limit], next_cursor


async def list_payments(
    conn: Conn,
    user_id: str,
    *,
    limit: int,
    status: str | None,
    cursor: str | None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
) -> PaymentPage:
    """Newest first; keyset pagination on (created_at, payment_id); ``created_from``
    inclusive, ``created_to`` exclusive."""
    filters = {
        "status = %s": status,
        "created_at >= %s": created_from,
        "created_at < %s": created_to,
    }
    rows, next_cursor = await _newest_first(
        conn, "payments", _PAYMENT_COLUMNS, "payment_id", user_id, filters, cursor, limit
    )
    return PaymentPage(items=[_payment(r) for r in rows], next_cursor=next_cursor)


def engine_now() -> datetime:
    """Now on the engine's clock (billing.clock.now_ms), not the database's: "active" and
    "the price in force" must mean what they mean to the ledger (tests shift this clock)."""
    return ms_to_dt(now_ms())


# The price in force now for the current plan, and at the period end for the plan the next
# period renews to (what the ledger's timer quotes for the renewal charge). Its two
# placeholders both take engine_now(), before any of the WHERE clause.
_SUBSCRIPTION_SELECT = """
SELECT s.subscription_id::text, s.user_id, s.status, s.plan_id, p.name AS plan_name,
       s.period_start, s.period_end, s.updated_at, s.auto_renew, s.status_reason,
       s.next_retry_at, s.next_plan_id, s.version, s.payment_method_saved, s.promo,
       (s.status = 'active' AND s.period_end > %s) AS active,
       cur.amount_minor AS plan_amount_minor, cur.currency AS plan_currency,
       nxt.amount_minor AS next_amount_minor, nxt.currency AS next_currency
FROM subscriptions s
LEFT JOIN plans p ON p.plan_id = s.plan_id
LEFT JOIN LATERAL (
    SELECT amount_minor, currency FROM plan_prices
    WHERE plan_id = s.plan_id AND effective_from <= %s
    ORDER BY effective_from DESC LIMIT 1) cur ON true
LEFT JOIN LATERAL (
    SELECT amount_minor, currency FROM plan_prices
    WHERE plan_id = COALESCE(s.next_plan_id, s.plan_id) AND effective_from <= s.period_end
    ORDER BY effective_from DESC LIMIT 1) nxt ON true
"""


def next_charge_at(row: dict[str, Any], renew_lead: timedelta) -> datetime | None:
    """When the ledger will next try to charge, as far as the read model can tell: the
    dunning retry if one is scheduled, else the renewal lead before the period end; nothing
    without auto-renewal or a saved payment method (the subscription then expires)."""
    if (
        not row["auto_renew"]
        or not row.get("payment_method_saved", True)
        or row["status"] not in ("active", "past_due")
    ):
        return None
    if row["next_retry_at"] is not None:
        retry: datetime = row["next_retry_at"]
        return retry
    if row["status"] == "active" and row["period_end"] is not None:
        end: datetime = row["period_end"]
        return end - renew_lead
    return None


def _subscription_fields(row: dict[str, Any], renew_lead: timedelta) -> dict[str, Any]:
    plan = PlanRef(plan_id=row["plan_id"], name=row["plan_name"]) if row["plan_id"] else None
    charge_at = next_charge_at(row, renew_lead)
    promo = _promo(row)
    return {
        "subscription_id": row["subscription_id"],
        "status": row["status"],
        "active": bool(row["active"]),
        "plan": plan,
        "plan_price": _money(row["plan_amount_minor"], row["plan_currency"]),
        "period_start": row["period_start"],
        "period_end": row["period_end"],
        "updated_at": row["updated_at"],
        "auto_renew": row["auto_renew"],
        "status_reason": row["status_reason"],
        "next_retry_at": row["next_retry_at"],
        "next_plan_id": row["next_plan_id"],
        "next_charge_at": charge_at,
        "next_charge_amount": _next_charge(row) if charge_at else None,
        "promo_code": promo.code if promo is not None else None,
        "promo_periods_left": promo.periods if promo is not None else None,
    }


def _promo(row: dict[str, Any]) -> Discount | None:
    """The promo discount left for the renewals (issue 16), as the ledger's state has it."""
    raw = row.get("promo")
    return msgspec.convert(raw, Discount) if raw else None


def _next_charge(row: dict[str, Any]) -> MoneyOut | None:
    """The next renewal's charge: the price in force at the period end, less the promo
    discount when it applies to the plan renewed (``schemas.promo.charge_for``, the ledger's)."""
    if row["next_amount_minor"] is None or row["next_currency"] is None:
        return None
    try:
        price = Money(int(row["next_amount_minor"]), row["next_currency"].strip())
    except MoneyError:
        return None
    promo = _promo(row)
    plan = row["next_plan_id"] or row["plan_id"]
    charge = charge_for(price, promo) if applies_to(promo, plan) else price
    return MoneyOut.of(charge.amount_minor, charge.currency)


async def get_subscription(
    conn: Conn, user_id: str, *, renew_lead: timedelta = timedelta(days=1)
) -> SubscriptionOut | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        now = engine_now()
        await cur.execute(_SUBSCRIPTION_SELECT + " WHERE s.user_id = %s", (now, now, user_id))
        row = await cur.fetchone()
    if row is None:
        return None
    return SubscriptionOut(**_subscription_fields(row, renew_lead))


def _admin_subscription(row: dict[str, Any], renew_lead: timedelta) -> AdminSubscriptionOut:
    return AdminSubscriptionOut(
        **_subscription_fields(row, renew_lead), user_id=row["user_id"], version=row["version"]
    )


async def list_subscriptions(
    conn: Conn,
    *,
    user_id: str | None,
    status: str | None,
    plan_id: str | None,
    cursor: str | None,
    limit: int,
    renew_lead: timedelta,
) -> AdminSubscriptionPage:
    """Every subscription matching the filters, in subscription id order (stable while rows
    change, so pages never skip or repeat one)."""
    where: list[str] = []
    now = engine_now()
    params: list[Any] = [now, now]
    if user_id is not None:
        where.append("s.user_id = %s")
        params.append(user_id)
    if status is not None:
        where.append("s.status = %s")
        params.append(status)
    if plan_id is not None:
        where.append("s.plan_id = %s")
        params.append(plan_id)
    if cursor is not None:
        where.append("s.subscription_id > %s")
        params.append(decode_id_cursor(cursor))
    sql = _SUBSCRIPTION_SELECT
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY s.subscription_id LIMIT %s"
    params.append(limit + 1)
    rows = await _rows(conn, sql, params)
    items = [_admin_subscription(r, renew_lead) for r in rows[:limit]]
    next_cursor = encode_id_cursor(items[-1].subscription_id) if len(rows) > limit else None
    return AdminSubscriptionPage(items=items, next_cursor=next_cursor)


_COMMAND_COLUMNS = (
    "command_id::text, command_type, subscription_id::text, user_id, payment_id::text,"
    " refund_id::text, status, status_reason, publish_attempts, published_at,"
    " next_publish_at, last_error, created_at, updated_at"
)


async def get_subscription_detail(
    conn: Conn,
    subscription_id: uuid.UUID,
    *,
    renew_lead: timedelta,
    events_after: int,
    events_limit: int,
    commands_limit: int = 50,
) -> AdminSubscriptionDetail | None:
    """One subscription for the console: its payments, refunds, latest commands and its
    event history (the audit trail), the events a page at a time."""
    async with conn.cursor(row_factory=dict_row) as cur:
        now = engine_now()
        await cur.execute(
            _SUBSCRIPTION_SELECT + " WHERE s.subscription_id = %s", (now, now, subscription_id)
        )
        row = await cur.fetchone()
        if row is None:
            return None
        await cur.execute(
            f"SELECT {_PAYMENT_COLUMNS}, kind, refunded_minor, price_version,"
            " command_id::text FROM payments WHERE subscription_id = %s"
            " ORDER BY created_at, payment_id",
            (subscription_id,),
        )
        payments = [
            AdminPaymentOut(
                **_payment(r).model_dump(),
                kind=r["kind"],
                refunded=_money(r["refunded_minor"], r["currency"]),
                price_version=r["price_version"],
                command_id=r["command_id"],
            )
            for r in await cur.fetchall()
        ]
        await cur.execute(
            f"SELECT {_REFUND_COLUMNS}, actor, command_id::text FROM refunds"
            " WHERE subscription_id = %s ORDER BY created_at, refund_id",
            (subscription_id,),
        )
        refunds = [
            AdminRefundOut(**_refund(r).model_dump(), actor=r["actor"], command_id=r["command_id"])
            for r in await cur.fetchall()
        ]
        await cur.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM command_outbox WHERE subscription_id = %s"
            " ORDER BY created_at DESC, command_id LIMIT %s",
            (subscription_id, commands_limit),
        )
        commands = [CommandOut(**r) for r in await cur.fetchall()]
        await cur.execute(
            "SELECT event_id::text, version, event_type, occurred_at, causation_id::text, body"
            " FROM subscription_events WHERE subscription_id = %s AND version > %s"
            " ORDER BY version LIMIT %s",
            (subscription_id, events_after, events_limit + 1),
        )
        event_rows = await cur.fetchall()
    events = [EventOut(**r) for r in event_rows[:events_limit]]
    return AdminSubscriptionDetail(
        subscription=_admin_subscription(row, renew_lead),
        payments=payments,
        refunds=refunds,
        commands=commands,
        events=events,
        events_next_after=events[-1].version if len(event_rows) > events_limit else None,
    )


_REFUND_COLUMNS = (
    "refund_id::text, payment_id::text, status, status_reason, amount_minor, currency,"
    " provider_refund_id, reason, created_at, updated_at, receipt_registration"
)


def _refund(row: dict[str, Any]) -> RefundOut:
    """A row of ``_REFUND_COLUMNS`` (its other columns are not RefundOut's)."""
    return RefundOut(**row, amount=_money(row["amount_minor"], row["currency"]))


async def get_refund(conn: Conn, user_id: str, refund_id: uuid.UUID) -> RefundOut | None:
    """A refund of yours; before the ledger has it, its outbox row (accepted/rejected)."""
    refund, outbox = await _own(
        conn, "refunds", _REFUND_COLUMNS, "refund_id", refund_id, user_id, _refund
    )
    if outbox is None:  # in the read model, or nowhere
        return refund
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


async def list_refunds(conn: Conn, user_id: str, payment_id: uuid.UUID) -> list[RefundOut] | None:
    """The refunds of one of the caller's payments, oldest first; None if the payment is not
    theirs (nor one they just asked for)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT EXISTS (SELECT 1 FROM payments WHERE payment_id = %(p)s AND user_id = %(u)s)"
            " OR EXISTS (SELECT 1 FROM command_outbox WHERE payment_id = %(p)s"
            " AND user_id = %(u)s) AS mine",
            {"p": payment_id, "u": user_id},
        )
        found = await cur.fetchone()
        if found is None or not found["mine"]:
            return None
        await cur.execute(
            f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE payment_id = %s AND user_id = %s"
            " ORDER BY created_at, refund_id",
            (payment_id, user_id),
        )
        return [_refund(r) for r in await cur.fetchall()]


async def list_user_refunds(
    conn: Conn, user_id: str, *, limit: int, status: str | None, cursor: str | None
) -> RefundPage:
    """The caller's refunds, newest first; keyset pagination on (created_at, refund_id)."""
    rows, next_cursor = await _newest_first(
        conn,
        "refunds",
        _REFUND_COLUMNS,
        "refund_id",
        user_id,
        {"status = %s": status},
        cursor,
        limit,
    )
    return RefundPage(items=[_refund(r) for r in rows], next_cursor=next_cursor)


# effective_from '-infinity' (the seeded first versions) cannot be loaded into a datetime:
# it reads NULL, "in force since the beginning".
_EFFECTIVE = "CASE WHEN isfinite(effective_from) THEN effective_from END"


async def list_plans(conn: Conn) -> list[PlanOut]:
    """Plans on sale with the price in force now and the next scheduled one."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT p.plan_id, p.name, p.period_months, p.trial_days,"
            " cur.version, cur.amount_minor, cur.currency,"
            " nxt.version AS next_version, nxt.amount_minor AS next_amount_minor,"
            " nxt.currency AS next_currency, nxt.effective_from AS next_effective_from"
            " FROM plans p"
            " JOIN LATERAL (SELECT version, amount_minor, currency FROM plan_prices"
            "  WHERE plan_id = p.plan_id AND effective_from <= %(now)s"
            "  ORDER BY effective_from DESC LIMIT 1) cur ON true"
            " LEFT JOIN LATERAL (SELECT version, amount_minor, currency, effective_from"
            "  FROM plan_prices WHERE plan_id = p.plan_id AND effective_from > %(now)s"
            "  ORDER BY effective_from LIMIT 1) nxt ON true"
            " WHERE NOT p.archived ORDER BY p.period_months, cur.amount_minor, p.plan_id",
            {"now": engine_now()},
        )
        rows = await cur.fetchall()
    plans: list[PlanOut] = []
    for r in rows:
        price = _money(r["amount_minor"], r["currency"])
        if price is None:  # a currency we cannot bill in is not for sale
            continue
        next_price = _money(r["next_amount_minor"], r["next_currency"])
        plans.append(
            PlanOut(
                plan_id=r["plan_id"],
                name=r["name"],
                price=price,
                amount_minor=r["amount_minor"],
                price_version=r["version"],
                period_months=r["period_months"],
                trial_days=r["trial_days"],
                next_price=(
                    ScheduledPrice(
                        price=next_price,
                        amount_minor=r["next_amount_minor"],
                        price_version=r["next_version"],
                        effective_from=r["next_effective_from"],
                    )
                    if next_price is not None
                    else None
                ),
            )
        )
    return plans


async def list_admin_plans(conn: Conn, plan_id: str | None = None) -> list[AdminPlanOut]:
    """Every plan (archived too) with every price version and the one in force now."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT plan_id, name, period_months, trial_days, archived, created_at, updated_at"
            " FROM plans WHERE %(plan)s::text IS NULL OR plan_id = %(plan)s ORDER BY plan_id",
            {"plan": plan_id},
        )
        plan_rows = await cur.fetchall()
        await cur.execute(
            f"SELECT plan_id, version, {_EFFECTIVE} AS effective_from,"
            " effective_from <= %(now)s AS started, amount_minor, currency, created_by, reason,"
            " created_at FROM plan_prices WHERE %(plan)s::text IS NULL OR plan_id = %(plan)s"
            " ORDER BY plan_id, plan_prices.effective_from",
            {"plan": plan_id, "now": engine_now()},
        )
        price_rows = await cur.fetchall()
    versions: dict[str, list[dict[str, Any]]] = {}
    for r in price_rows:
        versions.setdefault(r["plan_id"], []).append(r)
    out: list[AdminPlanOut] = []
    for p in plan_rows:
        rows = versions.get(p["plan_id"], [])
        in_force = [r for r in rows if r["started"]]
        now_row = in_force[-1] if in_force else None
        out.append(
            AdminPlanOut(  # p and r: their other columns are not the models'
                **p,
                price=_money(now_row["amount_minor"], now_row["currency"]) if now_row else None,
                price_version=now_row["version"] if now_row else None,
                prices=[
                    PlanPriceOut(**r, price=_money(r["amount_minor"], r["currency"])) for r in rows
                ],
            )
        )
    return out


async def get_admin_plan(conn: Conn, plan_id: str) -> AdminPlanOut | None:
    plans = await list_admin_plans(conn, plan_id)
    return plans[0] if plans else None


async def list_open_commands(conn: Conn, *, status: str | None, limit: int) -> list[CommandOut]:
    """Commands not done yet, oldest first: a stuck one shows its attempts and last error."""
    where = "status = %s" if status is not None else "status <> 'done'"
    params: list[Any] = [status] if status is not None else []
    params.append(limit)
    rows = await _rows(
        conn,
        f"SELECT {_COMMAND_COLUMNS} FROM command_outbox WHERE {where} ORDER BY created_at LIMIT %s",
        params,
    )
    return [CommandOut(**r) for r in rows]


async def get_command(conn: Conn, command_id: uuid.UUID) -> CommandOut | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM command_outbox WHERE command_id = %s",
            (command_id,),
        )
        row = await cur.fetchone()
    return CommandOut(**row) if row is not None else None


async def payment_accepted(conn: Conn, payment_id: str, user_id: str | None) -> bool:
    """The payment is accepted (in the outbox) but not yet in the read model: the ledger has
    not taken it yet. ``user_id`` None: anyone's (an admin asks)."""
    sql = "SELECT 1 FROM command_outbox WHERE payment_id = %s"
    params: tuple[str, ...] = (payment_id,)
    if user_id is not None:
        sql, params = sql + " AND user_id = %s", (payment_id, user_id)
    cur = await conn.execute(sql + " LIMIT 1", params)
    return await cur.fetchone() is not None


async def ping(conn: Conn) -> None:
    await conn.execute("SELECT 1")
