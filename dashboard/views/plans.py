"""Plans: the catalogue with every price version (a chart of prices over time), and the
catalogue changes: create, rename or change the trial, schedule a price, archive."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time
from typing import TypeVar

import streamlit as st
from pydantic import BaseModel, ValidationError

from dashboard import charts, tables, ui
from dashboard.client import AdminClient
from schemas.http import AdminPlanOut, MoneyIn, PlanCreate, PlanUpdate, PriceCreate

M = TypeVar("M", bound=BaseModel)

CURRENCIES = ["RUB", "USD", "EUR", "KZT", "BYN"]


def _done(api: AdminClient, message: str, plan: AdminPlanOut | None) -> None:
    if plan is not None:
        replayed = " (answered from its first request)" if api.last_replayed else ""
        st.session_state["plans-last"] = message + replayed
        st.rerun()


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
    )


def _request(build: Callable[[], M]) -> M | None:
    """The request built from the form, or None once the page has said why it is not sent."""
    try:
        return build()
    except ValidationError as exc:
        st.error(f"Not sent: {_errors(exc)}")
        return None


def _create(api: AdminClient) -> None:
    with st.form("plan-create"):
        c1, c2 = st.columns(2)
        plan_id = c1.text_input("Plan id", placeholder="e.g. monthly-hd")
        name = c2.text_input("Name")
        c3, c4, c5, c6 = st.columns(4)
        price = c3.text_input("Price", placeholder="299.00")
        currency = c4.selectbox("Currency", CURRENCIES)
        months = int(c5.number_input("Period, months", 1, 36, 1))
        trial = int(c6.number_input("Trial days", 0, 365, 0))
        reason = st.text_input("Reason", key="plan-create-reason")
        submitted = st.form_submit_button("Create plan", type="primary")
    if not submitted:
        return
    body = _request(
        lambda: PlanCreate(
            plan_id=plan_id.strip(),
            name=name,
            price=MoneyIn(value=price.strip(), currency=currency or "RUB"),
            period_months=months,
            trial_days=trial,
            reason=reason,
        )
    )
    if body is None:
        return
    plan = ui.perform(f"plan-create:{body.plan_id}", body, lambda key: api.create_plan(body, key))
    _done(api, f"Plan {body.plan_id} created.", plan)


def _edit(api: AdminClient, plans: list[AdminPlanOut]) -> None:
    by_id = {p.plan_id: p for p in plans}
    plan_id = st.selectbox("Plan", list(by_id), key="plan-edit-id")
    if plan_id is None:
        return
    plan = by_id[plan_id]
    with st.form("plan-edit"):
        name = st.text_input("Name", value=plan.name)
        trial = int(st.number_input("Trial days", 0, 365, plan.trial_days))
        reason = st.text_input("Reason", key="plan-edit-reason")
        submitted = st.form_submit_button("Save", type="primary")
    if not submitted:
        return
    body = _request(
        lambda: PlanUpdate(
            name=name if name != plan.name else None,
            trial_days=trial if trial != plan.trial_days else None,
            reason=reason,
        )
    )
    if body is None:
        return
    updated = ui.perform(
        f"plan-edit:{plan_id}", body, lambda key: api.update_plan(plan_id, body, key)
    )
    _done(api, f"Plan {plan_id} saved.", updated)


def _price(api: AdminClient, plans: list[AdminPlanOut]) -> None:
    live = [p for p in plans if not p.archived]
    if not live:
        st.info("No plan on sale.")
        return
    by_id = {p.plan_id: p for p in live}
    with st.form("plan-price"):
        plan_id = st.selectbox("Plan", list(by_id), key="plan-price-id")
        c1, c2, c3 = st.columns(3)
        price = c1.text_input("New price", placeholder="349.00")
        day = c2.date_input("In force from (UTC day; today: now)", value=datetime.now(UTC).date())
        at = c3.time_input("at (UTC)", value=time(0, 0))
        reason = st.text_input("Reason", key="plan-price-reason")
        submitted = st.form_submit_button("Schedule price", type="primary")
    if not submitted or plan_id is None:
        return
    plan = by_id[plan_id]
    currency = plan.price.currency if plan.price else "RUB"
    effective = None
    if isinstance(day, date):
        moment = datetime.combine(day, at or time(0, 0), tzinfo=UTC)
        effective = moment if moment > datetime.now(UTC) else None
    body = _request(
        lambda: PriceCreate(
            price=MoneyIn(value=price.strip(), currency=currency),
            effective_from=effective,
            reason=reason,
        )
    )
    if body is None:
        return
    updated = ui.perform(
        f"plan-price:{plan_id}", body, lambda key: api.add_price(plan_id, body, key)
    )
    when = f"from {effective:%Y-%m-%d %H:%M} UTC" if effective else "now"
    _done(api, f"Price {body.price.value} {currency} of {plan_id} in force {when}.", updated)


def _archive(api: AdminClient, plans: list[AdminPlanOut]) -> None:
    live = [p.plan_id for p in plans if not p.archived]
    if not live:
        st.info("No plan on sale.")
        return
    with st.form("plan-archive"):
        st.caption(
            "An archived plan can no longer be bought; subscriptions on it keep it and renew."
        )
        plan_id = st.selectbox("Plan", live, key="plan-archive-id")
        reason = st.text_input("Reason", key="plan-archive-reason")
        sure = st.checkbox("Yes, take this plan off sale")
        submitted = st.form_submit_button("Archive", type="primary")
    if not submitted or plan_id is None:
        return
    if not sure:
        st.error("Not sent: tick the confirmation first.")
        return
    archived = ui.perform(
        f"plan-archive:{plan_id}",
        {"reason": reason},
        lambda key: api.archive_plan(plan_id, reason, key),
    )
    _done(api, f"Plan {plan_id} archived.", archived)


def render() -> None:
    st.title("Plans")
    api = ui.client()
    last = st.session_state.pop("plans-last", None)
    if last:
        st.success(last)
    plans = ui.fetch(api.plans, "the plans")
    if plans is None:
        return
    now = datetime.now(UTC)
    ui.table(
        tables.plans_frame(plans, now), key="plans", file_name="plans.csv", empty="No plan yet."
    )
    prices = tables.prices_frame(plans)
    st.subheader("Prices over time")
    ui.chart(charts.price_history_chart(prices), empty="No price yet.")
    with st.expander("Every price version"):
        ui.table(prices, key="prices", file_name="plan-prices.csv")
    create, edit, price, archive = st.tabs(["Create", "Edit", "Schedule a price", "Archive"])
    with create:
        _create(api)
    with edit:
        if plans:
            _edit(api, plans)
    with price:
        _price(api, plans)
    with archive:
        _archive(api, plans)
