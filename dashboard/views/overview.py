"""Overview: today's revenue, payment success, active subscribers, open discrepancies and
stuck commands, with the last 30 days and 12 months as charts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import streamlit as st

from dashboard import charts, tables, ui
from dashboard.client import ApiError, SessionExpired
from schemas.http import OverviewOut


def _overview() -> OverviewOut | None:
    return ui.fetch_analytics(ui.client().overview)


def _net_on(ov: OverviewOut, day: object) -> dict[str, int]:
    per: dict[str, int] = {}
    for r in ov.revenue:
        if r.day == day:
            per[r.currency] = per.get(r.currency, 0) + r.net_minor
    return per


def _money_text(per: dict[str, int]) -> str:
    if not per:
        return "0"
    return " · ".join(tables.money(v, c) for c, v in sorted(per.items()))


def render() -> None:
    st.title("Overview")
    api = ui.client()
    ov = _overview()
    summary = None
    try:
        summary = api.recon_summary()
    except SessionExpired:
        raise
    except ApiError as err:
        st.caption(f"Reconciliation not available: {tables.md(err.message)}")
    commands = ui.fetch(api.open_commands, "open commands")

    now = datetime.fromtimestamp(ov.active.at_ms / 1000, UTC) if ov else datetime.now(UTC)
    today, yesterday = now.date(), (now - timedelta(days=1)).date()
    m1, m2, m3, m4, m5 = st.columns(5)
    if ov is not None:
        today_net, yesterday_net = _net_on(ov, today), _net_on(ov, yesterday)
        delta = None
        both = set(today_net) | set(yesterday_net)
        if len(both) == 1:  # a delta only makes sense in one currency
            cur = next(iter(both))
            diff = today_net.get(cur, 0) - yesterday_net.get(cur, 0)
            delta = tables.money(diff, cur) + " vs yesterday" if diff else None
        m1.metric(
            "Revenue today (net)",
            _money_text(today_net),
            delta=delta,
            help="payments succeeded today less refunds succeeded today, UTC",
        )
        day = next((s for s in ov.success if s.day == today), None)
        done = sum(s.succeeded + s.canceled for s in ov.success)
        rate_30 = sum(s.succeeded for s in ov.success) / done if done else None
        m2.metric(
            "Payment success today",
            tables.percent(day.rate if day else None),
            help=f"30 days: {tables.percent(rate_30)}",
        )
        m3.metric("Active subscribers", f"{ov.active.total:,}")
    else:
        m1.metric("Revenue today (net)", "—")
        m2.metric("Payment success today", "—")
        m3.metric("Active subscribers", "—")
    m4.metric(
        "Open discrepancies",
        f"{summary.open_discrepancies:,}" if summary else "—",
        help="reconciliation discrepancies waiting for a decision",
    )
    if commands is not None:
        rejected = sum(1 for c in commands if c.status == "rejected")
        m5.metric(
            "Commands not done",
            f"{len(commands):,}",
            help=f"accepted or processing; {rejected} rejected",
        )
    else:
        m5.metric("Commands not done", "—")

    if ov is not None and not ov.revenue and not ov.active.total:
        st.caption(
            "Nothing to show yet. On the local stack, `.venv/bin/billing demo` plays a few"
            " months of traffic into it (README, Paying for a plan)."
        )
    if ov is not None:
        currencies = charts.currencies(ov.revenue) or ["RUB"]
        currency = currencies[0]
        if len(currencies) > 1:
            currency = st.selectbox("Currency", currencies, key="overview-currency") or currency
        left, right = st.columns(2)
        with left:
            st.subheader("Revenue, last 30 days")
            ui.chart(charts.revenue_chart(ov.revenue, currency))
            st.subheader("MRR movements, 12 months")
            ui.chart(charts.mrr_chart(ov.mrr, currency))
        with right:
            st.subheader("Payment success rate")
            ui.chart(charts.success_chart(ov.success))
            st.subheader("Active subscribers by plan")
            ui.chart(charts.by_plan_chart(ov.active.by_plan), empty="No active subscriber.")
        if ov.refund_rate:
            st.caption(
                "Refund rate, 30 days: "
                + " · ".join(f"{r.currency} {tables.percent(r.rate)}" for r in ov.refund_rate)
            )
    if summary is not None and summary.open_by_kind:
        st.subheader("Open discrepancies by class")
        ui.chart(charts.class_counts_chart(summary.open_by_kind))
    if commands:
        with st.expander(f"Commands not done ({len(commands)})"):
            ui.table(
                tables.commands_frame(commands),
                key="overview-commands",
                file_name="open-commands.csv",
            )
