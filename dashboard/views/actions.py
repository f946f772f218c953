"""Actions on one subscription: refund a payment (full or partial), cancel, extend, grant a
period, auto-renewal. All through the admin API (commands the ledger decides), each with a
reason and its own Idempotency-Key; the page then follows the command to its outcome."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import streamlit as st
from pydantic import ValidationError

from dashboard import tables, ui
from dashboard.client import AdminClient, ApiError, SessionExpired
from schemas.http import (
    AdminActionAccepted,
    AdminPaymentOut,
    AdminRefundAccepted,
    AdminRefundCreate,
    AdminSubscriptionDetail,
    MoneyIn,
)

LAST = "last-action"
WAIT_S = 25.0
REFUND_DONE = frozenset({"succeeded", "canceled", "rejected"})


def _target_form(api: AdminClient) -> None:
    with st.form("actions-target"):
        target = st.text_input(
            "Subscription id or user id", value=st.session_state.get(ui.SELECTED, "")
        )
        load = st.form_submit_button("Load")
    if not load or not target.strip():
        return
    text = target.strip()
    try:
        st.session_state[ui.SELECTED] = str(uuid.UUID(text))
    except ValueError:
        page = ui.fetch(lambda: api.subscriptions(user_id=text, limit=1), "the user's subscription")
        if page is None:
            return
        if not page.items:
            st.error(f"No subscription for user {text!r}.")
            st.session_state.pop(ui.SELECTED, None)
            return
        st.session_state[ui.SELECTED] = page.items[0].subscription_id
    st.session_state.pop(LAST, None)


def _show_last() -> None:
    last: dict[str, Any] | None = st.session_state.get(LAST)
    if not last:
        return
    text = "  \n".join([f"**{last['title']}**", *last["lines"]])
    if last["ok"]:
        st.success(text)
    else:
        st.warning(text)


def _follow(
    api: AdminClient,
    title: str,
    accepted: AdminActionAccepted | AdminRefundAccepted,
    sid: str,
    refund_id: str | None = None,
) -> None:
    """Wait (bounded) for the ledger's outcome and keep it to show after the rerun."""
    lines = [f"command `{accepted.command_id}` accepted"]
    ok = True
    with st.spinner("Waiting for the ledger…"):
        deadline = time.monotonic() + WAIT_S
        command = api.wait_command(accepted.command_id, timeout_s=WAIT_S)
        lines.append(
            f"command: **{command.status}**"
            + (f" ({tables.md(command.status_reason)})" if command.status_reason else "")
        )
        ok = command.status != "rejected"
        if refund_id is not None and ok:
            status = "accepted"
            while time.monotonic() < deadline:
                detail = api.subscription(sid, events_limit=1)
                refund = next((r for r in detail.refunds if r.refund_id == refund_id), None)
                status = refund.status if refund else "accepted"
                if status in REFUND_DONE:
                    break
                time.sleep(0.5)
            lines.append(f"refund `{refund_id}`: **{status}**")
            ok = status == "succeeded" or status not in REFUND_DONE
    if api.last_replayed:
        lines.append("(the same action a moment ago: answered from its first request)")
    st.session_state[LAST] = {"title": title, "ok": ok, "lines": lines}
    st.rerun()


def _parse_amount(text: str, limit: Decimal) -> Decimal:
    try:
        value = Decimal(text.strip().replace(",", "."))
    except InvalidOperation as exc:
        raise ValueError(f"{text!r} is not an amount") from exc
    if not value.is_finite() or value <= 0:
        raise ValueError("the amount must be positive")
    if value != value.quantize(Decimal("0.01")):
        raise ValueError("at most two decimals")
    if value > limit:
        raise ValueError(f"at most {limit} is left to refund on this payment")
    return value


def _payment_label(p: AdminPaymentOut) -> str:
    left = tables.refundable(p)
    amount = tables.money_out(p.amount)
    return f"{p.created_at:%Y-%m-%d} · {amount} · refundable {left} · {p.kind} · {p.payment_id[:8]}"


def _refund_tab(api: AdminClient, sid: str, detail: AdminSubscriptionDetail) -> None:
    payments = [p for p in detail.payments if tables.refundable(p) > 0]
    if not payments:
        st.info("No payment of this subscription has anything left to refund.")
        return
    payments.sort(key=lambda p: p.created_at, reverse=True)
    by_id = {p.payment_id: p for p in payments}
    with st.form("refund"):
        payment_id = st.selectbox(
            "Payment", list(by_id), format_func=lambda i: _payment_label(by_id[i])
        )
        mode = st.radio(
            "Amount",
            ["Full", "Partial"],
            horizontal=True,
            help="Full: everything still refundable on the payment",
        )
        amount_text = st.text_input("Partial amount", placeholder="e.g. 100.00")
        reason = st.text_input("Reason (recorded in the audit trail)", key="refund-reason")
        submitted = st.form_submit_button("Refund", type="primary")
    if not submitted or payment_id is None:
        return
    payment = by_id[payment_id]
    try:
        amount = None
        if mode == "Partial":
            value = _parse_amount(amount_text, tables.refundable(payment))
            currency = payment.amount.currency if payment.amount else "RUB"
            amount = MoneyIn(value=f"{value:.2f}", currency=currency)
        body = AdminRefundCreate(amount=amount, reason=reason)
    except (ValueError, ValidationError) as exc:
        st.error(f"Not sent: {_why(exc)}")
        return
    accepted = ui.perform(
        f"refund:{payment_id}", body, lambda key: api.refund(payment_id, body, key)
    )
    if accepted is not None:
        what = f"{body.amount.value} {body.amount.currency}" if body.amount else "full"
        _follow(
            api,
            f"Refund ({what}) of payment {payment_id[:8]}",
            accepted,
            sid,
            refund_id=accepted.refund_id,
        )


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)


