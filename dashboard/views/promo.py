"""Promo codes (issue 16): every code with its redemption count, a new code (percent or a
fixed amount off; once, for N periods or forever; plans; expiry; maximum), archiving one, a
code's redemptions, and the discounts given in a window (from the analytics history)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import streamlit as st
from pydantic import ValidationError

from dashboard import tables, ui
from dashboard.client import AdminClient
from schemas.http import MoneyIn
from schemas.http_promo import (
    AmountOff,
    DiscountOut,
    PercentOff,
    PromoCreate,
    PromoOut,
    PromoRedemptionOut,
)

CURRENCIES = ["RUB", "USD", "EUR", "KZT", "BYN"]
DURATIONS = ["once", "for N periods", "forever"]
CODE_COLUMNS = [
    "code",
    "discount",
    "duration",
    "plans",
    "expires_at",
    "redeemed",
    "max_redemptions",
    "archived",
    "created_by",
    "reason",
]


def discount_text(code: PromoOut) -> str:
    if code.percent is not None:
        return f"{code.percent} %"
    if code.amount is not None:
        return f"{code.amount.value} {code.amount.currency}"
    return ""


def duration_text(code: PromoOut) -> str:
    if code.periods is None:
        return "forever"
    return "once" if code.periods == 1 else f"{code.periods} periods"


def codes_frame(codes: Iterable[PromoOut]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "code": c.code,
                "discount": discount_text(c),
                "duration": duration_text(c),
                "plans": ", ".join(c.plan_ids) if c.plan_ids else "all",
                "expires_at": c.expires_at,
                "redeemed": c.redeemed,
                "max_redemptions": c.max_redemptions,
                "archived": "✔" if c.archived else "",
                "created_by": c.created_by,
                "reason": c.reason,
            }
            for c in codes
        ],
        columns=CODE_COLUMNS,
    )


def redemptions_frame(rows: Iterable[PromoRedemptionOut]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "redeemed_at": r.redeemed_at,
                "user_id": r.user_id,
                "plan_id": r.plan_id,
                "price": f"{r.price.value} {r.price.currency}",
                "discount": f"{r.discount.value} {r.discount.currency}",
                "charged": f"{r.charged.value} {r.charged.currency}",
                "payment_status": r.payment_status or "not yet",
                "payment_id": r.payment_id,
            }
            for r in rows
        ],
        columns=[
            "redeemed_at",
            "user_id",
            "plan_id",
            "price",
            "discount",
            "charged",
            "payment_status",
            "payment_id",
        ],
    )


def build_create(
    *,
    code: str,
    kind: str,
    percent: int,
    amount: str,
    currency: str,
    duration: str,
    periods: int,
    plans: list[str],
    expires: date | None,
    max_redemptions: int,
    reason: str,
) -> PromoCreate:
    """The request a filled-in form makes (raises ValidationError as the API would refuse)."""
    discount: PercentOff | AmountOff
    if kind == "percent":
        discount = PercentOff(kind="percent", percent=percent)
    else:
        discount = AmountOff(kind="fixed", amount=MoneyIn(value=amount.strip(), currency=currency))
    n = {"once": 1, "forever": None}.get(duration, periods)
    return PromoCreate.model_validate(
        {
            "code": code.strip(),
            "discount": discount.model_dump(),
            "periods": n,
            "plan_ids": plans or None,
            "expires_at": (
                datetime.combine(expires, time(0), tzinfo=UTC).isoformat() if expires else None
            ),
            "max_redemptions": max_redemptions or None,
            "reason": reason,
        }
    )


def _done(api: AdminClient, message: str) -> None:
    replayed = " (answered from its first request)" if api.last_replayed else ""
    st.session_state["promo-last"] = message + replayed
    st.rerun()


def _create(api: AdminClient, plan_ids: list[str]) -> None:
    with st.form("promo-create"):
        c1, c2, c3 = st.columns(3)
        code = c1.text_input("Code", placeholder="SPRING20 (any case)")
        kind = c2.selectbox("Discount", ["percent", "fixed"])
        percent = int(c3.number_input("Percent off", 1, 100, 20))
        c4, c5 = st.columns(2)
        amount = c4.text_input("Amount off (fixed)", placeholder="50.00")
        currency = c5.selectbox("Currency (fixed)", CURRENCIES)
        c6, c7 = st.columns(2)
        duration = c6.selectbox("Duration", DURATIONS)
        periods = int(c7.number_input("Periods (for N periods)", 1, 120, 3))
        plans = st.multiselect("Plans (none: every plan)", plan_ids)
        c8, c9 = st.columns(2)
        expires = c8.date_input("Expires (UTC day; empty: never)", value=None)
        limit = int(c9.number_input("Maximum redemptions (0: unlimited)", 0, 10_000_000, 0))
        reason = st.text_input("Reason", key="promo-create-reason")
        submitted = st.form_submit_button("Create code", type="primary")
    if not submitted:
        return
    try:
        body = build_create(
            code=code,
            kind=kind or "percent",
            percent=percent,
            amount=amount,
            currency=currency or "RUB",
            duration=duration or "once",
            periods=periods,
            plans=list(plans),
            expires=expires if isinstance(expires, date) else None,
            max_redemptions=limit,
            reason=reason,
        )
    except ValidationError as exc:
        st.error("Not sent: " + "; ".join(str(e["msg"]) for e in exc.errors()))
        return
    created = ui.perform(f"promo-create:{body.code}", body, lambda key: api.create_promo(body, key))
    if created is not None:
        _done(api, f"Promo code {created.code} created.")


def _archive(api: AdminClient, codes: list[PromoOut]) -> None:
    live = [c.code for c in codes if not c.archived]
    if not live:
        st.info("No code to archive.")
        return
    with st.form("promo-archive"):
        st.caption(
            "An archived code can no longer be redeemed; subscriptions it discounts keep their"
            " discount for its duration."
        )
        code = st.selectbox("Code", live, key="promo-archive-code")
        reason = st.text_input("Reason", key="promo-archive-reason")
        submitted = st.form_submit_button("Archive", type="primary")
    if not submitted or code is None:
        return
    archived = ui.perform(
        f"promo-archive:{code}",
        {"reason": reason},
        lambda key: api.archive_promo(code, reason, key),
    )
    if archived is not None:
        _done(api, f"Promo code {code} archived.")


def _redemptions(api: AdminClient, codes: list[PromoOut]) -> None:
    if not codes:
        st.info("No promo code yet.")
        return
    code = st.selectbox("Code", [c.code for c in codes], key="promo-redemptions-code")
    if code is None:
        return
    rows = ui.fetch(lambda: api.promo_redemptions(code), "the redemptions")
    if rows is None:
        return
    st.metric("Redemptions", len(rows))
    ui.table(
        redemptions_frame(rows),
        key="promo-redemptions",
        file_name=f"promo-{code}-redemptions.csv",
        empty="Nobody has redeemed this code yet.",
    )


def discounts_frame(rows: Iterable[DiscountOut]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "code": r.code,
                "currency": r.currency,
                "charges": r.charges,
                "discount": tables.money(r.discount_minor, r.currency),
                "charged": tables.money(r.charged_minor, r.currency),
            }
            for r in rows
        ],
        columns=["code", "currency", "charges", "discount", "charged"],
    )


def _discounts(api: AdminClient) -> None:
    today = datetime.now(UTC).date()
    start = datetime.combine(today - timedelta(days=29), time(0), tzinfo=UTC)
    end = datetime.combine(today + timedelta(days=1), time(0), tzinfo=UTC)
    st.caption("Discounts on the charges that succeeded in the last 30 days (UTC).")
    rows = ui.fetch_analytics(lambda: api.discounts(start, end))
    if rows is None:
        return
    ui.table(
        discounts_frame(rows),
        key="promo-discounts",
        file_name="promo-discounts.csv",
        empty="No discounted charge in this window.",
    )


def render() -> None:
    st.title("Promo codes")
    api = ui.client()
    last = st.session_state.pop("promo-last", None)
    if last:
        st.success(last)
    codes = ui.fetch(api.promo_codes, "the promo codes")
    if codes is None:
        return
    ui.table(codes_frame(codes), key="promo-codes", file_name="promo-codes.csv", empty="No code.")
    plans = ui.fetch(api.plans, "the plans") or []
    create, archive, redemptions, discounts = st.tabs(
        ["Create", "Archive", "Redemptions", "Discounts given"]
    )
    with create:
        _create(api, [p.plan_id for p in plans])
    with archive:
        _archive(api, codes)
    with redemptions:
        _redemptions(api, codes)
    with discounts:
        _discounts(api)
