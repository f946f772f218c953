"""The admin console's entry point: ``python -m dashboard`` or ``streamlit run dashboard/app.py``.

Nothing renders without a login: until an admin logs in (POST /api/v1/admin/session), the
only page is the login form, whatever URL was asked for. The token lives in the server-side
Streamlit session (never in the browser) and is dropped when it expires or the API refuses it.

ConsoleSettings (BILLING_*): ``dashboard_api_url`` (default: the local API), ``dashboard_host``,
``dashboard_port``, ``dashboard_api_timeout_s``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by `streamlit run dashboard/app.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import streamlit as st

from billing.config import ConsoleSettings
from dashboard import tables, ui
from dashboard.client import SessionExpired
from dashboard.state import Session
from dashboard.views import (
    actions,
    analytics,
    login,
    overview,
    plans,
    promo,
    reconciliation,
    subscriptions,
    trials,
    wallet,
)


@st.cache_resource
def _settings() -> ConsoleSettings:
    return ConsoleSettings()


def _sidebar(session: Session) -> None:
    with st.sidebar:
        st.caption(f"Signed in as **{tables.md(session.user_id)}**")
        st.caption(f"Session ends in {session.remaining_s() // 60} min")
        if st.button("Log out", key="logout"):
            ui.logout("You are logged out.")
            st.rerun()


def main(
    *, settings: ConsoleSettings | None = None, transport: httpx.BaseTransport | None = None
) -> None:
    st.set_page_config(page_title="Cinema billing · admin", page_icon="🎬", layout="wide")
    ui.configure(ui.ConsoleConfig.from_settings(settings or _settings()), transport)
    session = ui.current_session()
    if session is None:
        gate = st.Page(login.render, title="Log in", url_path="login", default=True)
        st.navigation([gate], position="hidden").run()
        return
    pages = {
        "overview": st.Page(overview.render, title="Overview", url_path="overview", default=True),
        "subscriptions": st.Page(
            subscriptions.render, title="Subscriptions", url_path="subscriptions"
        ),
        "actions": st.Page(actions.render, title="Actions", url_path="actions"),
        "plans": st.Page(plans.render, title="Plans", url_path="plans"),
        "promo": st.Page(promo.render, title="Promo codes", url_path="promo"),
        "reconciliation": st.Page(
            reconciliation.render, title="Reconciliation", url_path="reconciliation"
        ),
        "analytics": st.Page(analytics.render, title="Analytics", url_path="analytics"),
        "trials": st.Page(trials.render, title="Trials", url_path="trials"),
        "wallet": st.Page(wallet.render, title="Wallet", url_path="wallet"),
    }
    ui.register_pages(pages)
    page = st.navigation(list(pages.values()))
    _sidebar(session)
    try:
        page.run()
    except SessionExpired:
        ui.logout("Your session expired or was refused: log in again.")
        st.rerun()


if __name__ == "__main__":
    main()
