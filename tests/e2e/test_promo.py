"""A promo code through the whole stack (issue 16): an admin creates 20 % off for 3 periods,
the user's quote is what the first payment charges, the two renewals after it are charged at
the discount by the ledger's timer on the shared clock, and the third renewal at the full
price. The emulator holds each charge once; the invariants checker runs after the scenario."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import httpx
import pytest

from schemas.ids import subscription_id_for
from tests.e2e.client import BODY, get, headers, new_user, pay, ts, wait_status
from tests.e2e.harness import Stack, wait_until
from tests.e2e.invariants import check_invariants

pytestmark = [pytest.mark.e2e]

PRICE = 29900  # the monthly plan
DISCOUNTED = 23920  # 20 % off


def charges(stack: Stack, user: str) -> list[tuple[str, str, int]]:
    rows = stack.query(
        "SELECT kind, status, amount_minor FROM payments WHERE subscription_id = %s"
        " ORDER BY created_at",
        subscription_id_for(user),
    )
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


def create_code(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(
        f"{stack.api_url}/api/v1/admin/promo-codes",
        headers={
            "Authorization": f"Bearer {stack.token('promo-admin', admin=True)}",
            "Idempotency-Key": str(uuid.uuid4()),
        },
        json=body,
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    code: dict[str, Any] = resp.json()
    return code


def renewed(stack: Stack, user: str, n: int) -> bool:
    """The ``n``-th renewal charge has succeeded."""
    rows = charges(stack, user)
    return len([c for c in rows if c[0] == "renewal"]) == n and rows[-1][1] == "succeeded"


def next_charge_is(stack: Stack, user: str, minor: int) -> bool:
    sub = get(stack, user, "/api/v1/subscriptions/me").json()
    charge = sub.get("next_charge_amount") or {}
    return bool(charge.get("value") == f"{minor // 100}.{minor % 100:02d}")


def to_the_next_renewal(stack: Stack, user: str) -> None:
    """Move the shared clock to half an hour before the period ends: the renewal (charged
    within the lead before the end) is due, the lapse is not."""
    sub = get(stack, user, "/api/v1/subscriptions/me").json()
    end_ms = int(ts(sub["period_end"]).timestamp() * 1000)
    stack.advance_clock(end_ms - 1_800_000 - stack.now_ms())


def test_a_promo_for_three_periods_then_the_full_price(stack: Stack) -> None:
    code = create_code(
        stack,
        {
            "code": f"spring{uuid.uuid4().hex[:6]}",
            "discount": {"kind": "percent", "percent": 20},
            "periods": 3,
            "plan_ids": ["monthly"],
            "max_redemptions": 10,
            "reason": "e2e",
        },
    )["code"]
    user = new_user("promo-")
    quote = get(stack, user, f"/api/v1/plans/monthly/quote?promo_code={code.lower()}").json()
    assert quote["amount_minor"] == DISCOUNTED and quote["discounted_periods"] == 3, quote

    pid = pay(stack, user, body={**BODY, "promo_code": code.lower()})
    pending = wait_status(stack, user, pid, "pending")
    assert pending["amount"] == quote["charge"], pending  # what was shown is what is asked
    stack.control.confirm(pending["provider_payment_id"], "succeed")
    wait_status(stack, user, pid, "succeeded")
    assert charges(stack, user) == [("purchase", "succeeded", DISCOUNTED)]

    expected = [DISCOUNTED, DISCOUNTED, PRICE]  # periods 2 and 3 discounted, then full
    for n, amount in enumerate(expected, start=1):
        wait_until(  # what the subscription says the next charge is, it is
            functools.partial(next_charge_is, stack, user, amount), message=f"next {amount}"
        )
        to_the_next_renewal(stack, user)
        wait_until(functools.partial(renewed, stack, user, n), timeout=90, message=f"renewal {n}")
        assert charges(stack, user)[-1] == ("renewal", "succeeded", amount), charges(stack, user)
    redemptions = httpx.get(
        f"{stack.api_url}/api/v1/admin/promo-codes/{code}/redemptions",
        headers={"Authorization": f"Bearer {stack.token('promo-admin', admin=True)}"},
        timeout=10,
    ).json()
    assert [r["user_id"] for r in redemptions] == [user]
    again = httpx.post(
        f"{stack.api_url}/api/v1/payments",
        headers=headers(stack, user, str(uuid.uuid4())),
        json={**BODY, "promo_code": code},
        timeout=10,
    )
    assert again.status_code == 422 and again.json()["error"]["code"] == "promo_already_used"
    stats = stack.control.stats()
    assert all(n == 1 for n in stats["by_payment_id"].values())
    check_invariants(stack, [user])
