"""Free trials (issue 16): trials started per day in a window, how many converted (their first
charge at the trial's end succeeded) and the conversion, from GET /admin/analytics/trials.

A trial started in the last days of the window has not reached its end yet: its day shows
no conversion until then, which the page says rather than counting it as lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import charts, tables, ui
from dashboard.client import AdminClient
from schemas.http import TrialsDay

OUTCOME_COLORS = {"converted": "#2e7d32", "not converted (yet)": "#9e9e9e"}


def totals(rows: Iterable[TrialsDay]) -> tuple[int, int, float | None]:
    """Trials, converted and the conversion over the whole window (None without a trial)."""
    started = converted = 0
    for r in rows:
        started += r.trials
        converted += r.converted
    return started, converted, (converted / started if started else None)


def trials_frame(rows: Iterable[TrialsDay]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "day": pd.Timestamp(r.day),
                "trials": r.trials,
                "converted": r.converted,
                "conversion": r.conversion,
            }
            for r in rows
        ],
        columns=["day", "trials", "converted", "conversion"],
    )


def trials_chart(rows: Iterable[TrialsDay]) -> charts.Chart | None:
    """Per day: trials started as stacked bars (converted / not), conversion as a line on its
    own axis. None when no trial started in the window."""
    frame = trials_frame(rows)
    if frame.empty or not frame["trials"].sum():
        return None
    frame["not converted (yet)"] = frame["trials"] - frame["converted"]
    bars_data = frame.melt(
        id_vars="day",
        value_vars=["converted", "not converted (yet)"],
        var_name="outcome",
        value_name="count",
    )
    bars: Any = (
        alt.Chart(bars_data)
        .mark_bar()
        .encode(
            x=charts.DAY_AXIS,
            y=alt.Y("count:Q", title="trials started", axis=charts.COUNT_AXIS),
            color=alt.Color(
                "outcome:N",
                scale=alt.Scale(domain=list(OUTCOME_COLORS), range=list(OUTCOME_COLORS.values())),
            ),
            tooltip=["yearmonthdate(day):T", "outcome:N", "count:Q"],
        )
    )
    line: Any = (
        alt.Chart(frame.dropna(subset=["conversion"]))
        .mark_line(point=True, color="#1565c0")
        .encode(
            x=charts.DAY_AXIS,
            y=alt.Y(
                "conversion:Q",
                title="conversion",
                axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1]),
            ),
            tooltip=["yearmonthdate(day):T", alt.Tooltip("conversion:Q", format=".1%")],
        )
    )
    return alt.layer(bars, line).resolve_scale(y="independent").properties(height=260)


def _window() -> tuple[datetime, datetime]:
    today = datetime.now(UTC).date()
    picked = st.date_input(
        "Window (UTC days)", value=(today - timedelta(days=29), today), max_value=today
    )
    return ui.day_window(picked, today)


def render() -> None:
    st.title("Trials")
    st.caption(
        "Free trials started per day and how many converted (their first charge at the"
        " trial's end succeeded). A trial still running counts as not converted yet."
    )
    api: AdminClient = ui.client()
    start, end = _window()
    rows = ui.fetch_analytics(lambda: api.trials(start, end))
    if rows is None:
        return
    started, converted, conversion = totals(rows)
    c1, c2, c3 = st.columns(3)
    c1.metric("Trials started", started)
    c2.metric("Converted", converted)
    c3.metric("Conversion", tables.percent(conversion))
    ui.chart(trials_chart(rows), empty="No trial started in this window.")
    with st.expander("Trials data"):
        ui.table(tables.models_frame(rows), key="trials", file_name="trials.csv")
