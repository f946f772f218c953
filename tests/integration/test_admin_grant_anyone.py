"""An admin grants a period to a user who has never had a subscription (issue 16): by user id,
with reason and actor; the subscription starts from the grant. Also the wallet read through
the API: saved methods with their displayable details, an admin's view of them."""

from __future__ import annotations

import pytest

from schemas.ids import subscription_id_for
from schemas.messages import PeriodAdjusted
from tests.integration.api_support import Api, Ledger, new_user

pytestmark = pytest.mark.integration

ADMIN = "grant-admin"


async def test_an_admin_grants_a_period_to_a_user_with_no_subscription(
    api: Api, ledger: Ledger
) -> None:
    user = new_user()
    assert (
        await api.client.get("/api/v1/subscriptions/me", headers=api.auth(user))
    ).status_code == 404
    resp = await api.client.post(
        f"/api/v1/admin/users/{user}/grant",
        json={"plan_id": "monthly", "reason": "support ticket 42"},
        headers={**api.auth(ADMIN, admin=True), "Idempotency-Key": f"grant-{user}"},
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["subscription_id"] == subscription_id_for(user)
    events = await ledger.drain(user)
    assert [type(e).__name__ for e in events] == ["PeriodAdjusted"]
    grant = events[0]
    assert isinstance(grant, PeriodAdjusted)
    assert grant.actor == f"admin:{ADMIN}" and grant.reason == "support ticket 42"
    me = await api.client.get("/api/v1/subscriptions/me", headers=api.auth(user))
    assert me.status_code == 200 and me.json()["active"] is True, me.text


async def test_the_wallet_lists_saved_methods_and_an_admin_sees_them(
    api: Api, ledger: Ledger
) -> None:
    user = new_user()
    await ledger.subscribe(user)
    mine = await api.client.get("/api/v1/payment-methods", headers=api.auth(user))
    assert mine.status_code == 200, mine.text
    (method,) = mine.json()["items"]
    assert method["method_id"] == f"pm-{user}" and method["default"] is True
    other = await api.client.get("/api/v1/payment-methods", headers=api.auth(new_user()))
    assert other.json()["items"] == []
    sub = subscription_id_for(user)
    seen = await api.client.get(
        f"/api/v1/admin/subscriptions/{sub}/payment-methods", headers=api.auth(ADMIN, admin=True)
    )
    assert [m["method_id"] for m in seen.json()["items"]] == [f"pm-{user}"]
    # Deleting it goes through the ledger: the wallet is empty after.
    resp = await api.client.delete(
        f"/api/v1/payment-methods/pm-{user}",
        headers={**api.auth(user), "Idempotency-Key": f"del-{user}"},
    )
    assert resp.status_code == 202, resp.text
    assert [type(e).__name__ for e in await ledger.drain(user)] == ["PaymentMethodChanged"]
    after = await api.client.get("/api/v1/payment-methods", headers=api.auth(user))
    assert after.json()["items"] == []
