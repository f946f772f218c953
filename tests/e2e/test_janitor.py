"""An unknown outcome resolved by the janitor, and retries racing a late success, through the
whole stack. Every invariant is checked at the end."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.client import get, headers, pay, payment, provider_payments, wait_status
from tests.e2e.harness import Stack, wait_until
from tests.e2e.invariants import check_invariants

pytestmark = [pytest.mark.e2e]


def retry(stack: Stack, user: str, payment_id: str) -> httpx.Response:
    return httpx.post(
        f"{stack.api_url}/api/v1/payments/{payment_id}/retry",
        headers=headers(stack, user, str(uuid.uuid4())),
        json={"return_url": "https://cinema.example/return"},
        timeout=10,
    )


def final_status(stack: Stack, user: str, payment_id: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(payment(stack, user, payment_id))
        return seen["status"] in ("rejected", "succeeded", "canceled", "pending")

    wait_until(done, message=f"retry {payment_id} answered")
    return seen


def test_unknown_outcome_resolved_by_the_janitor_and_retries_refused(stack: Stack) -> None:
    user = f"janitor-{uuid.uuid4().hex[:6]}"
    # The provider creates the payment but every answer is lost for a while: unknown.
    stack.control.add_fault("payments.create", "timeout", when="after", count=6)
    pid = pay(stack, user)
    wait_until(
        lambda: payment(stack, user, pid)["status"] in ("unknown", "pending"),
        message="unknown outcome",
    )
    # A retry while the outcome is unknown is refused: it could charge twice.
    early = retry(stack, user, pid)
    if early.status_code == 202:
        assert final_status(stack, user, early.json()["payment_id"])["status"] == "rejected"
    else:
        assert early.status_code == 422 and early.json()["error"]["code"]
    # The janitor (sweeper) re-drives under the same key until the provider answers.
    pending = wait_status(stack, user, pid, "pending", timeout=120)
    stack.control.clear_faults()
    assert provider_payments(stack, pid) == 1

    # The user gives up at the 3-DS page and retries: refused while it is in flight ...
    racing = retry(stack, user, pid)
    if racing.status_code == 202:
        assert final_status(stack, user, racing.json()["payment_id"])["status"] == "rejected"
    # ... and the late success of the first payment is the one charge.
    stack.control.confirm(pending["provider_payment_id"], "succeed")
    wait_status(stack, user, pid, "succeeded")
    late = retry(stack, user, pid)
    if late.status_code == 202:
        answer = final_status(stack, user, late.json()["payment_id"])
        assert answer["status"] == "rejected", answer
    time.sleep(2)
    assert get(stack, user, "/api/v1/subscriptions/me").json()["active"] is True
    summary = check_invariants(stack, [user])
    assert summary["charges"] == 1, summary


def test_retry_after_a_decline_pays_once(stack: Stack) -> None:
    user = f"decline-{uuid.uuid4().hex[:6]}"
    pid = pay(stack, user)
    pending = wait_status(stack, user, pid, "pending")
    stack.control.confirm(pending["provider_payment_id"], "cancel", reason="insufficient_funds")
    wait_status(stack, user, pid, "canceled")
    again = retry(stack, user, pid)
    assert again.status_code == 202, again.text
    new_id = again.json()["payment_id"]
    new = wait_status(stack, user, new_id, "pending")
    # a second retry of the same declined payment while the first retry is in flight
    second = retry(stack, user, pid)
    assert second.status_code == 202
    assert final_status(stack, user, second.json()["payment_id"])["status"] == "rejected"
    stack.control.confirm(new["provider_payment_id"], "succeed")
    wait_status(stack, user, new_id, "succeeded")
    summary = check_invariants(stack, [user])
    assert summary["charges"] == 1 and provider_payments(stack, new_id) == 1, summary
