"""Renewal with the saved payment method through the whole stack. The renewal lead is set
longer than a month, so the first period's renewal is due as soon as it is paid: exactly one
autopayment follows, and the period is extended by one month (no clock manipulation)."""

from __future__ import annotations

import time

import pytest

from schemas.ids import subscription_id_for
from tests.e2e.client import get, pay, provider_payments, ts, wait_status
from tests.e2e.harness import Stack, wait_until

pytestmark = [pytest.mark.e2e]

STACK_ENV = {"BILLING_RENEW_LEAD_S": str(40 * 86400), "BILLING_DUNNING_SCHEDULE_S": "[1, 1]"}


def payments_of(stack: Stack, user: str) -> list[tuple[str, str, str]]:
    rows = stack.query(
        "SELECT payment_id::text, kind, status FROM payments WHERE subscription_id = %s"
        " ORDER BY created_at",
        subscription_id_for(user),
    )
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def test_renewal_charges_the_saved_method_once_and_extends(stack: Stack) -> None:
    user = "renew-ok"
    pid = pay(stack, user)
    pending = wait_status(stack, user, pid, "pending")
    stack.control.confirm(pending["provider_payment_id"], "succeed")
    first = wait_status(stack, user, pid, "succeeded")
    wait_until(
        lambda: (
            [k for _, k, s in payments_of(stack, user) if s == "succeeded"]
            == ["purchase", "renewal"]
        ),
        timeout=60,
        message="renewal succeeded",
    )
    sub = get(stack, user, "/api/v1/subscriptions/me").json()
    wait_until(
        lambda: (
            get(stack, user, "/api/v1/subscriptions/me").json()["period_end"] != first["period_end"]
        ),
        message="period extended",
    )
    sub = get(stack, user, "/api/v1/subscriptions/me").json()
    assert sub["status"] == "active" and sub["period_start"] == first["period_start"]
    assert ts(sub["period_end"]).month != ts(first["period_end"]).month
    for payment_id, _, _ in payments_of(stack, user):
        assert provider_payments(stack, payment_id) == 1
    # Two months paid: nothing else is due for weeks, so no third charge appears.
    time.sleep(4)  # several sweeper ticks
    assert len(payments_of(stack, user)) == 2


def test_declined_renewals_follow_the_dunning_schedule(stack: Stack) -> None:
    user = "renew-declined"
    stack.control.configure(autopay_decline_rate=1.0, autopay_decline_reason="insufficient_funds")
    try:
        pid = pay(stack, user)
        pending = wait_status(stack, user, pid, "pending")
        stack.control.confirm(pending["provider_payment_id"], "succeed")
        wait_status(stack, user, pid, "succeeded")
        # the first renewal and two retries (schedule [1 s, 1 s]) are declined, then dunning
        # stops; the paid period still runs, so access continues until its end
        wait_until(
            lambda: (
                [s for _, k, s in payments_of(stack, user) if k == "renewal"] == ["canceled"] * 3
            ),
            timeout=90,
            message="three declined renewal charges",
        )
    finally:
        stack.control.configure(autopay_decline_rate=0.0)
    sub = get(stack, user, "/api/v1/subscriptions/me").json()
    assert sub["active"] is True and "insufficient_funds" in (sub["status_reason"] or "")
    assert sub["next_retry_at"] is None
    assert len(payments_of(stack, user)) == 4
