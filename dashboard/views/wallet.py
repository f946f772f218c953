"""A subscriber's wallet (issue 16): their saved payment methods as YooKassa returns them for
display (type, title, first6/last4, expiry, card type, issuer) and which one renewals charge,
from GET /admin/subscriptions/{id}/payment-methods. Read-only: saving, choosing and forgetting
a card is the subscriber's (their own API, with a card check they confirm).

A user's subscription id is derived from the user id (schemas.ids), so a user who has never
paid can be looked up too: their wallet is simply empty.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import pandas as pd
import streamlit as st

from dashboard import tables, ui
from dashboard.client import AdminClient
from schemas.http import PaymentMethodOut
from schemas.ids import subscription_id_for

TARGET = "wallet-target"
COLUMNS = ["renews", "method_id", "type", "title", "card", "expiry", "card_type", "issuer", "saved"]


def subscription_of(text: str) -> str:
    """A subscription id as typed, or the one derived from a user id."""
    text = text.strip()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return subscription_id_for(text)


def card_of(m: PaymentMethodOut) -> str:
    """The displayable card number: first6 and last4 around a mask, or whichever is known."""
    if m.first6 and m.last4:
        return f"{m.first6}******{m.last4}"
    if m.last4:
        return f"•••• {m.last4}"
    return ""


def expiry_of(m: PaymentMethodOut) -> str:
    return f"{m.expiry_month}/{m.expiry_year}" if m.expiry_month and m.expiry_year else ""


def methods_frame(items: Iterable[PaymentMethodOut]) -> pd.DataFrame:
    rows = [
        {
            "renews": "✔" if m.default else "",
            "method_id": m.method_id,
            "type": m.type,
            "title": m.title or "",
            "card": card_of(m),
            "expiry": expiry_of(m),
            "card_type": m.card_type or "",
            "issuer": " · ".join(x for x in (m.issuer_name, m.issuer_country) if x),
            "saved": m.created_at,
        }
        for m in items
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def render() -> None:
    st.title("Wallet")
    st.caption(
        "A subscriber's saved payment methods (displayable details only) and the one renewals"
        " charge. Subscribers add, choose and remove cards themselves."
    )
    api: AdminClient = ui.client()
    with st.form("wallet-target-form"):
        target = st.text_input(
            "Subscription id or user id",
            value=st.session_state.get(TARGET, st.session_state.get(ui.SELECTED, "")),
        )
        load = st.form_submit_button("Show")
    if load:
        st.session_state[TARGET] = target.strip()
    text = st.session_state.get(TARGET, "")
    if not text:
        return
    sid = subscription_of(text)
    out = ui.fetch(lambda: api.payment_methods(sid), "the saved payment methods")
    if out is None:
        return
    st.subheader(f"Saved payment methods of {tables.md(text)}")
    default = next((m for m in out.items if m.default), None)
    c1, c2 = st.columns(2)
    c1.metric("Saved methods", len(out.items))
    c2.metric(
        "Renewals charge",
        (default.title or card_of(default) or default.method_id) if default else "—",
    )
    if out.items and default is None:
        st.warning("No method is the default: the next renewal notifies and goes to dunning.")
    ui.table(
        methods_frame(out.items),
        key="wallet",
        file_name="payment-methods.csv",
        empty="No saved payment method.",
    )
