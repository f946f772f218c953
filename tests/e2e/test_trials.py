"""Free trials through the whole stack (issue 16): the card is checked by a small two-stage
hold that the ledger releases at once (nothing captured), access starts without a charge, and
the first charge comes at the trial's end with the saved card; a trial canceled before its end
is never charged; a second trial is refused (one per user, ever). The invariants checker runs
after each scenario (a trial counts as covered)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from schemas.ids import subscription_id_for
from tests.e2e.client import BODY, get, headers, new_user, pay, payment, wait_status
from tests.e2e.harness import Stack, wait_until
from tests.e2e.invariants import check_invariants

pytestmark = [pytest.mark.e2e]

DAY_MS = 86_400_000
TRIAL = {**BODY, "trial": True}


def kinds(stack: Stack, user: str) -> list[tuple[str, str, int]]:
    rows = stack.query(
        "SELECT kind, status, amount_minor FROM payments WHERE subscription_id = %s"
        " ORDER BY created_at",
        subscription_id_for(user),
    )
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


def start_trial(stack: Stack, user: str) -> dict[str, Any]:
    """Ask for the trial, confirm the card check as the user; the subscription once active."""
    pid = pay(stack, user, body=TRIAL)
    pending = wait_status(stack, user, pid, "pending")
    assert pending["amount"] == {"value": "1.00", "currency": "RUB"}  # a check, not the price
    stack.control.confirm(pending["provider_payment_id"], "succeed")
    released = wait_status(stack, user, pid, "canceled")  # the hold released at once
    assert "card_check_released" in (released["status_reason"] or ""), released
    wait_until(
        lambda: get(stack, user, "/api/v1/subscriptions/me").json().get("active") is True,
        message="trial active",
    )
    sub: dict[str, Any] = get(stack, user, "/api/v1/subscriptions/me").json()
    return sub


def auto_renew_off(stack: Stack, user: str) -> None:
    import httpx

    resp = httpx.put(
        f"{stack.api_url}/api/v1/subscriptions/me/auto-renew",
        headers=headers(stack, user, f"off-{user}"),
        json={"enabled": False},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text


def test_a_trial_converts_and_a_trial_canceled_before_its_end_is_never_charged(
    stack: Stack,
) -> None:
    assert stack.query("UPDATE plans SET trial_days = 7 WHERE plan_id = 'monthly' RETURNING 1")
    converts, cancels = new_user("trial-ok-"), new_user("trial-off-")
    sub = start_trial(stack, converts)
    assert sub["active"] is True
    start_trial(stack, cancels)
    auto_renew_off(stack, cancels)
    wait_until(
        lambda: get(stack, cancels, "/api/v1/subscriptions/me").json().get("auto_renew") is False,
        message="auto-renew off",
    )
    for user in (converts, cancels):
        assert kinds(stack, user) == [("trial", "canceled", 100)]  # nothing charged yet
    check_invariants(stack, [converts, cancels])

    stack.advance_clock(7 * DAY_MS + 60_000)  # past the trials' end
    wait_until(
        lambda: ("renewal", "succeeded", 29900) in kinds(stack, converts),
        timeout=90,
        message="the first charge at the trial's end",
    )
    wait_until(
        lambda: get(stack, cancels, "/api/v1/subscriptions/me").json().get("status") == "expired",
        timeout=90,
        message="the canceled trial expired",
    )
    time.sleep(3)  # several sweeper ticks: nothing more is charged
    assert kinds(stack, cancels) == [("trial", "canceled", 100)], "a canceled trial was charged"
    assert [k for k in kinds(stack, converts) if k[0] == "renewal"] == [
        ("renewal", "succeeded", 29900)
    ]
    wait_until(
        lambda: get(stack, converts, "/api/v1/subscriptions/me").json().get("active") is True,
        message="converted: active",
    )
    stats = stack.control.stats()
    assert all(n == 1 for n in stats["by_payment_id"].values())
    check_invariants(stack, [converts, cancels])


def test_a_second_trial_is_refused(stack: Stack) -> None:
    stack.query("UPDATE plans SET trial_days = 7 WHERE plan_id = 'monthly' RETURNING 1")
    user = new_user("trial-twice-")
    start_trial(stack, user)
    again = pay(stack, user, body=TRIAL)

    def refused() -> bool:
        return bool(payment(stack, user, again)["status"] == "rejected")

    wait_until(refused, message="second trial rejected")
    assert "trial_already_used" in (payment(stack, user, again)["status_reason"] or "")
    assert [k for k, _, _ in kinds(stack, user)] == ["trial"]
    check_invariants(stack, [user])
