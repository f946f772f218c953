"""Promo codes in PostgreSQL (issue 16): the admin's writes, the user's quote, and the
redemption intake makes in the transaction of the payment that redeems a code.

Exact under concurrency: the redemption is one row per (code, user) (a user redeems a code
once) and one conditional increment of the code's count (``redeemed < max_redemptions``), both
in the intake transaction that writes the command to the outbox. Two users racing for the
last redemption both insert their row; the increments queue on the code's row lock and the
second one, re-checked after the first commits, matches nothing: ``promo_exhausted``, and its
transaction (its row and its command) rolls back. A refused request counts nothing; a replayed
one (same Idempotency-Key) is answered from the idempotency record and counts nothing again.

Prices come from ``schemas.promo.charge_for`` only: the quote and the ledger's charge agree.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from api.errors import Conflict, NotFound, PlanNotFound, Unprocessable
from api.queries import engine_now
from schemas.http import MoneyOut
from schemas.http_promo import PromoCreate, PromoOut, PromoRedemptionOut, QuoteOut
from schemas.messages import PriceQuote
from schemas.money import Money, MoneyError
from schemas.promo import Discount, charge_for, discount_minor, normalise_code

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]


class PromoRefused(Unprocessable):
    """A code that cannot be used for this payment; ``code`` says why (promo_not_found,
    promo_expired, promo_exhausted, promo_already_used, promo_not_for_plan,
    promo_not_with_trial)."""

    code = "promo_not_found"
    message = "this promo code cannot be used"


class PromoCodeNotFound(NotFound):
    code = "promo_not_found"
    message = "no such promo code"


class PromoExists(Conflict):
    code = "promo_exists"
    message = "a promo code with this name exists (codes are case-insensitive)"


class PromoInvalid(Unprocessable):
    code = "promo_invalid"
    message = "the promo code cannot be created as asked"


_COLUMNS = (
    "code, kind, value, currency, periods, plan_ids, expires_at, max_redemptions, redeemed,"
    " archived, created_by, reason, created_at, archived_by, archived_at"
)


def discount_of(row: dict[str, Any], plan_id: str) -> Discount:
    """The discount a code row gives on ``plan_id`` (what the ledger carries)."""
    currency = row["currency"].strip() if row["currency"] else None
    return Discount(
        code=row["code"],
        kind=row["kind"],
        value=int(row["value"]),
        plan_id=plan_id,
        currency=currency,
        periods=row["periods"],
    )


def refusal(row: dict[str, Any] | None, price: PriceQuote, now: datetime) -> PromoRefused | None:
    """Why a code row cannot discount ``price`` now (None: it can). The count is only
    pre-checked here; the conditional increment in ``redeem`` decides."""
    if row is None:
        return PromoRefused(code="promo_not_found", message="no such promo code")
    code = row["code"]
    if row["archived"]:
        return PromoRefused(
            "this promo code is no longer valid",
            code="promo_expired",
            details={"code": code, "archived": True},
        )
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return PromoRefused(
            "this promo code has expired",
            code="promo_expired",
            details={"code": code, "expires_at": row["expires_at"].isoformat()},
        )
    plans = row["plan_ids"]
    currency = row["currency"].strip() if row["currency"] else None
    if (plans is not None and price.plan_id not in plans) or (
        row["kind"] == "fixed" and currency != price.amount.currency
    ):
        return PromoRefused(
            "this promo code is not for this plan",
            code="promo_not_for_plan",
            details={"code": code, "plan_id": price.plan_id},
        )
    limit = row["max_redemptions"]
    if limit is not None and row["redeemed"] >= limit:
        return _exhausted(code)
    return None


def _exhausted(code: str) -> PromoRefused:
    return PromoRefused(
        "this promo code has been fully redeemed", code="promo_exhausted", details={"code": code}
    )


def _already_used(code: str) -> PromoRefused:
    return PromoRefused(
        "you have already used this promo code",
        code="promo_already_used",
        details={"code": code},
    )


async def _row(conn: Conn, code: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM promo_codes WHERE code = %s", (normalise_code(code),)
        )
        return await cur.fetchone()


def quote_out(price: PriceQuote, discount: Discount | None) -> QuoteOut:
    """The quote's body: the price, what the code takes off, and the charge (``charge_for``,
    exactly what the ledger will ask the provider for)."""
    charge = charge_for(price.amount, discount)
    currency = price.amount.currency
    off = discount_minor(price.amount, discount) if discount is not None else 0
    return QuoteOut(
        plan_id=price.plan_id,
        price_version=price.price_version,
        period_months=price.period_months,
        price=MoneyOut.of(price.amount.amount_minor, currency),
        discount=MoneyOut.of(off, currency),
        charge=MoneyOut.of(charge.amount_minor, currency),
        amount_minor=charge.amount_minor,
        promo_code=discount.code if discount is not None else None,
        discounted_periods=discount.periods if discount is not None else None,
    )


async def quote(conn: Conn, price: PriceQuote, code: str | None, user_id: str) -> QuoteOut:
    """What paying for ``price``'s plan with ``code`` would charge ``user_id`` now, refused
    exactly as the payment would be (reserving nothing)."""
    if code is None:
        return quote_out(price, None)
    row = await _row(conn, code)
    refused = refusal(row, price, engine_now())
    if refused is not None:
        raise refused
    assert row is not None
    cur = await conn.execute(
        "SELECT 1 FROM promo_redemptions WHERE code = %s AND user_id = %s", (row["code"], user_id)
    )
    if await cur.fetchone() is not None:
        raise _already_used(row["code"])
    return quote_out(price, discount_of(row, price.plan_id))


async def redeem(
    conn: Conn,
    code: str,
    *,
    user_id: str,
    price: PriceQuote,
    subscription_id: str,
    payment_id: str,
    command_id: str,
) -> Discount:
    """Redeem ``code`` for this payment, in the caller's (intake's) transaction: the user's
    row, then the count, conditionally. Raises PromoRefused (the transaction then rolls back:
    nothing is counted, nothing is kept)."""
    row = await _row(conn, code)
    refused = refusal(row, price, engine_now())
    if refused is not None:
        raise refused
    assert row is not None
    discount = discount_of(row, price.plan_id)
    charged = charge_for(price.amount, discount)
    cur = await conn.execute(
        "INSERT INTO promo_redemptions (code, user_id, subscription_id, payment_id, command_id,"
        " plan_id, price_minor, discount_minor, currency, redeemed_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (code, user_id) DO NOTHING RETURNING 1",
        (
            discount.code,
            user_id,
            subscription_id,
            payment_id,
            command_id,
            price.plan_id,
            price.amount.amount_minor,
            price.amount.amount_minor - charged.amount_minor,
            price.amount.currency,
            engine_now(),
        ),
    )
    if await cur.fetchone() is None:
        raise _already_used(discount.code)
    cur = await conn.execute(
        "UPDATE promo_codes SET redeemed = redeemed + 1 WHERE code = %s AND NOT archived"
        " AND (max_redemptions IS NULL OR redeemed < max_redemptions) RETURNING redeemed",
        (discount.code,),
    )
    if await cur.fetchone() is None:
        raise _exhausted(discount.code)  # the last one went to someone else meanwhile
    return discount


# ---------------------------------------------------------------------------- the admin's
def promo_out(row: dict[str, Any]) -> PromoOut:
    currency = row["currency"].strip() if row["currency"] else None
    periods = row["periods"]
    return PromoOut(
        code=row["code"],
        kind=row["kind"],
        percent=int(row["value"]) if row["kind"] == "percent" else None,
        amount=MoneyOut.of(int(row["value"]), currency) if currency else None,
        duration="forever" if periods is None else "once" if periods == 1 else "repeating",
        periods=periods,
        plan_ids=row["plan_ids"],
        expires_at=row["expires_at"],
        max_redemptions=row["max_redemptions"],
        redeemed=row["redeemed"],
        archived=row["archived"],
        created_by=row["created_by"],
        reason=row["reason"],
        created_at=row["created_at"],
        archived_by=row["archived_by"],
        archived_at=row["archived_at"],
    )


async def create(conn: Conn, actor: str, request: PromoCreate) -> tuple[int, dict[str, Any]]:
    """A new code (201); 409 promo_exists if the name (any case) is taken."""
    code = normalise_code(request.code)
    now = engine_now()
    if request.expires_at is not None and request.expires_at <= now:
        raise PromoInvalid(
            "expires_at must be in the future",
            code="promo_expiry_in_past",
            details={"now": now.isoformat()},
        )
    if request.plan_ids is not None:
        plans = sorted(set(request.plan_ids))
        cur = await conn.execute("SELECT plan_id FROM plans WHERE plan_id = ANY(%s)", (plans,))
        known = {str(r[0]) for r in await cur.fetchall()}
        missing = [p for p in plans if p not in known]
        if missing:
            raise PlanNotFound(details={"plan_ids": missing})
    else:
        plans = None
    if request.discount.kind == "percent":
        value, currency = request.discount.percent, None
    else:
        try:
            amount = Money.from_decimal(
                request.discount.amount.value, request.discount.amount.currency
            )
        except MoneyError as exc:
            raise PromoInvalid(str(exc)) from exc
        value, currency = amount.amount_minor, amount.currency
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO promo_codes (code, kind, value, currency, periods, plan_ids, expires_at,"
            " max_redemptions, created_by, reason, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            f" ON CONFLICT (code) DO NOTHING RETURNING {_COLUMNS}",
            (
                code,
                request.discount.kind,
                value,
                currency,
                request.periods,
                plans,
                request.expires_at,
                request.max_redemptions,
                actor,
                request.reason,
                now,
            ),
        )
        row = await cur.fetchone()
    if row is None:
        raise PromoExists(details={"code": code})
    log.info("promo code %s created by %s: %s", code, actor, request.reason)
    return 201, promo_out(row).model_dump(mode="json")


async def archive(conn: Conn, actor: str, code: str, reason: str) -> tuple[int, dict[str, Any]]:
    """Archive a code: never redeemable again (payments already discounted keep their
    discount for its duration). Archiving twice answers the same."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "UPDATE promo_codes SET archived = true,"
            " archived_by = COALESCE(archived_by, %s), archived_at = COALESCE(archived_at, %s)"
            f" WHERE code = %s RETURNING {_COLUMNS}",
            (actor, engine_now(), normalise_code(code)),
        )
        row = await cur.fetchone()
    if row is None:
        raise PromoCodeNotFound(details={"code": normalise_code(code)})
    log.info("promo code %s archived by %s: %s", row["code"], actor, reason)
    return 200, promo_out(row).model_dump(mode="json")


