"""Issue 11's black-box case through the whole stack: buy monthly, upgrade to yearly, then ask
for a full refund of the monthly payment. The upgrade was priced with the monthly period's
unused part as credit, so that part is no longer refundable, and access rests on the yearly
payment: the subscription stays active. Money is summed from the provider's own objects."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

from schemas.ids import subscription_id_for
from tests.e2e.client import ask_refund, get, headers, paid_user, refund_status, wait_status
from tests.e2e.harness import Stack, wait_until

pytestmark = [pytest.mark.e2e]


def upgrade(stack: Stack, user: str, plan_id: str) -> str:
    resp = httpx.post(
        f"{stack.api_url}/api/v1/subscriptions/me/plan",
        headers=headers(stack, user, str(uuid.uuid4())),
        json={"plan_id": plan_id, "return_url": "https://cinema.example/return"},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    payment_id: str = resp.json()["payment_id"]
    return payment_id


def credits_given(stack: Stack, user: str) -> dict[str, int]:
    """Credit taken from each payment, read from the upgrade requests in the event log."""
    out: dict[str, int] = {}
    rows = stack.query(
        "SELECT body FROM subscription_events"
        " WHERE subscription_id = %s AND event_type = 'PaymentRequested'",
        subscription_id_for(user),
    )
    for (body,) in rows:
        event: dict[str, Any] = body if isinstance(body, dict) else json.loads(body)
        for source, minor in (event["request"].get("credits") or {}).items():
            out[source] = out.get(source, 0) + int(minor)
    return out


def minor(value: str) -> int:
    units, _, cents = value.partition(".")
    return int(units) * 100 + int((cents + "00")[:2])


def test_refund_after_upgrade_returns_no_more_than_is_left(stack: Stack) -> None:
    user, monthly = paid_user(stack)
    yearly = upgrade(stack, user, "yearly")
    charge = wait_status(stack, user, yearly, "succeeded", "canceled")
    assert charge["status"] == "succeeded", charge
    wait_until(
        lambda: get(stack, user, "/api/v1/subscriptions/me").json()["plan"]["plan_id"] == "yearly",
        message="yearly plan in force",
    )
    credit = 299000 - minor(charge["amount"]["value"])  # the yearly price less the charge
    assert 0 < credit < 29900
    assert credits_given(stack, user).get(monthly, credit) == credit

    # The whole monthly price back is more than is left of it: refused by the ledger.
    too_much = ask_refund(stack, user, monthly, "299.00")
    assert too_much.status_code == 202, too_much.text
    refused = refund_status(stack, user, too_much.json()["refund_id"], "rejected", "succeeded")
    assert refused["status"] == "rejected", refused

    # "Refund everything": what is left after the credit, nothing more.
    full = ask_refund(stack, user, monthly)
    assert full.status_code == 202, full.text
    done = refund_status(stack, user, full.json()["refund_id"], "succeeded", "rejected")
    assert done["status"] == "succeeded", done
    assert minor(done["amount"]["value"]) == 29900 - credit

    # Books from the provider's side: refunded + credited <= captured for every payment.
    objects = stack.control.objects()
    by_provider_id = {p["id"]: p for p in objects["payments"]}
    ours = {
        pid: wait_status(stack, user, pid, "succeeded")["provider_payment_id"]
        for pid in (monthly, yearly)
    }
    credits = {monthly: credit}
    for pid, provider_id in ours.items():
        captured = minor(by_provider_id[provider_id]["amount"]["value"])
        refunded = sum(
            minor(r["amount"]["value"])
            for r in objects.get("refunds", [])
            if r["payment_id"] == provider_id and r["status"] == "succeeded"
        )
        assert refunded + credits.get(pid, 0) <= captured, (pid, refunded, credits, captured)

    # Access rests on the yearly payment: still active, on yearly, never canceled.
    time.sleep(2)  # a cancel would be projected right after the refund's success
    canceled = stack.query(
        "SELECT count(*) FROM subscription_events"
        " WHERE subscription_id = %s AND event_type = 'SubscriptionCanceled'",
        subscription_id_for(user),
    )
    assert canceled == [(0,)]
    sub = get(stack, user, "/api/v1/subscriptions/me").json()
    assert sub["active"] is True and sub["status"] == "active", sub
    assert sub["plan"]["plan_id"] == "yearly"
