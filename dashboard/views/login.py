"""Log in: the only page anyone sees without a session."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.client import AdminClient, ApiError
from dashboard.state import Session


def render() -> None:
    st.title("Cinema billing · admin console")
    notice = st.session_state.get(ui.NOTICE)
    if notice:
        st.info(notice)
    with st.form("login"):
        username = st.text_input("Username", autocomplete="username")
        password = st.text_input("Password", type="password", autocomplete="current-password")
        submitted = st.form_submit_button("Log in", type="primary")
    st.caption(f"API: {ui.config().api_url}")
    if not submitted:
        return
    if not username or not password:
        st.error("Give a username and a password.")
        return
    api: AdminClient = ui.client()
    try:
        out = api.login(username, password)
    except ApiError as err:
        if err.code == "invalid_credentials":
            st.error("Wrong username or password.")
        elif err.code == "too_many_attempts":
            wait = (err.details or {}).get("retry_after_s", err.retry_after_s)
            st.error(f"Too many failed attempts: wait {wait} s before trying again.")
        else:
            ui.show_error(err, "Could not log in")
        return
    if "admin" not in out.roles:
        st.error("This account is not an admin.")
        return
    ui.login(Session.of(out))
    st.rerun()
