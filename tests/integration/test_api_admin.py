"""Admin endpoints against the real PostgreSQL: the catalogue (plans, scheduled prices,
archive), subscriptions with their history, and actions that go through commands, each with
the admin as actor and a reason. Ledger outcomes come from the pure ledger and the real
projection (``Ledger``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api.relay import relay_once
from schemas.ids import command_id_for, derived_id, subscription_id_for
from schemas.messages import AdminAdjust, AnyCommand, PaySubscription, RefundPayment, SetAutoRenew
from schemas.money import Money
from streams.ledger.machine import Policy
from tests.integration.api_support import (
    RETURN_URL,
    Api,
    Ledger,
    error_code,
    new_user,
    running_api,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def api(module_pg_dsn: str) -> AsyncIterator[Api]:
    """The module's app without the per-user write limit: one admin here makes more writes
    in a second than its burst (api/limits.py has its own tests), so a fast run got 429s."""
    async with running_api(module_pg_dsn, rate_limit_writes_per_s=0.0) as a:
        yield a


ADMIN = "admin-7"
ACTOR = f"admin:{ADMIN}"


async def admin_post(
    api: Api, path: str, body: dict[str, Any], key: str | None = None, method: str = "POST"
) -> httpx.Response:
    headers = {**api.auth(ADMIN, admin=True), "Idempotency-Key": key or str(uuid.uuid4())}
    return await api.client.request(method, path, json=body, headers=headers)


async def admin_get(api: Api, path: str, **params: Any) -> httpx.Response:
    return await api.client.get(path, params=params or None, headers=api.auth(ADMIN, admin=True))


async def count(api: Api, sql: str, *params: Any) -> int:
    async with api.pool.connection() as conn:
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def admin_records(api: Api) -> int:
    """Idempotency records of the admin: one per accepted request, none for a refused one."""
    return await count(api, "SELECT count(*) FROM idempotency_keys WHERE user_id = %s", ADMIN)


def new_plan_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "plan_id": f"plan-{uuid.uuid4().hex[:8]}",
        "name": "Family",
        "price": {"value": "499.00", "currency": "RUB"},
        "period_months": 1,
        "trial_days": 7,
        "reason": "launch of the family plan",
    }
    body.update(overrides)
    return body


async def create_plan(api: Api, **overrides: Any) -> str:
    body = new_plan_body(**overrides)
    resp = await admin_post(api, "/api/v1/admin/plans", body)
    assert resp.status_code == 201, resp.text
    plan_id: str = body["plan_id"]
    return plan_id


async def public_plans(api: Api) -> dict[str, dict[str, Any]]:
    return {p["plan_id"]: p for p in (await api.client.get("/api/v1/plans")).json()}


# ---------------------------------------------------------------------------- the catalogue
async def test_create_plan_is_on_sale_at_its_first_price_version(api: Api) -> None:
    body = new_plan_body()
    resp = await admin_post(api, "/api/v1/admin/plans", body, "create-1")
    assert resp.status_code == 201, resp.text
    plan = resp.json()
    assert (plan["plan_id"], plan["name"], plan["trial_days"], plan["archived"]) == (
        body["plan_id"],
        "Family",
        7,
        False,
    )
    assert plan["price"] == {"value": "499.00", "currency": "RUB"} and plan["price_version"] == 1
    [v1] = plan["prices"]
    assert (v1["version"], v1["created_by"], v1["reason"]) == (1, ACTOR, body["reason"])

    listed = {p["plan_id"]: p for p in (await admin_get(api, "/api/v1/admin/plans")).json()}
    assert listed[body["plan_id"]] == plan
    assert (await public_plans(api))[body["plan_id"]]["amount_minor"] == 49900

    user = new_user()
    bought = await api.pay(user, body={"plan_id": body["plan_id"], "return_url": RETURN_URL})
    assert bought.status_code == 202
    polled = await api.client.get(bought.json()["status_url"], headers=api.auth(user))
    assert polled.json()["amount"] == {"value": "499.00", "currency": "RUB"}

    replay = await admin_post(api, "/api/v1/admin/plans", body, "create-1")
    assert replay.status_code == 201 and replay.json() == plan
    assert replay.headers.get("idempotent-replayed") == "true"
    reused = await admin_post(api, "/api/v1/admin/plans", {**body, "name": "X"}, "create-1")
    assert reused.status_code == 422 and error_code(reused) == "idempotency_key_reused"
    taken = await admin_post(api, "/api/v1/admin/plans", {**body, "name": "Other"})
    assert taken.status_code == 409 and error_code(taken) == "plan_exists"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"reason": ""}, "validation_error"),
        ({"reason": "   "}, "validation_error"),
        ({"reason": None}, "validation_error"),
        ({"price": {"value": "0.00", "currency": "RUB"}}, "validation_error"),
        ({"price": {"value": "10.00", "currency": "XXX"}}, "validation_error"),
        ({"price": {"value": 10.0, "currency": "RUB"}}, "validation_error"),
        ({"price": {"value": "1.001", "currency": "RUB"}}, "validation_error"),
        ({"period_months": 0}, "validation_error"),
        ({"trial_days": -1}, "validation_error"),
        ({"plan_id": "-bad id"}, "validation_error"),
        ({"name": "\u0000"}, "validation_error"),
        ({"amount_minor": 1}, "validation_error"),
    ],
)
async def test_bad_plans_are_refused_and_nothing_is_written(
    api: Api, overrides: dict[str, Any], code: str
) -> None:
    body = new_plan_body(**overrides)
    if overrides.get("reason", "") is None:
        del body["reason"]
    before = await admin_records(api)
    resp = await admin_post(api, "/api/v1/admin/plans", body)
    assert resp.status_code == 422, resp.text
    assert error_code(resp) == code
    assert await count(api, "SELECT count(*) FROM plans WHERE plan_id = %s", body["plan_id"]) == 0
    assert await admin_records(api) == before


async def test_scheduled_price_shows_as_next_and_applies_only_from_its_date(api: Api) -> None:
    plan_id = await create_plan(api)
    when = datetime.now(UTC) + timedelta(days=3)
    body = {
        "price": {"value": "599.00", "currency": "RUB"},
        "effective_from": when.isoformat(),
        "reason": "new season",
    }
    resp = await admin_post(api, f"/api/v1/admin/plans/{plan_id}/prices", body, "price-1")
    assert resp.status_code == 201, resp.text
    plan = resp.json()
    assert plan["price_version"] == 1  # still the first one now
    v2 = plan["prices"][-1]
    assert (v2["version"], v2["amount_minor"], v2["created_by"], v2["reason"]) == (
        2,
        59900,
        ACTOR,
        "new season",
    )
    assert datetime.fromisoformat(v2["effective_from"]) == when

    nxt = (await public_plans(api))[plan_id]["next_price"]
    assert (nxt["amount_minor"], nxt["price_version"]) == (59900, 2)
    user = new_user()
    await api.pay(user, "before-the-change", {"plan_id": plan_id, "return_url": RETURN_URL})
    await api.settle()
    cmd = sent(api, command_id_for(user, "before-the-change"))
    assert isinstance(cmd, PaySubscription) and cmd.amount == Money(49900, "RUB")

    replay = await admin_post(api, f"/api/v1/admin/plans/{plan_id}/prices", body, "price-1")
    assert replay.status_code == 201 and replay.headers.get("idempotent-replayed") == "true"
    assert await count(api, "SELECT count(*) FROM plan_prices WHERE plan_id = %s", plan_id) == 2


async def test_a_price_from_now_is_charged_at_once(api: Api) -> None:
    plan_id = await create_plan(api)
    resp = await admin_post(
        api,
        f"/api/v1/admin/plans/{plan_id}/prices",
        {"price": {"value": "450.00", "currency": "RUB"}, "reason": "promo"},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["price"] == {"value": "450.00", "currency": "RUB"}
    assert resp.json()["price_version"] == 2
    assert (await public_plans(api))[plan_id]["amount_minor"] == 45000


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {
                "price": {"value": "1.00", "currency": "RUB"},
                "reason": "r",
                "effective_from": "2020-01-01T00:00:00Z",
            },
            422,
            "price_effective_in_past",
        ),
        (
            {
                "price": {"value": "1.00", "currency": "RUB"},
                "reason": "r",
                "effective_from": "2099-01-01T00:00:00",
            },
            422,
            "validation_error",
        ),
        ({"price": {"value": "1.00", "currency": "USD"}, "reason": "r"}, 422, "currency_mismatch"),
        ({"price": {"value": "0", "currency": "RUB"}, "reason": "r"}, 422, "validation_error"),
        ({"price": {"value": "1.00", "currency": "RUB"}}, 422, "validation_error"),
    ],
)
async def test_bad_prices_are_refused_and_nothing_is_written(
    api: Api, body: dict[str, Any], status: int, code: str
) -> None:
    plan_id = await create_plan(api)
    before = await admin_records(api)
    resp = await admin_post(api, f"/api/v1/admin/plans/{plan_id}/prices", body)
    assert resp.status_code == status, resp.text
    assert error_code(resp) == code
    assert await count(api, "SELECT count(*) FROM plan_prices WHERE plan_id = %s", plan_id) == 1
    assert await admin_records(api) == before


async def test_two_prices_at_the_same_instant_conflict_and_unknown_plans_are_404(api: Api) -> None:
    plan_id = await create_plan(api)
    body = {
        "price": {"value": "10.00", "currency": "RUB"},
        "effective_from": "2099-01-01T00:00:00Z",
        "reason": "r",
    }
    first = await admin_post(api, f"/api/v1/admin/plans/{plan_id}/prices", body)
    assert first.status_code == 201
    second = await admin_post(api, f"/api/v1/admin/plans/{plan_id}/prices", body)
    assert second.status_code == 409 and error_code(second) == "price_conflict"
    missing = await admin_post(api, "/api/v1/admin/plans/nope/prices", body)
    assert missing.status_code == 404 and error_code(missing) == "plan_not_found"


async def test_patch_renames_and_changes_trial_but_never_the_price(api: Api) -> None:
    plan_id = await create_plan(api)
    resp = await admin_post(
        api,
        f"/api/v1/admin/plans/{plan_id}",
        {"name": "Family+", "trial_days": 14, "reason": "rebrand"},
        method="PATCH",
    )
    assert resp.status_code == 200, resp.text
    assert (resp.json()["name"], resp.json()["trial_days"]) == ("Family+", 14)
    assert resp.json()["price"] == {"value": "499.00", "currency": "RUB"}
    nothing = await admin_post(
        api, f"/api/v1/admin/plans/{plan_id}", {"reason": "r"}, method="PATCH"
    )
    assert nothing.status_code == 422 and error_code(nothing) == "validation_error"
    price = await admin_post(
        api,
        f"/api/v1/admin/plans/{plan_id}",
        {"price": {"value": "1.00", "currency": "RUB"}, "reason": "r"},
        method="PATCH",
    )
    assert price.status_code == 422 and error_code(price) == "validation_error"
    missing = await admin_post(
        api, "/api/v1/admin/plans/nope", {"name": "x", "reason": "r"}, method="PATCH"
    )
    assert missing.status_code == 404 and error_code(missing) == "plan_not_found"


async def test_archived_plan_leaves_the_catalogue_but_subscribers_keep_it(
    api: Api, ledger: Ledger
) -> None:
    plan_id = await create_plan(api)
    subscriber = new_user()
    await ledger.subscribe(subscriber, plan_id)

    resp = await admin_post(api, f"/api/v1/admin/plans/{plan_id}/archive", {"reason": "sunset"})
    assert resp.status_code == 200 and resp.json()["archived"] is True
    again = await admin_post(api, f"/api/v1/admin/plans/{plan_id}/archive", {"reason": "sunset"})
    assert again.status_code == 200 and again.json() == resp.json()

    assert plan_id not in await public_plans(api)
    listed = {p["plan_id"]: p for p in (await admin_get(api, "/api/v1/admin/plans")).json()}
    assert listed[plan_id]["archived"] is True
    newcomer = new_user()
    refused = await api.pay(newcomer, body={"plan_id": plan_id, "return_url": RETURN_URL})
    assert refused.status_code == 422 and error_code(refused) == "plan_unavailable"

    me = (await api.client.get("/api/v1/subscriptions/me", headers=api.auth(subscriber))).json()
    assert me["plan"]["plan_id"] == plan_id and me["active"] is True
    assert me["plan_price"] == {"value": "499.00", "currency": "RUB"}
    # Its price can still change for those who keep it.
    later = await admin_post(
        api,
        f"/api/v1/admin/plans/{plan_id}/prices",
        {"price": {"value": "520.00", "currency": "RUB"}, "reason": "legacy uplift"},
    )
    assert later.status_code == 201
    missing = await admin_post(api, "/api/v1/admin/plans/nope/archive", {"reason": "r"})
    assert missing.status_code == 404 and error_code(missing) == "plan_not_found"


# ---------------------------------------------------------------------------- subscriptions
async def seed_subscription(api: Api, user: str, status: str, plan_id: str) -> str:
    sub = subscription_id_for(user)
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO subscriptions (subscription_id, user_id, status, plan_id, period_start,"
            " period_end, version, updated_at)"
            " VALUES (%s, %s, %s, %s, now(), now() + interval '20 days', 1, now())",
            (sub, user, status, plan_id),
        )
    return sub


async def test_subscriptions_are_filtered_and_paged_without_gaps_or_repeats(api: Api) -> None:
    plan_id = await create_plan(api)
    statuses = ["active", "active", "past_due", "active", "expired"]
    users = [new_user() for _ in statuses]
    subs = {
        await seed_subscription(api, u, s, plan_id) for u, s in zip(users, statuses, strict=True)
    }

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"plan_id": plan_id, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await admin_get(api, "/api/v1/admin/subscriptions", **params)).json()
        seen += [s["subscription_id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(subs) and len(seen) == len(subs)

    active = (
        await admin_get(api, "/api/v1/admin/subscriptions", plan_id=plan_id, status="active")
    ).json()
    assert len(active["items"]) == 3 and {s["status"] for s in active["items"]} == {"active"}
    one = (await admin_get(api, "/api/v1/admin/subscriptions", user_id=users[2])).json()
    [item] = one["items"]
    assert (item["user_id"], item["status"], item["plan"]["plan_id"]) == (
        users[2],
        "past_due",
        plan_id,
    )
    bad_cursor = await admin_get(api, "/api/v1/admin/subscriptions", cursor="bm9ufGJhZA")
    assert bad_cursor.status_code == 400 and error_code(bad_cursor) == "invalid_cursor"
    bad_status = await admin_get(api, "/api/v1/admin/subscriptions", status="gold")
    assert bad_status.status_code == 422 and error_code(bad_status) == "validation_error"


async def test_subscription_detail_has_payments_refunds_commands_and_the_audit_trail(
    api: Api, ledger: Ledger
) -> None:
    user = new_user()
    pid = await ledger.subscribe(user)
    sub = subscription_id_for(user)
    refund = await admin_post(
        api,
        f"/api/v1/admin/payments/{pid}/refunds",
        {"amount": {"value": "50.00", "currency": "RUB"}, "reason": "goodwill"},
    )
    assert refund.status_code == 202, refund.text
    await ledger.drain(user)
    await ledger.refund_outcome(user, refund.json()["refund_id"], "succeeded")

    detail = (await admin_get(api, f"/api/v1/admin/subscriptions/{sub}")).json()
    assert detail["subscription"]["user_id"] == user
    assert detail["subscription"]["status"] == "active"
    [payment] = detail["payments"]
    assert (payment["payment_id"], payment["kind"], payment["status"]) == (
        pid,
        "purchase",
        "succeeded",
    )
    assert payment["refunded"] == {"value": "50.00", "currency": "RUB"}
    [ref] = detail["refunds"]
    assert (ref["actor"], ref["reason"], ref["status"]) == (ACTOR, "goodwill", "succeeded")
    assert {c["command_type"] for c in detail["commands"]} == {"PaySubscription", "RefundPayment"}
    types = [e["event_type"] for e in detail["events"]]
    assert types == [
        "PaymentRequested",
        "PaymentSucceeded",
        "SubscriptionActivated",
        "RefundRequested",
        "RefundSucceeded",
    ]
    assert [e["version"] for e in detail["events"]] == [1, 2, 3, 4, 5]
    assert detail["events"][3]["body"]["request"]["actor"] == ACTOR
    assert detail["events_next_after"] is None

    page1 = (await admin_get(api, f"/api/v1/admin/subscriptions/{sub}", events_limit=2)).json()
    assert [e["version"] for e in page1["events"]] == [1, 2]
    page2 = (
        await admin_get(
            api,
            f"/api/v1/admin/subscriptions/{sub}",
            events_limit=2,
            events_after=page1["events_next_after"],
        )
    ).json()
    assert [e["version"] for e in page2["events"]] == [3, 4]

    missing = await admin_get(api, f"/api/v1/admin/subscriptions/{uuid.uuid4()}")
    assert missing.status_code == 404 and error_code(missing) == "subscription_not_found"
    bad = await admin_get(api, "/api/v1/admin/subscriptions/not-a-uuid")
    assert bad.status_code == 422 and error_code(bad) == "validation_error"


# --------------------------------------------------------------------------------- actions
def sent(api: Api, command_id: str) -> AnyCommand:
    [cmd] = [c for _, c in api.publisher.commands() if c.command_id == command_id]
    return cmd


async def command_status(api: Api, url: str) -> dict[str, Any]:
    resp = await admin_get(api, url)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_admin_refunds_any_users_payment_as_the_actor(api: Api, ledger: Ledger) -> None:
    user = new_user()
    pid = await ledger.subscribe(user)
    key = "admin-refund"
    resp = await admin_post(api, f"/api/v1/admin/payments/{pid}/refunds", {"reason": "outage"}, key)
    assert resp.status_code == 202, resp.text
    cid = command_id_for(ADMIN, key)
    rid = derived_id(cid, "refund")
    assert resp.json() == {
        "command_id": cid,
        "refund_id": rid,
        "payment_id": pid,
        "subscription_id": subscription_id_for(user),
        "status": "accepted",
        "status_url": f"/api/v1/admin/commands/{cid}",
    }
    await api.settle()
    cmd = sent(api, cid)
    assert isinstance(cmd, RefundPayment)
    assert (cmd.user_id, cmd.actor, cmd.reason, cmd.amount) == (user, ACTOR, "outage", None)
    # The command belongs to the subscription's user: they see their refund at once.
    status = await command_status(api, resp.json()["status_url"])
    assert (status["status"], status["user_id"], status["refund_id"]) == ("accepted", user, rid)
    theirs = await api.client.get(f"/api/v1/refunds/{rid}", headers=api.auth(user))
    assert theirs.status_code == 200 and theirs.json()["status"] == "accepted"

    await ledger.drain(user)
    await ledger.refund_outcome(user, rid, "succeeded")
    assert (await command_status(api, resp.json()["status_url"]))["status"] == "done"
    me = (await api.client.get("/api/v1/subscriptions/me", headers=api.auth(user))).json()
    assert me["status"] == "canceled"  # a full refund of the current period ends access


async def test_admin_refund_refusals_write_nothing(api: Api, ledger: Ledger) -> None:
    user = new_user()
    pid = await ledger.subscribe(user)
    before = await admin_records(api)
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        (
            f"/api/v1/admin/payments/{uuid.uuid4()}/refunds",
            {"reason": "r"},
            404,
            "payment_not_found",
        ),
        (f"/api/v1/admin/payments/{pid}/refunds", {}, 422, "validation_error"),
        (
            f"/api/v1/admin/payments/{pid}/refunds",
            {"reason": "r", "amount": {"value": "1.00", "currency": "USD"}},
            422,
            "refund_invalid",
        ),
        (
            f"/api/v1/admin/payments/{pid}/refunds",
            {"reason": "r", "amount": {"value": "0.00", "currency": "RUB"}},
            422,
            "validation_error",
        ),
    ]
    for path, body, status, code in cases:
        resp = await admin_post(api, path, body)
        assert (resp.status_code, error_code(resp)) == (status, code), resp.text
    assert await admin_records(api) == before
    assert (
        await count(
            api,
            "SELECT count(*) FROM command_outbox WHERE command_type = 'RefundPayment'"
            " AND user_id = %s",
            user,
        )
        == 0
    )


async def test_extend_adds_days_through_the_ledger_with_actor_and_reason(
    api: Api, ledger: Ledger
) -> None:
    user = new_user()
    await ledger.subscribe(user)
    sub = subscription_id_for(user)
    end_before = datetime.fromisoformat(
        (await api.client.get("/api/v1/subscriptions/me", headers=api.auth(user))).json()[
            "period_end"
        ]
    )
    resp = await admin_post(
        api, f"/api/v1/admin/subscriptions/{sub}/extend", {"days": 5, "reason": "outage"}, "ext"
    )
    assert resp.status_code == 202, resp.text
    cid = command_id_for(ADMIN, "ext")
    assert resp.json() == {
        "command_id": cid,
        "subscription_id": sub,
        "action": "extend",
        "status": "accepted",
        "status_url": f"/api/v1/admin/commands/{cid}",
    }
    await api.settle()
    cmd = sent(api, cid)
    assert isinstance(cmd, AdminAdjust)
    assert (cmd.action, cmd.actor, cmd.reason, cmd.days, cmd.user_id) == (
        "extend",
        ACTOR,
        "outage",
        5,
        user,
    )
    await ledger.drain(user)
    assert (await command_status(api, resp.json()["status_url"]))["status"] == "done"
    me = (await api.client.get("/api/v1/subscriptions/me", headers=api.auth(user))).json()
    assert datetime.fromisoformat(me["period_end"]) == end_before + timedelta(days=5)
    assert me["status_reason"] == f"extend by {ACTOR}: outage"
    detail = (await admin_get(api, f"/api/v1/admin/subscriptions/{sub}")).json()
    last = detail["events"][-1]
    assert (last["event_type"], last["body"]["actor"], last["body"]["reason"]) == (
        "PeriodAdjusted",
        ACTOR,
        "outage",
    )


async def test_grant_gives_one_period_of_the_plan(api: Api, ledger: Ledger) -> None:
    quarterly = await create_plan(api, period_months=3)
    user = new_user()
    await ledger.subscribe(user)
    sub = subscription_id_for(user)
    resp = await admin_post(
        api, f"/api/v1/admin/subscriptions/{sub}/grant", {"plan_id": quarterly, "reason": "prize"}
    )
    assert resp.status_code == 202, resp.text
    await api.settle()
    cmd = sent(api, resp.json()["command_id"])
    assert isinstance(cmd, AdminAdjust)
    assert (cmd.action, cmd.plan_id, cmd.period_months, cmd.actor) == (
        "grant",
        quarterly,
        3,
        ACTOR,
    )
    await ledger.drain(user)
    assert (await command_status(api, resp.json()["status_url"]))["status"] == "done"
    me = (await api.client.get("/api/v1/subscriptions/me", headers=api.auth(user))).json()
    assert me["plan"]["plan_id"] == quarterly


async def test_cancel_ends_access_and_a_second_cancel_is_refused_by_the_ledger(
    api: Api, ledger: Ledger
) -> None:
    user = new_user()
    await ledger.subscribe(user)
    sub = subscription_id_for(user)
    first = await admin_post(api, f"/api/v1/admin/subscriptions/{sub}/cancel", {"reason": "fraud"})
    assert first.status_code == 202
    await ledger.drain(user)
    assert (await command_status(api, first.json()["status_url"]))["status"] == "done"
    me = (await api.client.get("/api/v1/subscriptions/me", headers=api.auth(user))).json()
    assert (me["status"], me["active"]) == ("canceled", False)

    second = await admin_post(api, f"/api/v1/admin/subscriptions/{sub}/cancel", {"reason": "again"})
    assert second.status_code == 202
    await ledger.drain(user)
    status = await command_status(api, second.json()["status_url"])
    assert (status["status"], status["status_reason"]) == ("rejected", "subscription is canceled")


async def test_admin_auto_renew_records_actor_and_reason(api: Api, ledger: Ledger) -> None:
    user = new_user()
    await ledger.subscribe(user)
    sub = subscription_id_for(user)
    resp = await admin_post(
        api,
        f"/api/v1/admin/subscriptions/{sub}/auto-renew",
        {"enabled": False, "reason": "user asked by phone"},
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["action"] == "auto_renew_off"
    await api.settle()
    cmd = sent(api, resp.json()["command_id"])
    assert isinstance(cmd, SetAutoRenew)
    assert (cmd.enabled, cmd.actor, cmd.reason, cmd.user_id) == (
        False,
        ACTOR,
        "user asked by phone",
        user,
    )
    await ledger.drain(user)
    me = (await api.client.get("/api/v1/subscriptions/me", headers=api.auth(user))).json()
    assert me["auto_renew"] is False and me["next_charge_at"] is None


async def test_actions_on_unknown_subscriptions_or_plans_and_bad_bodies_write_nothing(
    api: Api, ledger: Ledger
) -> None:
    user = new_user()
    await ledger.subscribe(user)
    sub = subscription_id_for(user)
    ghost = str(uuid.uuid4())
    retired = await create_plan(api)
    await admin_post(api, f"/api/v1/admin/plans/{retired}/archive", {"reason": "r"})
    before = await admin_records(api)
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        (
            f"/api/v1/admin/subscriptions/{ghost}/cancel",
            {"reason": "r"},
            404,
            "subscription_not_found",
        ),
        (
            f"/api/v1/admin/subscriptions/{ghost}/extend",
            {"days": 1, "reason": "r"},
            404,
            "subscription_not_found",
        ),
        (
            f"/api/v1/admin/subscriptions/{ghost}/auto-renew",
            {"enabled": True, "reason": "r"},
            404,
            "subscription_not_found",
        ),
        (
            f"/api/v1/admin/subscriptions/{sub}/grant",
            {"plan_id": "nope", "reason": "r"},
            404,
            "plan_not_found",
        ),
        (
            f"/api/v1/admin/subscriptions/{sub}/grant",
            {"plan_id": retired, "reason": "r"},
            422,
            "plan_unavailable",
        ),
        (
            f"/api/v1/admin/subscriptions/{sub}/extend",
            {"days": 0, "reason": "r"},
            422,
            "validation_error",
        ),
        (
            f"/api/v1/admin/subscriptions/{sub}/extend",
            {"days": "5", "reason": "r"},
            422,
            "validation_error",
        ),
        (f"/api/v1/admin/subscriptions/{sub}/cancel", {}, 422, "validation_error"),
        (
            f"/api/v1/admin/subscriptions/{sub}/auto-renew",
            {"enabled": False},
            422,
            "validation_error",
        ),
        ("/api/v1/admin/subscriptions/not-a-uuid/cancel", {"reason": "r"}, 422, "validation_error"),
    ]
    for path, body, status, code in cases:
        resp = await admin_post(api, path, body)
        assert (resp.status_code, error_code(resp)) == (status, code), (path, body, resp.text)
    assert await admin_records(api) == before
    assert (
        await count(
            api,
            "SELECT count(*) FROM command_outbox WHERE command_type IN ('AdminAdjust',"
            " 'SetAutoRenew') AND user_id = %s",
            user,
        )
        == 0
    )

    no_key = await api.client.post(
        f"/api/v1/admin/subscriptions/{sub}/cancel",
        json={"reason": "r"},
        headers=api.auth(ADMIN, admin=True),
    )
    assert no_key.status_code == 400 and error_code(no_key) == "idempotency_key_missing"


async def test_unknown_command_is_404(api: Api) -> None:
    resp = await admin_get(api, f"/api/v1/admin/commands/{uuid.uuid4()}")
    assert resp.status_code == 404 and error_code(resp) == "command_not_found"


@pytest.mark.parametrize(
    ("path", "outcome", "reason"),
    [("capture", "succeeded", "payment succeeded"), ("release", "canceled", "payment canceled")],
)
async def test_a_capture_or_release_closes_its_command_and_the_relay_leaves_it(
    module_pg_dsn: str, path: str, outcome: str, reason: str
) -> None:
    """Issue 11 §3: the projection ignored PaymentSettleRequested for the outbox, so the relay
    republished an admin's capture every few minutes (each time another capture call)."""
    async with running_api(module_pg_dsn, two_stage_payments=True) as api:
        ledger = Ledger(api, Policy(capture_delay_ms=None))  # held until an admin decides
        user = new_user()
        resp = await api.pay(user)
        pid = resp.json()["payment_id"]
        await ledger.drain(user)
        await ledger.observe(user, pid, "waiting_for_capture")

        settle = await admin_post(
            api, f"/api/v1/admin/payments/{pid}/{path}", {"reason": "checked by phone"}
        )
        assert settle.status_code == 202, settle.text
        cid, url = settle.json()["command_id"], settle.json()["status_url"]
        await ledger.drain(user)  # the ledger asks the provider: PaymentSettleRequested
        status = await command_status(api, url)
        assert status["status"] == "processing"
        action = "cancel" if path == "release" else "capture"
        assert status["status_reason"] == f"{action} requested by {ACTOR} (attempt 1)"

        async def republished() -> int:
            async with api.pool.connection() as conn:
                await conn.execute(
                    "UPDATE command_outbox SET next_publish_at = now() - interval '1 hour'"
                    " WHERE command_id = %s",
                    (cid,),
                )
            await relay_once(api.pool, api.publisher, api.settings)
            return len([c for _, c in api.publisher.commands() if c.command_id == cid]) - 1

        assert await republished() == 0  # long overdue, but the ledger has it

        await ledger.observe(user, pid, outcome)
        status = await command_status(api, url)
        assert status["status"] == "done" and status["status_reason"].startswith(reason)
        assert await republished() == 0
