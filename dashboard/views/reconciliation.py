"""Reconciliation: runs with their counts per class, the discrepancies across runs with their
resolution, and an admin's decision on an escalated one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st
from pydantic import ValidationError

from dashboard import charts, tables, ui
from dashboard.client import AdminClient, ApiError, SessionExpired
from schemas.http import ResolutionCreate, RunOut
from schemas.recon_match import AGREEING_CLASSES, MATCH_CLASSES

RUNS_PAGE = 20
ITEMS_PAGE = 100
KINDS = [c for c in MATCH_CLASSES if c not in AGREEING_CLASSES]  # the discrepancy classes
RESOLUTIONS = {
    "accept_provider": "Accept the provider's books",
    "accept_ours": "Accept ours",
    "write_off": "Write the difference off",
}


def _totals(run: RunOut) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for side, per in run.totals.items():
        for currency, value in per.items():
            rows.append({"side": side, "currency": currency, "succeeded total": value})
    return pd.DataFrame(rows, columns=["side", "currency", "succeeded total"])


def _runs(api: AdminClient) -> RunOut | None:
    offset: int = st.session_state.setdefault("recon-runs-offset", 0)
    page = ui.fetch(lambda: api.recon_runs(limit=RUNS_PAGE, offset=offset), "the runs")
    if page is None:
        return None
    if not page.items:
        st.caption(
            "No run yet: `.venv/bin/billing reconcile --from 2026-11-24 --to 2026-11-25 --wait`"
            " starts one (README, Reconciliation); the workers also run yesterday's each night."
        )
        return None
    ui.chart(charts.run_counts_chart(tables.run_counts_frame(page.items)))
    ui.table(tables.runs_frame(page.items), key="recon-runs", file_name="recon-runs.csv")
    b1, b2 = st.columns(2)
    if b1.button("← Newer runs", disabled=offset == 0):
        st.session_state["recon-runs-offset"] = max(0, offset - RUNS_PAGE)
        st.rerun()
    if b2.button("Older runs →", disabled=page.next_offset is None):
        st.session_state["recon-runs-offset"] = page.next_offset
        st.rerun()
    by_id = {r.run_id: r for r in page.items}
    run_id = st.selectbox(
        "Run",
        list(by_id),
        format_func=lambda i: (
            f"{by_id[i].started_at:%Y-%m-%d %H:%M} · {by_id[i].status}"
            f" · {by_id[i].discrepancies} discrepancies · {i[:8]}"
        ),
    )
    return by_id.get(run_id) if run_id else None


def _run_detail(run: RunOut) -> None:
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Status", run.status)
    c2.metric("Report lines", f"{run.lines:,}")
    c3.metric("Discrepancies", f"{run.discrepancies:,}", help=f"{run.new_discrepancies} new")
    c4.metric("Still open", f"{run.unresolved:,}")
    left, right = st.columns(2)
    with left:
        ui.chart(charts.class_counts_chart(run.counts), empty="No item.")
    with right:
        ui.table(_totals(run), key=f"totals-{run.run_id}", file_name=f"totals-{run.run_id}.csv")
    if run.error:
        st.error(tables.md(run.error))


def _discrepancies(api: AdminClient, run: RunOut | None) -> list[Any]:
    c1, c2, c3 = st.columns([1, 1, 2])
    open_only = c1.toggle("Open only", value=True)
    this_run = c2.toggle("This run only", value=False, disabled=run is None)
    kinds = c3.multiselect("Classes", KINDS)
    offset: int = st.session_state.setdefault("recon-items-offset", 0)
    page = ui.fetch(
        lambda: api.discrepancies(
            run_id=run.run_id if (run is not None and this_run) else None,
            open_only=open_only,
            kinds=list(kinds),
            limit=ITEMS_PAGE,
            offset=offset,
        ),
        "the discrepancies",
    )
    if page is None:
        return []
    ui.table(
        tables.discrepancies_frame(page.items),
        key="recon-items",
        file_name="discrepancies.csv",
        empty="No discrepancy here.",
    )
    b1, b2 = st.columns(2)
    if b1.button("← Previous", disabled=offset == 0, key="items-prev"):
        st.session_state["recon-items-offset"] = max(0, offset - ITEMS_PAGE)
        st.rerun()
    if b2.button("Next →", disabled=page.next_offset is None, key="items-next"):
        st.session_state["recon-items-offset"] = page.next_offset
        st.rerun()
    return list(page.items)


def _resolve(api: AdminClient, items: list[Any]) -> None:
    undecided = [i for i in items if i.resolution is None or i.resolution == "repaired"]
    if not undecided:
        st.caption("Nothing waiting for a decision on this page.")
        return
    by_key = {i.item_key: i for i in undecided}
    with st.form("resolve"):
        key = st.selectbox(
            "Discrepancy",
            list(by_key),
            format_func=lambda k: f"{by_key[k].kind} · {by_key[k].object} · {k}",
        )
        resolution = st.radio(
            "Decision", list(RESOLUTIONS), format_func=lambda r: RESOLUTIONS[r], horizontal=True
        )
        reason = st.text_input("Reason (recorded with the decision)", key="resolve-reason")
        submitted = st.form_submit_button("Record the decision", type="primary")
    if not submitted or key is None or resolution is None:
        return
    try:
        body = ResolutionCreate.model_validate(
            {"item_key": key, "resolution": resolution, "reason": reason}
        )
    except ValidationError as exc:
        st.error("Not sent: " + "; ".join(str(e["msg"]) for e in exc.errors()))
        return
    out = ui.perform(f"resolve:{key}", body, lambda k: api.resolve(body, k))
    if out is not None:
        note = " The ledger was sent the provider's view." if out.ledger_correction else ""
        same = "" if out.changed else " (already decided so)"
        st.session_state["recon-last"] = f"{tables.md(key)}: {resolution}{same}.{note}"
        st.rerun()


def _history(api: AdminClient) -> None:
    """Discrepancies of the last 90 days from the ClickHouse history (optional: the page
    works without it)."""
    end = datetime.now(UTC)
    try:
        rows = api.discrepancy_history(end - timedelta(days=90), end)
    except SessionExpired:
        raise
    except ApiError as err:
        st.caption(f"Discrepancy history unavailable: {tables.md(err.message)}")
        return
    st.subheader("Discrepancies over time")
    ui.chart(charts.discrepancies_chart(rows), empty="No discrepancy in the last 90 days.")


def render() -> None:
    st.title("Reconciliation")
    api = ui.client()
    try:
        summary = api.recon_summary()
    except SessionExpired:
        raise
    except ApiError as err:
        if err.status in (404, 503):
            st.info(f"Reconciliation is not available on this API: {tables.md(err.message)}")
            return
        ui.show_error(err, "Could not read the reconciliation summary")
        return
    last = st.session_state.pop("recon-last", None)
    if last:
        st.success(last)
    c1, c2, c3 = st.columns(3)
    c1.metric("Open discrepancies", f"{summary.open_discrepancies:,}")
    lr = summary.last_run
    c2.metric(
        "Last run",
        lr.status if lr else "—",
        help=f"started {lr.started_at:%Y-%m-%d %H:%M} UTC" if lr else None,
    )
    c3.metric(
        "Last run duration", f"{lr.duration_ms / 1000:.1f} s" if lr and lr.duration_ms else "—"
    )
    if summary.open_by_kind:
        ui.chart(charts.class_counts_chart(summary.open_by_kind))
    _history(api)
    st.subheader("Runs")
    run = _runs(api)
    if run is not None:
        _run_detail(run)
    st.subheader("Discrepancies")
    items = _discrepancies(api, run)
    st.subheader("Resolve an escalation")
    _resolve(api, items)
