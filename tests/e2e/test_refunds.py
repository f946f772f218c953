"""Refunds and auto-renewal through the whole stack (real broker, database, emulator)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.e2e.client import (
    ask_refund,
    get,
    headers,
    paid_user,
    provider_payments,
    provider_refunds,
    refund_status,
)
from tests.e2e.harness import Stack, wait_until

pytestmark = [pytest.mark.e2e]


def test_partial_then_concurrent_then_full_refund(stack: Stack) -> None:
    user, pid = paid_user(stack)
    provider_id = get(stack, user, f"/api/v1/payments/{pid}").json()["provider_payment_id"]

    first = ask_refund(stack, user, pid, "100.00")
    assert first.status_code == 202, first.text
    done = refund_status(stack, user, first.json()["refund_id"], "succeeded")
    assert done["amount"] == {"value": "100.00", "currency": "RUB"}
    assert get(stack, user, "/api/v1/subscriptions/me").json()["active"] is True

    # 199.00 left: two concurrent 150.00 requests, exactly one may go through.
    async def both() -> list[httpx.Response]:
        async with stack.client() as c:
            return await asyncio.gather(
                *(
                    c.post(
                        f"/api/v1/payments/{pid}/refunds",
                        headers=headers(stack, user, str(uuid.uuid4())),
                        json={"amount": {"value": "150.00", "currency": "RUB"}},
                    )
                    for _ in range(2)
                )
            )

    responses = asyncio.run(both())
    assert [r.status_code for r in responses] == [202, 202]
    finals = sorted(
        refund_status(stack, user, r.json()["refund_id"], "succeeded", "rejected")["status"]
        for r in responses
    )
    assert finals == ["rejected", "succeeded"]

    # The remaining 49.00, in full: the current period's payment is fully refunded.
    rest = ask_refund(stack, user, pid)
    assert rest.status_code == 202
    assert refund_status(stack, user, rest.json()["refund_id"], "succeeded")["amount"] == {
        "value": "49.00",
        "currency": "RUB",
    }
    wait_until(
        lambda: get(stack, user, "/api/v1/subscriptions/me").json()["status"] == "canceled",
        message="access ended",
    )
    assert get(stack, user, "/api/v1/subscriptions/me").json()["active"] is False
    at_provider = provider_refunds(stack, provider_id)
    assert sorted(r["amount"]["value"] for r in at_provider) == ["100.00", "150.00", "49.00"]
    listed = get(stack, user, f"/api/v1/payments/{pid}/refunds").json()
    assert [r["status"] for r in listed].count("succeeded") == 3
    # Nothing left: a further refund is refused by the ledger.
    more = ask_refund(stack, user, pid, "1.00")
    assert refund_status(stack, user, more.json()["refund_id"], "rejected")["status_reason"]


def test_refund_input_errors_and_other_users(stack: Stack) -> None:
    user, pid = paid_user(stack)
    assert ask_refund(stack, "someone-else", pid, "1.00").status_code == 404
    bad = ask_refund(stack, user, pid, "1.005")
    assert bad.status_code == 422 and bad.json()["error"]["code"]
    zero = ask_refund(stack, user, pid, "0.00")
    # The OpenAPI's amount pattern admits positive amounts only: refused as any bad field.
    assert zero.status_code == 422 and zero.json()["error"]["code"] == "validation_error"
    usd = httpx.post(
        f"{stack.api_url}/api/v1/payments/{pid}/refunds",
        headers=headers(stack, user, str(uuid.uuid4())),
        json={"amount": {"value": "1.00", "currency": "USD"}},
    )
    assert usd.status_code == 422
    too_much = ask_refund(stack, user, pid, "300.00")
    assert too_much.status_code == 202
    rejected = refund_status(stack, user, too_much.json()["refund_id"], "rejected")
    assert "exceeds" in rejected["status_reason"]
    assert (
        get(stack, "someone-else", f"/api/v1/refunds/{too_much.json()['refund_id']}").status_code
        == 404
    )


def test_auto_renew_off_and_on(stack: Stack) -> None:
    user, _ = paid_user(stack)
    url = f"{stack.api_url}/api/v1/subscriptions/me/auto-renew"
    for enabled in (False, True, False):
        r = httpx.put(
            url, headers=headers(stack, user, str(uuid.uuid4())), json={"enabled": enabled}
        )
        assert r.status_code == 202, r.text

        def applied(e: bool = enabled) -> bool:
            return get(stack, user, "/api/v1/subscriptions/me").json()["auto_renew"] is e

        wait_until(applied, message=f"auto_renew {enabled}")
    nobody = httpx.put(
        url, headers=headers(stack, "never-paid", str(uuid.uuid4())), json={"enabled": False}
    )
    assert nobody.status_code == 404


def test_refunds_are_one_per_key_at_the_provider(stack: Stack) -> None:
    user, pid = paid_user(stack)
    provider_id = get(stack, user, f"/api/v1/payments/{pid}").json()["provider_payment_id"]
    key = str(uuid.uuid4())
    body = {"amount": {"value": "10.00", "currency": "RUB"}}
    url = f"{stack.api_url}/api/v1/payments/{pid}/refunds"
    a = httpx.post(url, headers=headers(stack, user, key), json=body)
    b = httpx.post(url, headers=headers(stack, user, key), json=body)
    assert a.json() == b.json() and b.headers.get("Idempotent-Replayed") == "true"
    refund_status(stack, user, a.json()["refund_id"], "succeeded")
    assert len(provider_refunds(stack, provider_id)) == 1
    assert provider_payments(stack, pid) == 1
