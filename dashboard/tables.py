"""Tables of the console: API objects → pandas frames, pages of a frame, money as people read
it, and CSV downloads that a spreadsheet cannot turn into formulas. No Streamlit here."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import pandas as pd

from schemas.http import (
    AdminPaymentOut,
    AdminPlanOut,
    AdminRefundOut,
    AdminSubscriptionOut,
    CommandOut,
    DiscrepancyOut,
    EventOut,
    MoneyOut,
    RunOut,
)
from schemas.money import CURRENCY_EXPONENT

DEFAULT_PAGE_SIZE = 25
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def md(text: object) -> str:
    """Text that someone typed (a user id, a provider's reason) inside Streamlit markdown:
    every markdown character escaped, so it can neither format, link nor load an image."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))


# ---------------------------------------------------------------------------------- money
def major(amount_minor: int, currency: str) -> float:
    """For charts only (float): the amount in major units."""
    return float(to_decimal(amount_minor, currency))


def to_decimal(amount_minor: int, currency: str) -> Decimal:
    exp = CURRENCY_EXPONENT.get(currency, 2)
    return Decimal(amount_minor).scaleb(-exp).quantize(Decimal(1).scaleb(-exp))


def money(amount_minor: int | None, currency: str) -> str:
    if amount_minor is None:
        return ""
    return f"{to_decimal(amount_minor, currency):,} {currency}".replace(",", "\u202f")


def money_out(m: MoneyOut | None) -> str:
    return f"{m.value} {m.currency}" if m is not None else ""


def percent(rate: float | None) -> str:
    return "—" if rate is None or math.isnan(rate) else f"{rate:.1%}"


def refundable(payment: AdminPaymentOut) -> Decimal:
    """What is left to refund on a payment (the ledger enforces it; this only guides)."""
    if payment.status != "succeeded" or payment.amount is None:
        return Decimal(0)
    paid = Decimal(payment.amount.value)
    refunded = Decimal(payment.refunded.value) if payment.refunded else Decimal(0)
    return max(Decimal(0), paid - refunded)


# ---------------------------------------------------------------------------- pages, CSV
def page_count(rows: int, size: int = DEFAULT_PAGE_SIZE) -> int:
    return max(1, math.ceil(rows / size))


def paginate(frame: pd.DataFrame, page: int, size: int = DEFAULT_PAGE_SIZE) -> pd.DataFrame:
    """Rows of page ``page`` (1-based, clamped to the pages there are)."""
    page = min(max(1, page), page_count(len(frame), size))
    return frame.iloc[(page - 1) * size : page * size]


def _defuse(value: Any) -> Any:
    """A text cell a spreadsheet would read as a formula is quoted (OWASP CSV injection):
    reasons, notes and user ids are typed by people, some of them users."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_bytes(frame: pd.DataFrame) -> bytes:
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(_defuse)
    text: str = safe.to_csv(index=False)
    return text.encode("utf-8")


def _frame(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(columns))


def _attr_frame(
    items: Iterable[Any],
    columns: Sequence[str],
    *,
    text: Sequence[str] = (),
    amounts: Sequence[str] = (),
    derived: dict[str, Callable[[Any], Any]] | None = None,
) -> pd.DataFrame:
    """One row per item, each column the item's attribute of that name: a ``text`` column
    with ``""`` for none, an ``amounts`` column through :func:`money_out`, and a ``derived``
    column computed from the item."""
    derived = derived or {}

    def cell(item: Any, name: str) -> Any:
        if name in derived:
            return derived[name](item)
        value = getattr(item, name)
        if name in text:
            return value or ""
        return money_out(value) if name in amounts else value

    return _frame(({name: cell(item, name) for name in columns} for item in items), columns)


# ------------------------------------------------------------------------------ frames
SUBSCRIPTION_COLUMNS = (
    "subscription_id",
    "user_id",
    "status",
    "plan",
    "price",
    "period_start",
    "period_end",
    "auto_renew",
    "next_charge_at",
    "updated_at",
)


def subscriptions_frame(items: Iterable[AdminSubscriptionOut]) -> pd.DataFrame:
    return _attr_frame(
        items,
        SUBSCRIPTION_COLUMNS,
        derived={
            "plan": lambda s: s.plan.plan_id if s.plan else "",
            "price": lambda s: money_out(s.plan_price),
        },
    )


PAYMENT_COLUMNS = (
    "payment_id",
    "kind",
    "status",
    "amount",
    "refunded",
    "plan_id",
    "period_start",
    "period_end",
    "status_reason",
    "provider_payment_id",
    "receipt_registration",  # 54-FZ receipt at YooKassa (issue 16)
    "created_at",
)


def payments_frame(items: Iterable[AdminPaymentOut]) -> pd.DataFrame:
    return _attr_frame(
        items,
        PAYMENT_COLUMNS,
        text=("plan_id", "status_reason", "provider_payment_id", "receipt_registration"),
        amounts=("amount", "refunded"),
    )


REFUND_COLUMNS = (
    "refund_id",
    "payment_id",
    "status",
    "amount",
    "reason",
    "actor",
    "status_reason",
    "receipt_registration",
    "created_at",
    "updated_at",
)


def refunds_frame(items: Iterable[AdminRefundOut]) -> pd.DataFrame:
    return _attr_frame(
        items, REFUND_COLUMNS, text=("status_reason", "receipt_registration"), amounts=("amount",)
    )


EVENT_COLUMNS = ("version", "occurred_at", "event_type", "actor", "reason", "event_id")


def _event_actor(e: EventOut) -> str:
    actor = e.body.get("actor")
    return str(actor) if actor else ""


def _event_reason(e: EventOut) -> str:
    for name in ("reason", "cancellation_reason", "status_reason"):
        value = e.body.get(name)
        if value:
            return str(value)
    return ""


def events_frame(items: Iterable[EventOut]) -> pd.DataFrame:
    return _frame(
        (
            {
                "version": e.version,
                "occurred_at": e.occurred_at,
                "event_type": e.event_type,
                "actor": _event_actor(e),
                "reason": _event_reason(e),
                "event_id": e.event_id,
            }
            for e in items
        ),
        EVENT_COLUMNS,
    )


COMMAND_COLUMNS = (
    "command_id",
    "command_type",
    "status",
    "status_reason",
    "subscription_id",
    "user_id",
    "publish_attempts",
    "last_error",
    "created_at",
    "updated_at",
)


def commands_frame(items: Iterable[CommandOut]) -> pd.DataFrame:
    return _attr_frame(items, COMMAND_COLUMNS, text=("status_reason", "last_error"))


PLAN_COLUMNS = (
    "plan_id",
    "name",
    "price",
    "price_version",
    "period_months",
    "trial_days",
    "archived",
    "next_price",
    "next_price_from",
    "updated_at",
)


def _next_price(plan: AdminPlanOut, now: datetime) -> tuple[str, datetime | None]:
    future = [p for p in plan.prices if p.effective_from is not None and p.effective_from > now]
    if not future:
        return "", None
    nxt = min(future, key=lambda p: p.effective_from or now)
    return money_out(nxt.price), nxt.effective_from


def plans_frame(items: Iterable[AdminPlanOut], now: datetime) -> pd.DataFrame:
    rows = []
    for p in items:
        next_price, next_from = _next_price(p, now)
        rows.append(
            {
                "plan_id": p.plan_id,
                "name": p.name,
                "price": money_out(p.price),
                "price_version": p.price_version,
                "period_months": p.period_months,
                "trial_days": p.trial_days,
                "archived": p.archived,
                "next_price": next_price,
                "next_price_from": next_from,
                "updated_at": p.updated_at,
            }
        )
    return _frame(rows, PLAN_COLUMNS)


PRICE_COLUMNS = (
    "plan_id",
    "version",
    "price",
    "currency",
    "effective_from",
    "created_by",
    "reason",
)


def prices_frame(items: Iterable[AdminPlanOut]) -> pd.DataFrame:
    """Every price version of every plan (a version in force since the beginning is dated
    by the plan's creation)."""
    return _frame(
        (
            {
                "plan_id": p.plan_id,
                "version": v.version,
                "price": float(v.price.value) if v.price else None,
                "currency": v.price.currency if v.price else "",
                "effective_from": v.effective_from or p.created_at,
                "created_by": v.created_by,
                "reason": v.reason,
            }
            for p in items
            for v in p.prices
        ),
        PRICE_COLUMNS,
    )


RUN_COLUMNS = (
    "run_id",
    "status",
    "source",
    "window_start",
    "window_end",
    "lines",
    "discrepancies",
    "new_discrepancies",
    "unresolved",
    "started_at",
    "duration_ms",
    "error",
)


def runs_frame(items: Iterable[RunOut]) -> pd.DataFrame:
    return _attr_frame(items, RUN_COLUMNS, text=("error",))


def run_counts_frame(items: Iterable[RunOut]) -> pd.DataFrame:
    """Long form for a chart: one row per (run, class) with a count > 0."""
    return _frame(
        (
            {"run": r.started_at, "run_id": r.run_id, "class": kind, "items": n}
            for r in items
            for kind, n in r.counts.items()
            if n
        ),
        ("run", "run_id", "class", "items"),
    )


DISCREPANCY_COLUMNS = (
    "item_key",
    "kind",
    "object",
    "resolution",
    "repair",
    "ours_status",
    "theirs_status",
    "ours_amount",
    "theirs_amount",
    "subscription_id",
    "payment_id",
    "refund_id",
    "provider_id",
    "detail",
    "resolved_by",
    "note",
    "first_seen_at",
    "last_seen_at",
)


def discrepancies_frame(items: Iterable[DiscrepancyOut]) -> pd.DataFrame:
    return _attr_frame(
        items,
        DISCREPANCY_COLUMNS,
        text=(
            "ours_status",
            "theirs_status",
            "subscription_id",
            "payment_id",
            "refund_id",
            "provider_id",
            "resolved_by",
        ),
        amounts=("ours_amount", "theirs_amount"),
        derived={"resolution": lambda d: d.resolution or "open"},
    )


def models_frame(items: Iterable[Any]) -> pd.DataFrame:
    """Any list of pydantic models as is (the analytics series)."""
    rows = [m.model_dump() for m in items]
    return pd.DataFrame(rows)