async def list_codes(conn: Conn, *, archived: bool) -> list[PromoOut]:
    """Every code, newest first (archived ones too when ``archived``)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM promo_codes WHERE %s OR NOT archived"
            " ORDER BY created_at DESC, code",
            (archived,),
        )
        return [promo_out(r) for r in await cur.fetchall()]


async def get_code(conn: Conn, code: str) -> PromoOut:
    row = await _row(conn, code)
    if row is None:
        raise PromoCodeNotFound(details={"code": normalise_code(code)})
    return promo_out(row)


async def redemptions(conn: Conn, code: str, *, limit: int) -> list[PromoRedemptionOut]:
    """A code's redemptions, newest first, with each payment's status as projected."""
    await get_code(conn, code)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT r.code, r.user_id, r.subscription_id::text AS subscription_id,"
            " r.payment_id::text AS payment_id, r.plan_id, r.price_minor, r.discount_minor,"
            " r.currency, r.redeemed_at, p.status AS payment_status"
            " FROM promo_redemptions r LEFT JOIN payments p ON p.payment_id = r.payment_id"
            " WHERE r.code = %s ORDER BY r.redeemed_at DESC, r.user_id LIMIT %s",
            (normalise_code(code), limit),
        )
        rows = await cur.fetchall()
    out = []
    for r in rows:
        currency = r["currency"].strip()
        price, off = int(r["price_minor"]), int(r["discount_minor"])
        out.append(
            PromoRedemptionOut(
                code=r["code"],
                user_id=r["user_id"],
                subscription_id=r["subscription_id"],
                payment_id=r["payment_id"],
                plan_id=r["plan_id"],
                price=MoneyOut.of(price, currency),
                discount=MoneyOut.of(off, currency),
                charged=MoneyOut.of(price - off, currency),
                redeemed_at=r["redeemed_at"],
                payment_status=r["payment_status"],
            )
        )
    return out
