"""Analytics over the ClickHouse history: MRR movements and churn, revenue per plan, payment
success, decline reasons, refund rate and dunning recovery, for a chosen window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import streamlit as st

from dashboard import charts, tables, ui
from dashboard.client import AdminClient


def _window() -> tuple[datetime, datetime, int]:
    today = datetime.now(UTC).date()
    c1, c2 = st.columns([2, 1])
    picked = c1.date_input(
        "Window (UTC days)", value=(today - timedelta(days=29), today), max_value=today
    )
    months = int(c2.slider("MRR months", 3, 36, 12))
    return (*ui.day_window(picked, today), months)


def render() -> None:
    st.title("Analytics")
    api: AdminClient = ui.client()
    start, end, months = _window()
    series = ui.fetch_analytics(
        lambda: (
            api.mrr(months=months),
            api.revenue(start, end),
            api.payment_success(start, end),
            api.decline_reasons(start, end),
            api.refund_rate(start, end),
            api.dunning(start, end),
        )
    )
    if series is None:
        return
    mrr, revenue, success, declines, refund_rate, dunning = series
    currencies = charts.currencies([*mrr, *revenue]) or ["RUB"]
    currency = currencies[0]
    if len(currencies) > 1:
        currency = st.selectbox("Currency", currencies) or currency

    st.subheader("MRR movements")
    ui.chart(charts.mrr_chart(mrr, currency))
    st.subheader("Churn rate")
    ui.chart(charts.churn_chart(mrr, currency))
    with st.expander("MRR data"):
        ui.table(tables.models_frame(mrr), key="an-mrr", file_name="mrr.csv")

    st.subheader("Revenue per plan")
    left, right = st.columns([2, 1])
    with left:
        ui.chart(charts.revenue_by_plan_chart(revenue, currency))
    with right:
        ui.chart(charts.plan_totals_chart(revenue, currency))
    with st.expander("Revenue data"):
        ui.table(tables.models_frame(revenue), key="an-rev", file_name="revenue.csv")

    left, right = st.columns(2)
    with left:
        st.subheader("Payment success")
        ui.chart(charts.success_chart(success))
    with right:
        st.subheader("Decline reasons")
        ui.chart(charts.declines_chart(declines), empty="No declined payment in this window.")
    with st.expander("Success and decline data"):
        ui.table(tables.models_frame(success), key="an-suc", file_name="payment-success.csv")
        ui.table(tables.models_frame(declines), key="an-dec", file_name="decline-reasons.csv")

    left, right = st.columns(2)
    with left:
        st.subheader("Dunning recovery")
        ui.chart(charts.dunning_chart(dunning), empty="No dunning episode in this window.")
    with right:
        st.subheader("Refund rate")
        for r in refund_rate:
            st.metric(
                r.currency,
                tables.percent(r.rate),
                help=f"refunds {tables.money(r.refunds_minor, r.currency)} of gross"
                f" {tables.money(r.gross_minor, r.currency)}",
            )
        if not refund_rate:
            st.caption("No payment in this window.")
