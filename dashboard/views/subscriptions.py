"""Subscriptions: search by user, status and plan (cursor pages from the API), and one
subscription with its timeline of events, payments, refunds and commands."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, tables, ui
from dashboard.client import AdminClient
from schemas.http import AdminSubscriptionDetail, AdminSubscriptionOut, EventOut

PAGE_SIZE = 50
EVENTS_PAGE = 500
EXPORT_MAX_ROWS = 10_000
STATUSES = ["", "pending", "active", "past_due", "expired", "canceled", "inactive", "none"]

FILTERS = "subs-filters"
CURSORS = "subs-cursors"
PAGE_INDEX = "subs-page"
EVENT_PAGES = "subs-event-pages"


def _search_form(api: AdminClient) -> None:
    plans = ui.fetch(api.plans, "the plans") or []
    current: dict[str, Any] = st.session_state.get(FILTERS, {})
    with st.form("subscription-search"):
        c1, c2, c3 = st.columns(3)
        user_id = c1.text_input("User id", value=current.get("user_id", ""))
        status = c2.selectbox(
            "Status",
            STATUSES,
            index=STATUSES.index(current.get("status", "")),
            format_func=lambda s: s or "any",
        )
        plan_ids = ["", *[p.plan_id for p in plans]]
        plan = c3.selectbox(
            "Plan",
            plan_ids,
            index=plan_ids.index(current.get("plan_id", ""))
            if current.get("plan_id", "") in plan_ids
            else 0,
            format_func=lambda p: p or "any",
        )
        submitted = st.form_submit_button("Search", type="primary")
    if submitted:
        st.session_state[FILTERS] = {
            "user_id": user_id.strip(),
            "status": status or "",
            "plan_id": plan or "",
        }
        st.session_state[CURSORS] = [None]
        st.session_state[PAGE_INDEX] = 0
        st.session_state.pop(ui.SELECTED, None)


def _export_all(api: AdminClient, filters: dict[str, Any]) -> pd.DataFrame:
    items: list[AdminSubscriptionOut] = []
    cursor: str | None = None
    while len(items) < EXPORT_MAX_ROWS:
        page = api.subscriptions(**filters, cursor=cursor, limit=200)
        items.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tables.subscriptions_frame(items)


def _results(api: AdminClient) -> str | None:
    filters: dict[str, Any] = st.session_state.get(FILTERS, {})
    cursors: list[str | None] = st.session_state.setdefault(CURSORS, [None])
    index: int = st.session_state.setdefault(PAGE_INDEX, 0)
    page = ui.fetch(
        lambda: api.subscriptions(**filters, cursor=cursors[index], limit=PAGE_SIZE),
        "subscriptions",
    )
    if page is None:
        return None
    frame = tables.subscriptions_frame(page.items)
    if frame.empty:
        st.info("No subscription matches.")
        return None
    st.caption(f"Page {index + 1} · {len(frame)} subscriptions")
    st.dataframe(frame, hide_index=True, width="stretch")
    b1, b2, b3, b4 = st.columns(4)
    if b1.button("← Previous page", disabled=index == 0):
        st.session_state[PAGE_INDEX] = index - 1
        st.rerun()
    if b2.button("Next page →", disabled=page.next_cursor is None):
        del cursors[index + 1 :]
        cursors.append(page.next_cursor)
        st.session_state[PAGE_INDEX] = index + 1
        st.rerun()
    b3.download_button(
        "Download this page (CSV)",
        tables.csv_bytes(frame),
        file_name="subscriptions-page.csv",
        mime="text/csv",
    )
    if b4.button("Export all matching"):
        everything = ui.fetch(lambda: _export_all(api, filters), "every matching subscription")
        if everything is not None:
            st.download_button(
                f"Download {len(everything)} subscriptions (CSV)",
                tables.csv_bytes(everything),
                file_name="subscriptions.csv",
                mime="text/csv",
            )
    if len(page.items) == 1:
        return page.items[0].subscription_id
    labels = {
        s.subscription_id: f"{s.user_id} · {s.status} · {s.subscription_id}" for s in page.items
    }
    selected = st.session_state.get(ui.SELECTED)
    options = ["", *labels]
    choice = st.selectbox(
        "Open a subscription",
        options,
        index=options.index(selected) if selected in options else 0,
        format_func=lambda sid: labels.get(sid, "—"),
    )
    return choice or None


def _all_events(api: AdminClient, sid: str, first: AdminSubscriptionDetail) -> list[EventOut]:
    events = list(first.events)
    after = first.events_next_after
    pages = st.session_state.get(EVENT_PAGES, {}).get(sid, 1)
    while after is not None and pages > 1:
        more = api.subscription(sid, events_after=after, events_limit=EVENTS_PAGE)
        events.extend(more.events)
        after = more.events_next_after
        pages -= 1
    if after is not None and st.button("Load more events"):
        counts = st.session_state.setdefault(EVENT_PAGES, {})
        counts[sid] = counts.get(sid, 1) + 1
        st.rerun()
    return events


def render_detail(api: AdminClient, sid: str, *, actions_link: bool = True) -> None:
    detail = ui.fetch(lambda: api.subscription(sid, events_limit=EVENTS_PAGE), "the subscription")
    if detail is None:
        return
    s = detail.subscription
    st.subheader(f"Subscription of {tables.md(s.user_id)}")
    st.caption(
        f"{s.subscription_id} · version {s.version} · updated {s.updated_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Status", s.status, help=tables.md(s.status_reason) if s.status_reason else None)
    c2.metric(
        "Plan", s.plan.plan_id if s.plan else "—", help=tables.money_out(s.plan_price) or None
    )
    c3.metric("Paid until", f"{s.period_end:%Y-%m-%d}" if s.period_end else "—")
    c4.metric("Auto-renew", "on" if s.auto_renew else "off")
    c5.metric(
        "Next charge",
        f"{s.next_charge_at:%Y-%m-%d}" if s.next_charge_at else "—",
        help=tables.money_out(s.next_charge_amount) or None,
    )
    if actions_link and st.button("Refund, cancel, extend, grant… →", key="to-actions"):
        st.session_state[ui.SELECTED] = sid
        ui.switch_to("actions")
    events = ui.fetch(lambda: _all_events(api, sid, detail), "the events") or detail.events
    event_frame = tables.events_frame(events)
    st.markdown("**Timeline**")
    ui.chart(charts.timeline_chart(event_frame), empty="No event yet.")
    sections = [  # tab title, its table (one row each), the table's key, what a row is
        ("Payments", tables.payments_frame(detail.payments), "pay", "payment"),
        ("Refunds", tables.refunds_frame(detail.refunds), "ref", "refund"),
        ("Events", event_frame, "ev", "event"),
        ("Commands", tables.commands_frame(detail.commands), "cmd", "command"),
    ]
    tabs = st.tabs([f"{title} ({len(frame)})" for title, frame, _, _ in sections])
    for tab, (title, frame, key, row) in zip(tabs, sections, strict=True):
        with tab:
            ui.table(
                frame,
                key=f"{key}-{sid}",
                file_name=f"{title.lower()}-{sid}.csv",
                empty=f"No {row}.",
            )


def render() -> None:
    st.title("Subscriptions")
    api = ui.client()
    _search_form(api)
    found = _results(api)
    if found:
        st.session_state[ui.SELECTED] = found
    selected = st.session_state.get(ui.SELECTED)
    if selected:
        st.divider()
        render_detail(api, selected)
