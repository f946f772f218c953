"""Admin writes to the plan catalogue: plans and their effective-dated price versions.

The catalogue is the only source of prices (intake quotes the version in force now, the
ledger's timer the version in force when a period starts), and it lives in PostgreSQL, so
these are plain transactional writes, not commands. Each runs inside the idempotency
transaction of :func:`api.intake.accept_write`: a retried admin request never makes a second
price version. Prices are never edited in place: a change is a new version, and history stays.

Who and why: a price version records ``created_by`` ("admin:<id>") and ``reason``; the plan
table has no audit columns, so a plan's create/rename/archive is logged with actor and reason.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg

from api import queries
from api.errors import PlanExists, PlanNotFound, PriceConflict, PriceInPast, PriceInvalid
from api.queries import engine_now
from schemas.http import MoneyIn, PlanCreate, PlanUpdate, PriceCreate
from schemas.money import Money, MoneyError

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]

# A price "from now" sent by a console whose clock is a little behind the database's is
# still "now"; anything older is a request to rewrite the past.
CLOCK_SKEW = timedelta(seconds=60)


def parse_price(price: MoneyIn, *, currency: str | None = None) -> Money:
    """A positive amount in a currency we can bill in (and the plan's, when given)."""
    if currency is not None and price.currency != currency:
        raise PriceInvalid(
            "the price must be in the plan's currency",
            code="currency_mismatch",
            details={"plan_currency": currency},
        )
    try:
        money = Money.from_decimal(Decimal(price.value), price.currency)
    except MoneyError as exc:
        raise PriceInvalid(str(exc)) from exc
    if money.amount_minor <= 0:
        raise PriceInvalid("the price must be positive")
    return money


async def _plan_body(conn: Conn, plan_id: str) -> dict[str, Any]:
    plan = await queries.get_admin_plan(conn, plan_id)
    assert plan is not None
    return plan.model_dump(mode="json")


async def create_plan(conn: Conn, actor: str, request: PlanCreate) -> tuple[int, dict[str, Any]]:
    """A new plan with its first price version, in force from now."""
    price = parse_price(request.price)
    cur = await conn.execute(
        "INSERT INTO plans (plan_id, name, amount_minor, currency, period_months, trial_days)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (plan_id) DO NOTHING RETURNING plan_id",
        (
            request.plan_id,
            request.name,
            price.amount_minor,
            price.currency,
            request.period_months,
            request.trial_days,
        ),
    )
    if await cur.fetchone() is None:
        raise PlanExists(details={"plan_id": request.plan_id})
    await conn.execute(
        "INSERT INTO plan_prices (plan_id, version, effective_from, amount_minor, currency,"
        " created_by, reason) VALUES (%s, 1, %s, %s, %s, %s, %s)",
        (request.plan_id, engine_now(), price.amount_minor, price.currency, actor, request.reason),
    )
    log.info("plan %s created by %s at %s: %s", request.plan_id, actor, price, request.reason)
    return 201, await _plan_body(conn, request.plan_id)


async def update_plan(
    conn: Conn, actor: str, plan_id: str, request: PlanUpdate
) -> tuple[int, dict[str, Any]]:
    """Rename a plan or change its trial (its price only changes through a new version)."""
    cur = await conn.execute(
        "UPDATE plans SET name = COALESCE(%s, name), trial_days = COALESCE(%s, trial_days),"
        " updated_at = now() WHERE plan_id = %s RETURNING plan_id",
        (request.name, request.trial_days, plan_id),
    )
    if await cur.fetchone() is None:
        raise PlanNotFound(details={"plan_id": plan_id})
    log.info(
        "plan %s updated by %s (name=%r, trial_days=%r): %s",
        plan_id,
        actor,
        request.name,
        request.trial_days,
        request.reason,
    )
    return 200, await _plan_body(conn, plan_id)


async def archive_plan(
    conn: Conn, actor: str, plan_id: str, reason: str, *, archived: bool = True
) -> tuple[int, dict[str, Any]]:
    """Take a plan off sale (``archived=False``: put it back on sale, at its price in force
    then). Subscriptions already on it keep it and keep renewing either way."""
    cur = await conn.execute(
        "UPDATE plans SET archived = %s,"
        " updated_at = CASE WHEN archived = %s THEN updated_at ELSE now() END"
        " WHERE plan_id = %s RETURNING plan_id",
        (archived, archived, plan_id),
    )
    if await cur.fetchone() is None:
        raise PlanNotFound(details={"plan_id": plan_id})
    what = "archived" if archived else "back on sale"
    log.info("plan %s %s by %s: %s", plan_id, what, actor, reason)
    return 200, await _plan_body(conn, plan_id)


async def add_price(
    conn: Conn, actor: str, plan_id: str, request: PriceCreate
) -> tuple[int, dict[str, Any]]:
    """A new price version of a plan, in force from ``effective_from`` (now if omitted;
    never in the past). Versions are numbered in the order they are created."""
    cur = await conn.execute("SELECT currency FROM plans WHERE plan_id = %s FOR UPDATE", (plan_id,))
    row = await cur.fetchone()
    if row is None:
        raise PlanNotFound(details={"plan_id": plan_id})
    price = parse_price(request.price, currency=str(row[0]).strip())
    now = engine_now()
    effective = request.effective_from
    if effective is not None and effective < now - CLOCK_SKEW:
        raise PriceInPast(details={"now": now.isoformat()})
    cur = await conn.execute(
        "INSERT INTO plan_prices (plan_id, version, effective_from, amount_minor, currency,"
        " created_by, reason)"
        " SELECT %s, COALESCE(max(version), 0) + 1, %s, %s, %s, %s, %s"
        " FROM plan_prices WHERE plan_id = %s"
        " ON CONFLICT (plan_id, effective_from) DO NOTHING RETURNING version",
        (
            plan_id,
            max(effective, now) if effective is not None else now,
            price.amount_minor,
            price.currency,
            actor,
            request.reason,
            plan_id,
        ),
    )
    created = await cur.fetchone()
    if created is None:
        raise PriceConflict(details={"plan_id": plan_id})
    log.info(
        "plan %s price version %s (%s from %s) by %s: %s",
        plan_id,
        created[0],
        price,
        effective or "now",
        actor,
        request.reason,
    )
    return 201, await _plan_body(conn, plan_id)
