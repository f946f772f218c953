"""Streamlit building blocks shared by the console's pages: the API client of the logged-in
admin, error messages, actions with their Idempotency-Keys, paginated tables with CSV
downloads, and charts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

import httpx
import pandas as pd
import streamlit as st
from pydantic import BaseModel, ValidationError

from billing.config import ConsoleSettings
from dashboard import tables
from dashboard.client import AdminClient, ApiError, ApiUnreachable, SessionExpired
from dashboard.state import ActionKeys, Session

T = TypeVar("T")

SESSION = "session"
KEYS = "action_keys"
NOTICE = "login_notice"
SELECTED = "selected_subscription_id"


@dataclass(frozen=True)
class ConsoleConfig:
    api_url: str
    timeout_s: float = 15.0

    @classmethod
    def from_settings(cls, settings: ConsoleSettings) -> ConsoleConfig:
        url = settings.dashboard_api_url.strip()
        if not url:
            host = settings.api_host
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"
            url = f"http://{host}:{settings.api_port}"
        return cls(api_url=url.rstrip("/"), timeout_s=settings.dashboard_api_timeout_s)


@dataclass
class _Runtime:
    config: ConsoleConfig | None = None
    transport: httpx.BaseTransport | None = None  # tests put a fake API here
    pages: dict[str, Any] | None = None


_runtime = _Runtime()


def configure(config: ConsoleConfig, transport: httpx.BaseTransport | None = None) -> ConsoleConfig:
    _runtime.config = config
    _runtime.transport = transport
    return config


def config() -> ConsoleConfig:
    if _runtime.config is None:
        raise RuntimeError("dashboard.ui.configure() was not called")
    return _runtime.config


def register_pages(pages: dict[str, Any]) -> None:
    _runtime.pages = pages


def switch_to(name: str) -> None:
    if _runtime.pages and name in _runtime.pages:
        st.switch_page(_runtime.pages[name])


# -------------------------------------------------------------------------------- session
def current_session() -> Session | None:
    session: Session | None = st.session_state.get(SESSION)
    if session is not None and session.expired():
        logout("Your session expired: log in again.")
        return None
    return session


def login(session: Session) -> None:
    st.session_state[SESSION] = session
    st.session_state.pop(NOTICE, None)


def logout(notice: str | None = None) -> None:
    """Forget the token and everything read with it."""
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    if notice:
        st.session_state[NOTICE] = notice


def client() -> AdminClient:
    session: Session | None = st.session_state.get(SESSION)
    cfg = config()
    return AdminClient(
        cfg.api_url,
        token=session.token if session else None,
        timeout_s=cfg.timeout_s,
        transport=_runtime.transport,
    )


def action_keys() -> ActionKeys:
    keys: ActionKeys | None = st.session_state.get(KEYS)
    if keys is None:
        keys = ActionKeys()
        st.session_state[KEYS] = keys
    return keys


# --------------------------------------------------------------------------------- errors
def describe(err: ApiError) -> str:
    if isinstance(err, ApiUnreachable):
        return tables.md(f"The API at {config().api_url} does not answer ({err.message}).")
    return tables.md(f"{err.message} ({err.status} {err.code})")


def show_error(err: ApiError, what: str = "") -> None:
    prefix = f"{what}: " if what else ""
    if err.status == 503:
        st.warning(prefix + describe(err))
    else:
        st.error(prefix + describe(err))


def fetch(call: Callable[[], T], what: str) -> T | None:
    """A read; on failure the page says what could not be read and goes on. An expired
    session is not handled here: the app sends the admin back to the login page."""
    try:
        return call()
    except SessionExpired:
        raise
    except ApiError as err:
        show_error(err, f"Could not read {what}")
        return None


def fetch_analytics(call: Callable[[], T]) -> T | None:
    """A read of the analytics (ClickHouse): while they are unavailable the page says so as a
    warning, any other failure as :func:`show_error` does."""
    try:
        return call()
    except SessionExpired:
        raise
    except ApiError as err:
        if err.code == "analytics_unavailable":
            st.warning(f"Analytics are not available right now: {tables.md(err.message)}")
        else:
            show_error(err, "Could not read the analytics")
        return None


def perform(action: str, body: Mapping[str, Any] | BaseModel, call: Callable[[str], T]) -> T | None:
    """A write under the action's Idempotency-Key (kept while its outcome is unknown); a
    request model counts as its JSON form."""
    keys = action_keys()
    key = keys.key_for(
        action, body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    )
    try:
        result = call(key)
    except SessionExpired:
        raise
    except ValidationError as exc:  # refused here, before anything was sent
        keys.forget(action)
        st.error("Not sent: " + "; ".join(str(e["msg"]) for e in exc.errors()))
        return None
    except ApiError as err:
        if err.retryable:
            st.warning(
                f"{describe(err)} The outcome is not known yet: press the button again to"
                f" retry the same action (it keeps its Idempotency-Key {key[:8]}…, so it"
                " cannot happen twice)."
            )
        else:
            keys.forget(action)
            show_error(err, "Refused")
        return None
    keys.settle(action)
    return result


# ------------------------------------------------------------------------- tables, charts
def table(
    frame: pd.DataFrame,
    *,
    key: str,
    file_name: str,
    page_size: int = tables.DEFAULT_PAGE_SIZE,
    empty: str = "Nothing to show.",
) -> None:
    """A paginated table and a CSV download of all its rows."""
    if frame.empty:
        st.caption(empty)
        return
    pages = tables.page_count(len(frame), page_size)
    page = 1
    if pages > 1:
        page = int(
            st.number_input(
                f"Page (of {pages}, {len(frame)} rows)",
                min_value=1,
                max_value=pages,
                value=1,
                step=1,
                key=f"{key}-page",
            )
        )
    st.dataframe(tables.paginate(frame, page, page_size), hide_index=True, width="stretch")
    st.download_button(
        "Download CSV",
        data=tables.csv_bytes(frame),
        file_name=file_name,
        mime="text/csv",
        key=f"{key}-csv",
    )


def chart(spec: Any, *, empty: str = "No data for this window.") -> None:
    if spec is None:
        st.caption(empty)
    else:
        st.altair_chart(spec, width="stretch")


def day_window(picked: object, today: date) -> tuple[datetime, datetime]:
    """A ``st.date_input`` range (or one day, or nothing yet: the last 30 days) as the UTC
    instants [start, end) the analytics routes take."""
    if isinstance(picked, tuple) and len(picked) == 2:
        start, end = picked
    elif isinstance(picked, date):
        start = end = picked
    else:
        start, end = today - timedelta(days=29), today
    assert isinstance(start, date) and isinstance(end, date)
    return (
        datetime.combine(start, time(0), tzinfo=UTC),
        datetime.combine(end + timedelta(days=1), time(0), tzinfo=UTC),
    )
