"""The console's charts (Altair, rendered by Streamlit): pure functions of the API's series.

Amounts arrive in minor units per currency; a chart shows one currency in major units (never
summed across currencies). Every builder returns None when there is nothing to draw, so a page
says "no data" instead of an empty frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import altair as alt
import pandas as pd

from dashboard.tables import major
from schemas.http import (
    DeclineReasonOut,
    DiscrepancyDayOut,
    DunningMonth,
    MrrMonth,
    RevenueDay,
    SuccessDay,
)

Chart = Any  # alt.Chart | alt.LayerChart: both render with st.altair_chart

# Bars per day or month on an ordinal axis: one bar is a bar, not the whole width.
DAY_AXIS = alt.X(
    "yearmonthdate(day):O", title="day (UTC)", axis=alt.Axis(format="%b %d", labelAngle=-45)
)
MONTH_AXIS = alt.X("yearmonth(month):O", title="month", axis=alt.Axis(format="%Y-%m", labelAngle=0))

COUNT_AXIS = alt.Axis(format="d", tickMinStep=1)  # counts: no fractional ticks
MONEY_AXIS = alt.Axis(format=",.2~f")  # major units: 1,490.5 / 0, never 0.000000

MOVEMENT_COLORS = {
    "new": "#2e7d32",
    "expansion": "#81c784",
    "contraction": "#ffb74d",
    "churn": "#c62828",
}


def currencies(rows: Iterable[Any]) -> list[str]:
    """The currencies present in a series, most frequent first."""
    seen: dict[str, int] = {}
    for r in rows:
        cur = getattr(r, "currency", None)
        if cur:
            seen[cur] = seen.get(cur, 0) + 1
    return sorted(seen, key=lambda c: (-seen[c], c))


def revenue_frame(rows: Iterable[RevenueDay], currency: str) -> pd.DataFrame:
    data = [
        {
            "day": pd.Timestamp(r.day),
            "plan": r.plan_id or "(unknown)",
            "gross": major(r.gross_minor, currency),
            "refunds": major(r.refunds_minor, currency),
            "net": major(r.net_minor, currency),
            "payments": r.payments,
            "refund_count": r.refunds,
        }
        for r in rows
        if r.currency == currency
    ]
    return pd.DataFrame(
        data, columns=["day", "plan", "gross", "refunds", "net", "payments", "refund_count"]
    )


def revenue_chart(rows: Iterable[RevenueDay], currency: str) -> Chart | None:
    """Per day: gross up, refunds down, net as a line."""
    frame = revenue_frame(rows, currency)
    if frame.empty:
        return None
    daily = frame.groupby("day", as_index=False)[["gross", "refunds", "net"]].sum()
    daily["refunds"] = -daily["refunds"]
    long = daily.melt(id_vars="day", value_vars=["gross", "refunds"], var_name="series")
    bars = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=DAY_AXIS,
            y=alt.Y("value:Q", title=currency, axis=MONEY_AXIS),
            color=alt.Color(
                "series:N",
                scale=alt.Scale(domain=["gross", "refunds"], range=["#1565c0", "#c62828"]),
            ),
            tooltip=["day:T", "series:N", alt.Tooltip("value:Q", format=",.2f")],
        )
    )
    line = (
        alt.Chart(daily)
        .mark_line(point=True, color="#212121")
        .encode(
            x=DAY_AXIS,
            y="net:Q",
            tooltip=["day:T", alt.Tooltip("net:Q", format=",.2f")],
        )
    )
    return alt.layer(bars, line).properties(height=280)


def revenue_by_plan_chart(rows: Iterable[RevenueDay], currency: str) -> Chart | None:
    """Net revenue per day, stacked by plan."""
    frame = revenue_frame(rows, currency)
    if frame.empty:
        return None
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=DAY_AXIS,
            y=alt.Y("sum(net):Q", title=f"net, {currency}", axis=MONEY_AXIS),
            color=alt.Color("plan:N"),
            tooltip=["day:T", "plan:N", alt.Tooltip("sum(net):Q", format=",.2f")],
        )
        .properties(height=280)
    )


def plan_totals_chart(rows: Iterable[RevenueDay], currency: str) -> Chart | None:
    frame = revenue_frame(rows, currency)
    if frame.empty:
        return None
    totals = frame.groupby("plan", as_index=False)[["net"]].sum()
    return (
        alt.Chart(totals)
        .mark_bar()
        .encode(
            x=alt.X("net:Q", title=f"net, {currency}", axis=MONEY_AXIS),
            y=alt.Y("plan:N", sort="-x"),
            tooltip=["plan:N", alt.Tooltip("net:Q", format=",.2f")],
        )
        .properties(height=alt.Step(30))
    )


def success_chart(rows: Iterable[SuccessDay]) -> Chart | None:
    frame = pd.DataFrame(
        [
            {
                "day": pd.Timestamp(r.day),
                "rate": r.rate,
                "succeeded": r.succeeded,
                "canceled": r.canceled,
            }
            for r in rows
        ],
        columns=["day", "rate", "succeeded", "canceled"],
    )
    if frame.empty:
        return None
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("yearmonthdate(day):T", title="day (UTC)"),
            y=alt.Y(
                "rate:Q",
                title="success rate",
                axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1]),
            ),
            tooltip=["day:T", alt.Tooltip("rate:Q", format=".1%"), "succeeded:Q", "canceled:Q"],
        )
        .properties(height=240)
    )


def mrr_frame(rows: Iterable[MrrMonth], currency: str) -> pd.DataFrame:
    data = [
        {
            "month": pd.Timestamp(r.month),
            "mrr": major(r.mrr_minor, currency),
            "new": major(r.new_minor, currency),
            "expansion": major(r.expansion_minor, currency),
            "contraction": -major(r.contraction_minor, currency),
            "churn": -major(r.churn_minor, currency),
            "net_new": major(r.net_new_minor, currency),
            "subscribers": r.subscribers,
            "churned": r.churned_subscribers,
            "churn_rate": r.churn_rate,
        }
        for r in rows
        if r.currency == currency
    ]
    return pd.DataFrame(
        data,
        columns=[
            "month",
            "mrr",
            "new",
            "expansion",
            "contraction",
            "churn",
            "net_new",
            "subscribers",
            "churned",
            "churn_rate",
        ],
    )


def mrr_chart(rows: Iterable[MrrMonth], currency: str) -> Chart | None:
    """Movements per month (new and expansion up, contraction and churn down) and MRR at
    each month's close as a line."""
    frame = mrr_frame(rows, currency)
    if frame.empty:
        return None
    movements = frame.melt(id_vars="month", value_vars=list(MOVEMENT_COLORS), var_name="movement")
    bars = (
        alt.Chart(movements)
        .mark_bar()
        .encode(
            x=MONTH_AXIS,
            y=alt.Y("value:Q", title=currency, axis=MONEY_AXIS),
            color=alt.Color(
                "movement:N",
                scale=alt.Scale(domain=list(MOVEMENT_COLORS), range=list(MOVEMENT_COLORS.values())),
            ),
            tooltip=["yearmonth(month):T", "movement:N", alt.Tooltip("value:Q", format=",.2f")],
        )
    )
    line = (
        alt.Chart(frame)
        .mark_line(point=True, color="#212121")
        .encode(
            x=MONTH_AXIS,
            y=alt.Y("mrr:Q", title=f"MRR, {currency}", axis=MONEY_AXIS),
            tooltip=["yearmonth(month):T", alt.Tooltip("mrr:Q", format=",.2f"), "subscribers:Q"],
        )
    )
    return alt.layer(bars, line).resolve_scale(y="independent").properties(height=300)


