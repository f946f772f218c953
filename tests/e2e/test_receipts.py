"""54-FZ receipts through the whole stack (issue 16): the shop is configured for receipts, so
the emulator refuses any payment or refund without a valid receipt (contact, vat code, items
adding up to the amount). A payment, a partial refund and the full refund of the rest go
through with their receipts; the sums are checked by the emulator and again here from what it
accepted; the registration status is shown in the payment history and the refunds. A payment
with no contact known is refused at intake (422), and the profile's contact is used."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest

from schemas.periods import dt_to_ms
from tests.e2e.client import (
    BODY,
    ask_refund,
    get,
    headers,
    new_user,
    pay,
    refund_status,
    ts,
    wait_status,
)
from tests.e2e.harness import Stack, wait_until
from tests.e2e.invariants import check_invariants

pytestmark = [pytest.mark.e2e]

HOUR_MS = 3_600_000

STACK_ENV = {
    "BILLING_RECEIPTS_ENABLED": "true",
    "BILLING_RECEIPT_TAX_SYSTEM_CODE": "1",
    "BILLING_RECEIPT_VAT_CODE": "1",
}


def receipts_of(stack: Stack, kind: str, object_id: str) -> list[dict[str, Any]]:
    """The receipts the emulator accepted for one payment or refund."""
    return [
        r["receipt"]
        for r in stack.control.objects()["receipts"]
        if r["object"] == kind and r["id"] == object_id
    ]


def total(receipt: dict[str, Any]) -> Decimal:
    return sum(
        (Decimal(i["amount"]["value"]) * Decimal(str(i["quantity"])) for i in receipt["items"]),
        Decimal(0),
    )


def paid(stack: Stack, user: str, body: dict[str, Any]) -> dict[str, Any]:
    pid = pay(stack, user, body=body)
    pending = wait_status(stack, user, pid, "pending")
    stack.control.confirm(pending["provider_payment_id"], "succeed")
    return wait_status(stack, user, pid, "succeeded")


def test_receipts_on_payment_partial_refund_and_full_refund(stack: Stack) -> None:
    user = new_user("rcpt-")
    done = paid(stack, user, {**BODY, "receipt_email": "viewer@example.com"})
    pid, provider_id = done["payment_id"], done["provider_payment_id"]
    (receipt,) = receipts_of(stack, "payment", provider_id)
    assert receipt["customer"] == {"email": "viewer@example.com"}
    assert receipt["tax_system_code"] == 1
    (item,) = receipt["items"]
    assert (item["payment_subject"], item["vat_code"]) == ("service", 1)
    assert total(receipt) == Decimal(done["amount"]["value"])
    wait_until(
        lambda: (
            get(stack, user, f"/api/v1/payments/{pid}").json()["receipt_registration"]
            == "succeeded"
        ),
        message="payment receipt registered",
    )
    history = get(stack, user, "/api/v1/payments").json()["items"]
    assert [p["receipt_registration"] for p in history if p["payment_id"] == pid] == ["succeeded"]

    # A partial refund, then the rest: each with its own receipt of exactly its amount.
    first = ask_refund(stack, user, pid, "100.00")
    assert first.status_code == 202, first.text
    part = refund_status(stack, user, first.json()["refund_id"], "succeeded", "canceled")
    assert part["status"] == "succeeded", part
    rest = ask_refund(stack, user, pid)
    assert rest.status_code == 202, rest.text
    last = refund_status(stack, user, rest.json()["refund_id"], "succeeded", "canceled")
    assert last["status"] == "succeeded", last

    def registered() -> bool:
        listed = get(stack, user, f"/api/v1/payments/{pid}/refunds").json()
        return [r["receipt_registration"] for r in listed] == ["succeeded", "succeeded"]

    wait_until(registered, message="refund receipts registered")
    sums = [
        total(r)
        for refund in (part, last)
        for r in receipts_of(stack, "refund", refund["provider_refund_id"])
    ]
    assert sums == [Decimal("100.00"), Decimal(done["amount"]["value"]) - Decimal("100.00")]
    assert sum(sums) == Decimal(done["amount"]["value"])
    check_invariants(stack, [user])


def test_no_contact_is_refused_at_intake_and_the_profile_is_used(stack: Stack) -> None:
    user = new_user("rcpt-")
    refused = httpx.post(
        f"{stack.api_url}/api/v1/payments",
        headers=headers(stack, user, str(uuid.uuid4())),
        json=BODY,
        timeout=10,
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "receipt_contact_required"
    assert stack.query("SELECT count(*) FROM command_outbox WHERE user_id = %s", user) == [(0,)]

    bad = httpx.put(
        f"{stack.api_url}/api/v1/profile",
        headers=headers(stack, user, str(uuid.uuid4())),
        json={"phone": "+7 (900) 123"},
        timeout=10,
    )
    assert bad.status_code == 422, bad.text
    saved = httpx.put(
        f"{stack.api_url}/api/v1/profile",
        headers=headers(stack, user, str(uuid.uuid4())),
        json={"phone": "79001234567"},
        timeout=10,
    )
    assert saved.status_code == 200, saved.text
    assert get(stack, user, "/api/v1/profile").json()["phone"] == "79001234567"

    done = paid(stack, user, BODY)
    (receipt,) = receipts_of(stack, "payment", done["provider_payment_id"])
    assert receipt["customer"] == {"phone": "79001234567"}
    assert total(receipt) == Decimal(done["amount"]["value"])
    check_invariants(stack, [user])


def test_the_emulator_refuses_a_receipt_that_does_not_add_up(stack: Stack) -> None:
    """The check the stack relies on, seen from outside: YooKassa's error body."""
    body = {
        "amount": {"value": "299.00", "currency": "RUB"},
        "capture": True,
        "confirmation": {"type": "redirect", "return_url": "https://cinema.example/return"},
        "receipt": {
            "customer": {"email": "viewer@example.com"},
            "items": [
                {
                    "description": "Subscription monthly, 1 month",
                    "quantity": "1.0",
                    "amount": {"value": "298.99", "currency": "RUB"},
                    "vat_code": 1,
                    "payment_mode": "full_prepayment",
                    "payment_subject": "service",
                }
            ],
        },
    }
    resp = httpx.post(
        f"{stack.emulator_url}/v3/payments",
        json=body,
        auth=("100500", "emulator-secret"),
        headers={"Idempotence-Key": str(uuid.uuid4())},
        timeout=10,
    )
    assert resp.status_code == 400
    error = resp.json()
    assert (error["type"], error["code"], error["parameter"]) == (
        "error",
        "invalid_request",
        "receipt.items",
    )


