"""Pay for a subscription through the whole stack: API → outbox → Kafka → ledger → gateway →
emulator → webhook → ledger → projection → API, with real processes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from schemas.ids import subscription_id_for
from schemas.periods import add_months
from tests.e2e.client import (
    BODY,
    get,
    headers,
    new_user,
    pay,
    payment,
    provider_payments,
    ts,
    wait_status,
)
from tests.e2e.harness import Stack, wait_until

pytestmark = [pytest.mark.e2e]


def activations(stack: Stack, user: str) -> list[tuple[Any, ...]]:
    return stack.query(
        "SELECT event_id, body FROM subscription_events"
        " WHERE subscription_id = %s AND event_type = 'SubscriptionActivated'",
        subscription_id_for(user),
    )


def test_pay_confirm_active(stack: Stack) -> None:
    user = new_user()
    assert get(stack, user, "/api/v1/subscriptions/me").status_code == 404
    pid = pay(stack, user)
    pending = wait_status(stack, user, pid, "pending")
    assert pending["confirmation_url"].startswith(stack.emulator_url)
    assert pending["amount"] == {"value": "299.00", "currency": "RUB"}
    stack.control.confirm(pending["provider_payment_id"], "succeed")

    done = wait_status(stack, user, pid, "succeeded")
    wait_until(
        lambda: get(stack, user, "/api/v1/subscriptions/me").json().get("status") == "active",
        message="subscription active",
    )
    sub = get(stack, user, "/api/v1/subscriptions/me").json()
    assert sub["active"] is True and sub["plan"]["plan_id"] == "monthly"
    start, end = ts(sub["period_start"]), ts(sub["period_end"])
    assert end == add_months(start, 1)
    assert (done["period_start"], done["period_end"]) == (sub["period_start"], sub["period_end"])
    assert len(activations(stack, user)) == 1
    assert provider_payments(stack, pid) == 1
    # the outbox loop is closed
    wait_until(
        lambda: (
            stack.query("SELECT status FROM command_outbox WHERE payment_id = %s", pid)
            == [("done",)]
        ),
        message="command done",
    )


def test_same_key_sequential_is_one_payment(stack: Stack) -> None:
    user = new_user()
    key = str(uuid.uuid4())
    url = f"{stack.api_url}/api/v1/payments"
    first = httpx.post(url, headers=headers(stack, user, key), json=BODY, timeout=10)
    second = httpx.post(url, headers=headers(stack, user, key), json=BODY, timeout=10)
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    other = httpx.post(
        url, headers=headers(stack, user, key), json={**BODY, "plan_id": "yearly"}, timeout=10
    )
    assert other.status_code == 422 and other.json()["error"]["code"]
    pid = first.json()["payment_id"]
    wait_status(stack, user, pid, "pending")
    assert provider_payments(stack, pid) == 1


def test_twenty_concurrent_same_key_is_one_payment(stack: Stack) -> None:
    user = new_user()
    key = str(uuid.uuid4())

    async def burst() -> list[httpx.Response]:
        async with stack.client() as client:
            return await asyncio.gather(
                *(
                    client.post("/api/v1/payments", headers=headers(stack, user, key), json=BODY)
                    for _ in range(20)
                )
            )

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {202, 409}, codes
    accepted = {r.json()["payment_id"] for r in responses if r.status_code == 202}
    assert len(accepted) == 1, accepted
    for r in responses:
        if r.status_code == 409:
            assert r.json()["error"]["code"]
    (pid,) = accepted
    wait_status(stack, user, pid, "pending")
    rows = stack.query(
        "SELECT count(*) FROM payments WHERE subscription_id = %s", subscription_id_for(user)
    )
    assert rows == [(1,)]
    assert provider_payments(stack, pid) == 1


def test_duplicate_and_out_of_order_webhooks_activate_once(stack: Stack) -> None:
    user = new_user()
    pid = pay(stack, user)
    pending = wait_status(stack, user, pid, "pending")
    sent_before = len(stack.control.deliveries())
    stack.control.add_fault("notifications", "duplicate", count=1)
    stack.control.add_fault("notifications", "out_of_order", count=1)
    stack.control.confirm(pending["provider_payment_id"], "succeed")
    wait_status(stack, user, pid, "succeeded")
    wait_until(lambda: len(stack.control.deliveries()) >= sent_before + 2, message="duplicates")
    # Replay the notification once more by hand, as a provider retry would.
    note = {
        "type": "notification",
        "event": "payment.succeeded",
        "object": {"id": pending["provider_payment_id"], "status": "succeeded"},
    }
    for _ in range(3):
        r = httpx.post(f"{stack.api_url}/api/v1/webhooks/yookassa", json=note, timeout=10)
        assert r.status_code == 200, r.text
    # A stale "waiting" claim after success must not move anything backwards.
    stale = {**note, "event": "payment.waiting_for_capture"}
    assert httpx.post(f"{stack.api_url}/api/v1/webhooks/yookassa", json=stale).status_code == 200
    wait_until(lambda: len(activations(stack, user)) >= 1, message="activation")
    stack.control.clear_faults()
    # Give the duplicates time to flow through, then count.
    asyncio.run(asyncio.sleep(3))
    assert len(activations(stack, user)) == 1
    assert payment(stack, user, pid)["status"] == "succeeded"
    assert provider_payments(stack, pid) == 1


def test_declined_payment_leaves_subscription_inactive(stack: Stack) -> None:
    user = new_user()
    pid = pay(stack, user)
    pending = wait_status(stack, user, pid, "pending")
    stack.control.confirm(pending["provider_payment_id"], "cancel", reason="insufficient_funds")
    canceled = wait_status(stack, user, pid, "canceled")
    assert "insufficient_funds" in (canceled["status_reason"] or "")
    me = get(stack, user, "/api/v1/subscriptions/me")
    assert me.status_code == 404 or me.json()["active"] is False, me.text
    assert activations(stack, user) == []


def test_provider_timeout_is_unknown_then_one_charge(stack: Stack) -> None:
    """The create succeeds at the provider but the answer is lost (timeout after the work):
    the gateway retries under the same Idempotence-Key, the sweeper re-drives, and the
    provider holds exactly one payment."""
    user = new_user()
    calls_before = stack.control.stats()["create_calls"]
    stack.control.add_fault("payments.create", "timeout", when="after", count=4)
    pid = pay(stack, user)
    pending = wait_status(stack, user, pid, "pending", timeout=90)
    stack.control.clear_faults()
    assert stack.control.stats()["create_calls"] - calls_before >= 2
    assert provider_payments(stack, pid) == 1
    stack.control.confirm(pending["provider_payment_id"], "succeed")
    wait_status(stack, user, pid, "succeeded")
    wait_until(lambda: len(activations(stack, user)) == 1, message="activation")


def test_broker_down_at_pay_loses_nothing(stack: Stack) -> None:
    """The broker is down when the user pays: the API still answers 202 (the outbox holds the
    command) and the payment flows once the broker is back. Last in the module: it restarts
    the broker under the worker."""
    user = new_user()
    stack.broker.stop()
    try:
        pid = pay(stack, user)
        assert payment(stack, user, pid)["status"] == "accepted"
    finally:
        stack.broker.start()
    pending = wait_status(stack, user, pid, "pending", timeout=120)
    stack.control.confirm(pending["provider_payment_id"], "succeed")
    wait_status(stack, user, pid, "succeeded", timeout=60)
    assert provider_payments(stack, pid) == 1