def churn_chart(rows: Iterable[MrrMonth], currency: str) -> Chart | None:
    frame = mrr_frame(rows, currency).dropna(subset=["churn_rate"])
    if frame.empty:
        return None
    return (
        alt.Chart(frame)
        .mark_line(point=True, color="#c62828")
        .encode(
            x=alt.X("yearmonth(month):T", title="month"),
            y=alt.Y("churn_rate:Q", title="churn rate", axis=alt.Axis(format="%")),
            tooltip=[
                "yearmonth(month):T",
                alt.Tooltip("churn_rate:Q", format=".1%"),
                "churned:Q",
                "subscribers:Q",
            ],
        )
        .properties(height=220)
    )


def declines_chart(rows: Iterable[DeclineReasonOut]) -> Chart | None:
    frame = pd.DataFrame(
        [
            {
                "reason": r.reason or "(none)",
                "party": r.party or "(none)",
                "payments": r.payments,
                "share": r.share,
            }
            for r in rows
        ],
        columns=["reason", "party", "payments", "share"],
    )
    if frame.empty:
        return None
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("payments:Q", title="declined payments", axis=COUNT_AXIS),
            y=alt.Y("reason:N", sort="-x", title=None),
            color=alt.Color("party:N"),
            tooltip=["reason:N", "party:N", "payments:Q", alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(height=alt.Step(30))
    )


def dunning_chart(rows: Iterable[DunningMonth]) -> Chart | None:
    frame = pd.DataFrame(
        [
            {
                "month": pd.Timestamp(r.month),
                "recovered": r.recovered,
                "lost": r.lost,
                "open": r.open,
            }
            for r in rows
        ],
        columns=["month", "recovered", "lost", "open"],
    )
    if frame.empty:
        return None
    long = frame.melt(id_vars="month", var_name="outcome", value_name="episodes")
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X(
                "yearmonth(month):O",
                title="month the episode started",
                axis=alt.Axis(format="%Y-%m", labelAngle=0),
            ),
            y=alt.Y("episodes:Q", axis=COUNT_AXIS),
            color=alt.Color(
                "outcome:N",
                scale=alt.Scale(
                    domain=["recovered", "open", "lost"], range=["#2e7d32", "#9e9e9e", "#c62828"]
                ),
            ),
            tooltip=["yearmonth(month):T", "outcome:N", "episodes:Q"],
        )
        .properties(height=220)
    )