def test_a_renewal_sends_the_receipt_to_the_contact_the_purchase_gave(stack: Stack) -> None:
    """The contact is kept by the ledger: the renewal a day ahead of the period's end (the
    saved card, no user present) goes with a receipt to the same email. Runs last: it moves
    the stack's clock."""
    user = new_user("rcpt-renew-")
    done = paid(stack, user, {**BODY, "receipt_email": "renewing@example.com"})
    period_end = ts(get(stack, user, "/api/v1/subscriptions/me").json()["period_end"])
    stack.advance_clock(dt_to_ms(period_end) - 11 * HOUR_MS - stack.now_ms())

    def renewal() -> dict[str, Any] | None:
        rows = get(stack, user, "/api/v1/payments").json()["items"]
        return next(
            (
                p
                for p in rows
                if p["payment_id"] != done["payment_id"] and p["status"] == "succeeded"
            ),
            None,
        )

    wait_until(lambda: renewal() is not None, timeout=90, message="the renewal charged")
    renewed = renewal()
    assert renewed is not None
    (receipt,) = receipts_of(stack, "payment", renewed["provider_payment_id"])
    assert receipt["customer"] == {"email": "renewing@example.com"}
    assert total(receipt) == Decimal(renewed["amount"]["value"])
    wait_until(
        lambda: (
            get(stack, user, f"/api/v1/payments/{renewed['payment_id']}").json()[
                "receipt_registration"
            ]
            == "succeeded"
        ),
        message="renewal receipt registered",
    )
    check_invariants(stack, [user])