def _reasoned(
    api_call: Any,
    *,
    action: str,
    body: dict[str, Any],
    title: str,
    api: AdminClient,
    sid: str,
) -> None:
    if not body.get("reason", "").strip():
        st.error("Not sent: give a reason (it is recorded in the audit trail).")
        return
    accepted = ui.perform(action, body, api_call)
    if accepted is not None:
        _follow(api, title, accepted, sid)


def _cancel_tab(api: AdminClient, sid: str) -> None:
    with st.form("cancel"):
        st.caption("Ends access now and stops renewals. No refund: refund a payment separately.")
        reason = st.text_input("Reason", key="cancel-reason")
        sure = st.checkbox("Yes, end this subscription's access now")
        submitted = st.form_submit_button("Cancel subscription", type="primary")
    if submitted:
        if not sure:
            st.error("Not sent: tick the confirmation first.")
            return
        _reasoned(
            lambda key: api.cancel(sid, reason, key),
            action=f"cancel:{sid}",
            body={"reason": reason},
            title="Cancel",
            api=api,
            sid=sid,
        )


def _extend_tab(api: AdminClient, sid: str) -> None:
    with st.form("extend"):
        days = int(st.number_input("Days to add to the current period", 1, 366, 7))
        reason = st.text_input("Reason", key="extend-reason")
        submitted = st.form_submit_button("Extend", type="primary")
    if submitted:
        _reasoned(
            lambda key: api.extend(sid, days, reason, key),
            action=f"extend:{sid}",
            body={"days": days, "reason": reason},
            title=f"Extend by {days} days",
            api=api,
            sid=sid,
        )


def _grant_tab(api: AdminClient, sid: str, detail: AdminSubscriptionDetail) -> None:
    plans = ui.fetch(api.plans, "the plans") or []
    current = detail.subscription.plan.plan_id if detail.subscription.plan else None
    usable = [p.plan_id for p in plans if not p.archived or p.plan_id == current]
    if not usable:
        st.info("No plan can be granted.")
        return
    with st.form("grant"):
        plan_id = st.selectbox("Plan (one free period of it)", usable)
        reason = st.text_input("Reason", key="grant-reason")
        submitted = st.form_submit_button("Grant", type="primary")
    if submitted and plan_id:
        _reasoned(
            lambda key: api.grant(sid, plan_id, reason, key),
            action=f"grant:{sid}",
            body={"plan_id": plan_id, "reason": reason},
            title=f"Grant a period of {plan_id}",
            api=api,
            sid=sid,
        )


def _auto_renew_tab(api: AdminClient, sid: str, detail: AdminSubscriptionDetail) -> None:
    with st.form("auto-renew"):
        enabled = (
            st.radio(
                "Auto-renewal",
                ["on", "off"],
                horizontal=True,
                index=0 if detail.subscription.auto_renew else 1,
            )
            == "on"
        )
        reason = st.text_input("Reason", key="auto-renew-reason")
        submitted = st.form_submit_button("Apply", type="primary")
    if submitted:
        _reasoned(
            lambda key: api.set_auto_renew(sid, enabled, reason, key),
            action=f"auto-renew:{sid}",
            body={"enabled": enabled, "reason": reason},
            title=f"Auto-renewal {'on' if enabled else 'off'}",
            api=api,
            sid=sid,
        )


def render() -> None:
    st.title("Actions")
    api = ui.client()
    _target_form(api)
    sid = st.session_state.get(ui.SELECTED)
    if not sid:
        st.info("Load a subscription (or find one on the Subscriptions page).")
        return
    detail = ui.fetch(lambda: api.subscription(sid, events_limit=1), "the subscription")
    if detail is None:
        return
    s = detail.subscription
    plan = tables.md(s.plan.plan_id) if s.plan else "—"
    st.markdown(
        f"**{tables.md(s.user_id)}** · status **{tables.md(s.status)}** · plan {plan}"
        f" · paid until {f'{s.period_end:%Y-%m-%d %H:%M}' if s.period_end else '—'}"
        f" · auto-renew {'on' if s.auto_renew else 'off'}  \n`{s.subscription_id}`"
    )
    _show_last()
    refund, cancel, extend, grant, renew = st.tabs(
        ["Refund", "Cancel", "Extend", "Grant", "Auto-renew"]
    )
    try:
        with refund:
            _refund_tab(api, sid, detail)
        with cancel:
            _cancel_tab(api, sid)
        with extend:
            _extend_tab(api, sid)
        with grant:
            _grant_tab(api, sid, detail)
        with renew:
            _auto_renew_tab(api, sid, detail)
    except SessionExpired:
        raise
    except ApiError as err:  # while following a command
        ui.show_error(err, "While following the action")
    st.subheader(f"Refunds ({len(detail.refunds)})")
    ui.table(
        tables.refunds_frame(detail.refunds),
        key=f"act-ref-{sid}",
        file_name=f"refunds-{sid}.csv",
        empty="No refund yet.",
    )
    st.subheader(f"Payments ({len(detail.payments)})")
    ui.table(
        tables.payments_frame(detail.payments),
        key=f"act-pay-{sid}",
        file_name=f"payments-{sid}.csv",
        empty="No payment.",
    )
    st.subheader("Latest commands")
    ui.table(
        tables.commands_frame(detail.commands),
        key=f"act-cmd-{sid}",
        file_name=f"commands-{sid}.csv",
        empty="No command.",
    )