def by_plan_chart(by_plan: Mapping[str, int], title: str = "subscribers") -> Chart | None:
    frame = pd.DataFrame(
        [{"plan": k, title: v} for k, v in by_plan.items()], columns=["plan", title]
    )
    if frame.empty:
        return None
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X(f"{title}:Q", axis=COUNT_AXIS),
            y=alt.Y("plan:N", sort="-x"),
            tooltip=["plan:N", f"{title}:Q"],
        )
        .properties(height=alt.Step(30))
    )


def timeline_chart(events: pd.DataFrame) -> Chart | None:
    """A subscription's events in time, one row per event type (the audit trail at a glance;
    the table below has every detail)."""
    if events.empty:
        return None
    frame = events.assign(occurred_at=pd.to_datetime(events["occurred_at"], utc=True))
    types = frame["event_type"].nunique()
    return (
        alt.Chart(frame)
        .mark_point(filled=True, size=110, opacity=0.8)
        .encode(
            x=alt.X(
                "occurred_at:T",
                title="when (UTC)",
                axis=alt.Axis(format="%Y-%m-%d %H:%M:%S", labelOverlap=True, tickCount=6),
            ),
            y=alt.Y(
                "event_type:N",
                title=None,
                sort=alt.EncodingSortField("version", op="min"),
                axis=alt.Axis(labelLimit=320),
            ),
            color=alt.Color("event_type:N", legend=None),
            tooltip=[
                "version:Q",
                alt.Tooltip("occurred_at:T", format="%Y-%m-%d %H:%M:%S.%L"),
                "event_type:N",
                "actor:N",
                "reason:N",
            ],
        )
        .properties(height=max(140, 34 * types))
    )


def price_history_chart(prices: pd.DataFrame) -> Chart | None:
    """Each plan's price versions as a step line over their effective dates."""
    frame = prices.dropna(subset=["price"])
    if frame.empty:
        return None
    frame = frame.assign(effective_from=pd.to_datetime(frame["effective_from"], utc=True))
    return (
        alt.Chart(frame)
        .mark_line(interpolate="step-after", point=True)
        .encode(
            x=alt.X("effective_from:T", title="in force from (UTC)"),
            y=alt.Y("price:Q", title="price"),
            color=alt.Color("plan_id:N"),
            tooltip=[
                "plan_id:N",
                "version:Q",
                "price:Q",
                "currency:N",
                "effective_from:T",
                "created_by:N",
                "reason:N",
            ],
        )
        .properties(height=260)
    )


def run_counts_chart(counts: pd.DataFrame) -> Chart | None:
    """Items per class for each run, stacked."""
    if counts.empty:
        return None
    return (
        alt.Chart(counts)
        .mark_bar()
        .encode(
            x=alt.X("run:T", title="run started (UTC)"),
            y=alt.Y("items:Q", title="items"),
            color=alt.Color("class:N"),
            tooltip=["run_id:N", "run:T", "class:N", "items:Q"],
        )
        .properties(height=260)
    )


def class_counts_chart(counts: Mapping[str, int]) -> Chart | None:
    frame = pd.DataFrame(
        [{"class": k, "items": v} for k, v in counts.items() if v], columns=["class", "items"]
    )
    if frame.empty:
        return None
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("items:Q", axis=COUNT_AXIS),
            y=alt.Y("class:N", sort="-x", title=None),
            color=alt.Color("class:N", legend=None),
            tooltip=["class:N", "items:Q"],
        )
        .properties(height=alt.Step(30))
    )


def discrepancies_chart(rows: Iterable[DiscrepancyDayOut]) -> Chart | None:
    """Discrepancies per day first found, stacked by class; open ones darker (the history of
    reconciliation from ClickHouse, so days before the retention of PostgreSQL too)."""
    frame = pd.DataFrame(
        [
            {
                "day": pd.Timestamp(r.day),
                "class": r.kind,
                "status": "open" if r.status == "open" else "resolved",
                "items": r.items,
            }
            for r in rows
        ],
        columns=["day", "class", "status", "items"],
    )
    if frame.empty:
        return None
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=DAY_AXIS,
            y=alt.Y("sum(items):Q", title="discrepancies", axis=COUNT_AXIS),
            color=alt.Color("class:N"),
            opacity=alt.Opacity(
                "status:N", scale=alt.Scale(domain=["open", "resolved"], range=[1.0, 0.45])
            ),
            tooltip=["yearmonthdate(day):T", "class:N", "status:N", "sum(items):Q"],
        )
        .properties(height=220)
    )
