"""The user's side of the subscription lifecycle against the real PostgreSQL: prices only from
the catalogue's version in force, retrying a canceled payment, changing plan, history filters,
the refunds list, and the next charge. Where the outcome is the ledger's call, the published
command goes through the pure ledger and the real projection (``Ledger``), and the test reads
what the client would poll."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing import clock
from schemas.ids import command_id_for, payment_id_for, subscription_id_for
from schemas.messages import (
    AnyCommand,
    ChangePlan,
    PaymentRequested,
    PaySubscription,
    PlanChangeScheduled,
    RetryPayment,
)
from schemas.money import Money
from tests.integration.api_support import (
    RETURN_URL,
    Api,
    Ledger,
    error_code,
    new_user,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------- helpers
async def make_plan(
    api: Api,
    prices: list[tuple[timedelta | None, int]],
    *,
    months: int = 1,
    archived: bool = False,
    reference_minor: int = 1,
) -> str:
    """A plan of its own with price versions ``(offset from now or None = since always,
    amount)``; the plans row holds a deliberately different reference amount."""
    plan_id = f"p-{uuid.uuid4().hex[:10]}"
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO plans (plan_id, name, amount_minor, currency, period_months, archived)"
            " VALUES (%s, %s, %s, 'RUB', %s, %s)",
            (plan_id, f"Plan {plan_id}", reference_minor, months, archived),
        )
        for version, (offset, amount) in enumerate(prices, 1):
            await conn.execute(
                "INSERT INTO plan_prices (plan_id, version, effective_from, amount_minor,"
                " currency) VALUES (%s, %s, CASE WHEN %s::float8 IS NULL THEN '-infinity'"
                " ELSE now() + make_interval(secs => %s::float8) END, %s, 'RUB')",
                (
                    plan_id,
                    version,
                    None if offset is None else offset.total_seconds(),
                    None if offset is None else offset.total_seconds(),
                    amount,
                ),
            )
    return plan_id


async def add_price(api: Api, plan_id: str, offset: timedelta, amount: int) -> int:
    async with api.pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO plan_prices (plan_id, version, effective_from, amount_minor, currency)"
            " SELECT %s, max(version) + 1, now() + make_interval(secs => %s), %s, 'RUB'"
            " FROM plan_prices WHERE plan_id = %s RETURNING version",
            (plan_id, offset.total_seconds(), amount, plan_id),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def archive(api: Api, plan_id: str) -> None:
    async with api.pool.connection() as conn:
        await conn.execute("UPDATE plans SET archived = true WHERE plan_id = %s", (plan_id,))


async def written(api: Api, user: str) -> tuple[int, int]:
    """(outbox rows, idempotency records) of a user: both 0 after a refused request."""
    async with api.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM command_outbox WHERE user_id = %s),"
            " (SELECT count(*) FROM idempotency_keys WHERE user_id = %s)",
            (user, user),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def published(api: Api, user: str) -> list[AnyCommand]:
    sub = subscription_id_for(user)
    return [cmd for _, cmd in api.publisher.commands() if cmd.subscription_id == sub]


async def post(api: Api, user: str, path: str, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {**api.auth(user), "Idempotency-Key": key or str(uuid.uuid4())}
    return await api.client.post(path, json=body, headers=headers)


async def get(api: Api, user: str, path: str, **params: Any) -> Any:
    return await api.client.get(path, params=params or None, headers=api.auth(user))


async def payment_row(api: Api, payment_id: str) -> dict[str, Any]:
    async with api.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT kind, amount_minor, price_version, status, plan_id FROM payments"
            " WHERE payment_id = %s",
            (payment_id,),
        )
        row = await cur.fetchone()
    assert row is not None, payment_id
    return dict(
        zip(("kind", "amount_minor", "price_version", "status", "plan_id"), row, strict=True)
    )


# --------------------------------------------------------------------- prices from the server
async def test_purchase_charges_the_version_in_force_now_not_the_reference_or_a_scheduled_one(
    api: Api,
) -> None:
    plan = await make_plan(
        api,
        [(None, 10000), (timedelta(hours=-1), 12000), (timedelta(days=10), 15000)],
        reference_minor=9900,
    )
    user = new_user()
    resp = await api.pay(user, body={"plan_id": plan, "return_url": RETURN_URL})
    assert resp.status_code == 202, resp.text
    await api.settle()
    [cmd] = published(api, user)
    assert isinstance(cmd, PaySubscription)
    assert (cmd.plan_id, cmd.amount, cmd.period_months) == (plan, Money(12000, "RUB"), 1)
    polled = await get(api, user, resp.json()["status_url"])
    assert polled.json()["amount"] == {"value": "120.00", "currency": "RUB"}


async def test_a_plan_with_no_price_in_force_yet_is_not_for_sale(api: Api) -> None:
    plan = await make_plan(api, [(timedelta(days=1), 5000)])
    user = new_user()
    resp = await api.pay(user, body={"plan_id": plan, "return_url": RETURN_URL})
    assert resp.status_code == 422 and error_code(resp) == "plan_unavailable"
    assert await written(api, user) == (0, 0)
    listed = {p["plan_id"] for p in (await api.client.get("/api/v1/plans")).json()}
    assert plan not in listed


async def test_catalogue_shows_the_price_now_and_the_next_scheduled_one(api: Api) -> None:
    plan = await make_plan(
        api, [(None, 10000), (timedelta(days=5), 15000), (timedelta(days=9), 17000)]
    )
    steady = await make_plan(api, [(None, 20000)])
    gone = await make_plan(api, [(None, 20000)], archived=True)
    plans = {p["plan_id"]: p for p in (await api.client.get("/api/v1/plans")).json()}
    got = plans[plan]
    assert got["price"] == {"value": "100.00", "currency": "RUB"}
    assert (got["amount_minor"], got["price_version"]) == (10000, 1)
    nxt = got["next_price"]
    assert nxt["price"] == {"value": "150.00", "currency": "RUB"}
    assert (nxt["amount_minor"], nxt["price_version"]) == (15000, 2)
    due = datetime.fromisoformat(nxt["effective_from"]) - datetime.now(UTC)
    assert timedelta(days=4, hours=23) < due <= timedelta(days=5)
    assert plans[steady]["next_price"] is None
    assert gone not in plans


# ------------------------------------------------------------------------------------ retry
async def canceled_payment(api: Api, ledger: Ledger, user: str, plan: str) -> str:
    resp = await api.pay(user, body={"plan_id": plan, "return_url": RETURN_URL})
    assert resp.status_code == 202, resp.text
    pid: str = resp.json()["payment_id"]
    await ledger.drain(user)
    await ledger.observe(user, pid, "canceled", reason="insufficient_funds")
    return pid


async def test_retry_charges_the_price_in_force_now_under_a_new_derived_payment_id(
    api: Api, ledger: Ledger
) -> None:
    plan = await make_plan(api, [(None, 10000)])
    user = new_user()
    failed = await canceled_payment(api, ledger, user, plan)
    version = await add_price(api, plan, timedelta(seconds=-1), 11000)

    key = "retry-1"
    resp = await post(
        api, user, f"/api/v1/payments/{failed}/retry", {"return_url": RETURN_URL}, key
    )
    assert resp.status_code == 202, resp.text
    new_pid = payment_id_for(command_id_for(user, key))
    assert resp.json() == {
        "payment_id": new_pid,
        "subscription_id": subscription_id_for(user),
        "retry_of": failed,
        "status": "accepted",
        "status_url": f"/api/v1/payments/{new_pid}",
    }
    assert resp.headers["location"] == f"/api/v1/payments/{new_pid}"
    accepted = await get(api, user, f"/api/v1/payments/{new_pid}")
    assert accepted.json()["status"] == "accepted"
    assert accepted.json()["amount"] == {"value": "110.00", "currency": "RUB"}

    await api.settle()
    retry = published(api, user)[-1]
    assert isinstance(retry, RetryPayment)
    assert (retry.retry_of, retry.payment_id) == (failed, new_pid)
    assert (retry.price.amount, retry.price.price_version) == (Money(11000, "RUB"), version)

    events = await ledger.drain(user)
    assert [type(e) for e in events] == [PaymentRequested]
    row = await payment_row(api, new_pid)
    assert (row["kind"], row["amount_minor"], row["price_version"]) == ("retry", 11000, version)
    assert (await get(api, user, f"/api/v1/payments/{new_pid}")).json()["status"] == "requested"


async def test_retry_is_idempotent_per_key(api: Api, ledger: Ledger) -> None:
    plan = await make_plan(api, [(None, 10000)])
    user = new_user()
    failed = await canceled_payment(api, ledger, user, plan)
    path = f"/api/v1/payments/{failed}/retry"
    first = await post(api, user, path, {"return_url": RETURN_URL}, "same")
    again = await post(api, user, path, {"return_url": RETURN_URL}, "same")
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    other_body = await post(api, user, path, {"return_url": RETURN_URL + "/x"}, "same")
    assert other_body.status_code == 422 and error_code(other_body) == "idempotency_key_reused"
    await api.settle()
    assert sum(isinstance(c, RetryPayment) for c in published(api, user)) == 1


async def test_ledger_refuses_a_retry_of_a_succeeded_payment_or_a_period_paid_meanwhile(
    api: Api, ledger: Ledger
) -> None:
    plan = await make_plan(api, [(None, 10000)])
    user = new_user()
    failed = await canceled_payment(api, ledger, user, plan)
    paid = await ledger.subscribe(user, plan)

    not_retryable = await post(
        api, user, f"/api/v1/payments/{paid}/retry", {"return_url": RETURN_URL}
    )
    already_paid = await post(
        api, user, f"/api/v1/payments/{failed}/retry", {"return_url": RETURN_URL}
    )
    assert not_retryable.status_code == 202 and already_paid.status_code == 202
    await ledger.drain(user)
    first = (await get(api, user, not_retryable.json()["status_url"])).json()
    second = (await get(api, user, already_paid.json()["status_url"])).json()
    assert first["status"] == "rejected"
    assert first["status_reason"].startswith("payment_not_retryable")
    assert second["status"] == "rejected"
    assert second["status_reason"].startswith("period_already_paid")


async def test_retry_of_someone_elses_or_an_unknown_payment_is_404_and_writes_nothing(
    api: Api, ledger: Ledger
) -> None:
    plan = await make_plan(api, [(None, 10000)])
    owner, intruder = new_user(), new_user()
    failed = await canceled_payment(api, ledger, owner, plan)
    for pid in (failed, str(uuid.uuid4())):
        resp = await post(
            api, intruder, f"/api/v1/payments/{pid}/retry", {"return_url": RETURN_URL}
        )
        assert resp.status_code == 404 and error_code(resp) == "payment_not_found"
    assert await written(api, intruder) == (0, 0)


async def test_retry_of_a_payment_the_ledger_never_started_is_422(api: Api) -> None:
    user = new_user()
    accepted = await api.pay(user)  # only in the outbox: no payment was ever requested
    resp = await post(
        api,
        user,
        f"/api/v1/payments/{accepted.json()['payment_id']}/retry",
        {"return_url": RETURN_URL},
    )
    assert resp.status_code == 422 and error_code(resp) == "payment_not_retryable"
    assert await written(api, user) == (1, 1)  # the purchase only


async def test_retry_keeps_an_archived_plan_only_for_a_subscription_on_it(
    api: Api, ledger: Ledger
) -> None:
    plan = await make_plan(api, [(None, 10000)])
    subscriber, newcomer = new_user(), new_user()
    await ledger.subscribe(subscriber, plan)
    stacked = await canceled_payment(api, ledger, subscriber, plan)
    lost = await canceled_payment(api, ledger, newcomer, plan)
    await archive(api, plan)

    kept = await post(
        api, subscriber, f"/api/v1/payments/{stacked}/retry", {"return_url": RETURN_URL}
    )
    assert kept.status_code == 202, kept.text
    refused = await post(
        api, newcomer, f"/api/v1/payments/{lost}/retry", {"return_url": RETURN_URL}
    )
    assert refused.status_code == 422 and error_code(refused) == "plan_unavailable"
    assert await written(api, newcomer) == (1, 1)  # the first purchase only


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "validation_error"),
        ({"return_url": "ftp://x"}, "validation_error"),
        (
            {"return_url": RETURN_URL, "amount": {"value": "1.00", "currency": "RUB"}},
            "validation_error",
        ),
    ],
)
async def test_retry_body_is_validated(api: Api, body: dict[str, Any], code: str) -> None:
    user = new_user()
    resp = await post(api, user, f"/api/v1/payments/{uuid.uuid4()}/retry", body)
    assert resp.status_code == 422 and error_code(resp) == code
    assert await written(api, user) == (0, 0)


# ------------------------------------------------------------------------------ plan change
async def test_upgrade_is_charged_now_less_the_unused_part(api: Api, ledger: Ledger) -> None:
    cheap = await make_plan(api, [(None, 10000)])
    dear = await make_plan(api, [(None, 30000)])
    user = new_user()
    await ledger.subscribe(user, cheap)

    key = "upgrade"
    resp = await post(
        api, user, "/api/v1/subscriptions/me/plan", {"plan_id": dear, "return_url": RETURN_URL}, key
    )
    assert resp.status_code == 202, resp.text
    pid = payment_id_for(command_id_for(user, key))
    assert resp.json() == {
        "payment_id": pid,
        "subscription_id": subscription_id_for(user),
        "plan_id": dear,
        "status": "accepted",
        "status_url": f"/api/v1/payments/{pid}",
    }
    polled = (await get(api, user, f"/api/v1/payments/{pid}")).json()
    assert (polled["status"], polled["plan_id"], polled["amount"]) == ("accepted", dear, None)

    await api.settle()
    change = published(api, user)[-1]
    assert isinstance(change, ChangePlan)
    assert (change.payment_id, change.price.plan_id) == (pid, dear)
    assert (change.price.amount, change.price.price_version) == (Money(30000, "RUB"), 1)

    await ledger.drain(user)
    row = await payment_row(api, pid)
    assert row["kind"] == "upgrade" and row["plan_id"] == dear
    assert 30000 - 10000 <= row["amount_minor"] < 30000  # the unused month is credited


async def test_downgrade_is_scheduled_for_the_period_end(api: Api, ledger: Ledger) -> None:
    dear = await make_plan(api, [(None, 30000)])
    cheap = await make_plan(api, [(None, 10000)])
    user = new_user()
    await ledger.subscribe(user, dear)
    resp = await post(
        api, user, "/api/v1/subscriptions/me/plan", {"plan_id": cheap, "return_url": RETURN_URL}
    )
    assert resp.status_code == 202
    events = await ledger.drain(user)
    assert [type(e) for e in events] == [PlanChangeScheduled]

    polled = (await get(api, user, resp.json()["status_url"])).json()
    assert polled["status"] == "done"
    assert polled["status_reason"] == f"plan change to {cheap} at period end"
    me = (await get(api, user, "/api/v1/subscriptions/me")).json()
    assert me["plan"]["plan_id"] == dear and me["next_plan_id"] == cheap
    assert me["plan_price"] == {"value": "300.00", "currency": "RUB"}
    assert me["next_charge_amount"] == {"value": "100.00", "currency": "RUB"}


async def test_ledger_refuses_a_change_to_the_same_plan(api: Api, ledger: Ledger) -> None:
    plan = await make_plan(api, [(None, 10000)])
    user = new_user()
    await ledger.subscribe(user, plan)
    resp = await post(
        api, user, "/api/v1/subscriptions/me/plan", {"plan_id": plan, "return_url": RETURN_URL}
    )
    assert resp.status_code == 202
    await ledger.drain(user)
    polled = (await get(api, user, resp.json()["status_url"])).json()
    assert (polled["status"], polled["status_reason"]) == ("rejected", "same_plan")


async def test_plan_change_refusals_at_intake_write_nothing(api: Api, ledger: Ledger) -> None:
    plan = await make_plan(api, [(None, 10000)])
    retired = await make_plan(api, [(None, 5000)], archived=True)
    nobody = new_user()
    none_yet = await post(
        api, nobody, "/api/v1/subscriptions/me/plan", {"plan_id": plan, "return_url": RETURN_URL}
    )
    assert none_yet.status_code == 404 and error_code(none_yet) == "subscription_not_found"
    assert await written(api, nobody) == (0, 0)

    user = new_user()
    await ledger.subscribe(user, plan)
    before = await written(api, user)
    unknown = await post(
        api,
        user,
        "/api/v1/subscriptions/me/plan",
        {"plan_id": "no-such-plan", "return_url": RETURN_URL},
    )
    assert unknown.status_code == 404 and error_code(unknown) == "plan_not_found"
    off_sale = await post(
        api, user, "/api/v1/subscriptions/me/plan", {"plan_id": retired, "return_url": RETURN_URL}
    )
    assert off_sale.status_code == 422 and error_code(off_sale) == "plan_unavailable"
    bad = await post(api, user, "/api/v1/subscriptions/me/plan", {"plan_id": plan})
    assert bad.status_code == 422 and error_code(bad) == "validation_error"
    no_key = await api.client.post(
        "/api/v1/subscriptions/me/plan",
        json={"plan_id": plan, "return_url": RETURN_URL},
        headers=api.auth(user),
    )
    assert no_key.status_code == 400 and error_code(no_key) == "idempotency_key_missing"
    assert await written(api, user) == before


# ---------------------------------------------------------------------------- history reads
async def seed_payment(api: Api, user: str, created_at: datetime, status: str = "succeeded") -> str:
    pid = str(uuid.uuid4())
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO payments (payment_id, subscription_id, user_id, command_id, plan_id,"
            " amount_minor, currency, status, created_at, updated_at, version)"
            " VALUES (%s, %s, %s, gen_random_uuid(), 'monthly', 29900, 'RUB', %s, %s, %s, 1)",
            (pid, subscription_id_for(user), user, status, created_at, created_at),
        )
    return pid


async def test_payment_history_filters_by_creation_time_across_pages(api: Api) -> None:
    user = new_user()
    ids = [
        await seed_payment(
            api, user, T0 + timedelta(hours=i), "canceled" if i == 3 else "succeeded"
        )
        for i in range(6)
    ]
    window = {
        "created_from": (T0 + timedelta(hours=1)).isoformat(),
        "created_to": (T0 + timedelta(hours=5)).isoformat(),
    }
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {**window, "limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = (await get(api, user, "/api/v1/payments", **params)).json()
        seen += [p["payment_id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [ids[4], ids[3], ids[2], ids[1]]  # from inclusive, to exclusive
    succeeded = await get(api, user, "/api/v1/payments", status="succeeded", **window)
    assert [p["payment_id"] for p in succeeded.json()["items"]] == [ids[4], ids[2], ids[1]]
    since = await get(api, user, "/api/v1/payments", created_from="2026-01-01T04:00:00Z")
    assert [p["payment_id"] for p in since.json()["items"]] == [ids[5], ids[4]]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        (
            {"created_from": "2026-01-02T00:00:00Z", "created_to": "2026-01-01T00:00:00Z"},
            "invalid_range",
        ),
        ({"created_from": "2026-01-01T00:00:00"}, "validation_error"),  # no zone
        ({"created_to": "yesterday"}, "validation_error"),
    ],
)
async def test_bad_history_filters_are_422(api: Api, params: dict[str, str], code: str) -> None:
    resp = await get(api, new_user(), "/api/v1/payments", **params)
    assert resp.status_code == 422 and error_code(resp) == code


async def seed_refund(
    api: Api, user: str, payment_id: str, created_at: datetime, status: str = "succeeded"
) -> str:
    rid = str(uuid.uuid4())
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO refunds (refund_id, payment_id, subscription_id, user_id, command_id,"
            " amount_minor, currency, status, reason, actor, created_at, updated_at, version)"
            " VALUES (%s, %s, %s, %s, gen_random_uuid(), 1000, 'RUB', %s, 'r', 'user', %s, %s,"
            " 1)",
            (rid, payment_id, subscription_id_for(user), user, status, created_at, created_at),
        )
    return rid


async def test_refunds_list_is_yours_newest_first_paginated_and_filtered(api: Api) -> None:
    user, other = new_user(), new_user()
    pid = await seed_payment(api, user, T0)
    ids = [
        await seed_refund(
            api, user, pid, T0 + timedelta(hours=i), "canceled" if i == 1 else "succeeded"
        )
        for i in range(3)
    ]
    await seed_refund(api, other, await seed_payment(api, other, T0), T0)

    first = (await get(api, user, "/api/v1/refunds", limit=2)).json()
    assert [r["refund_id"] for r in first["items"]] == [ids[2], ids[1]]
    rest = (await get(api, user, "/api/v1/refunds", limit=2, cursor=first["next_cursor"])).json()
    assert [r["refund_id"] for r in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    canceled = (await get(api, user, "/api/v1/refunds", status="canceled")).json()
    assert [r["refund_id"] for r in canceled["items"]] == [ids[1]]
    assert first["items"][0]["amount"] == {"value": "10.00", "currency": "RUB"}

    bad_cursor = await get(api, user, "/api/v1/refunds", cursor="Zm9vfGJhcg")
    assert bad_cursor.status_code == 400 and error_code(bad_cursor) == "invalid_cursor"
    bad_status = await get(api, user, "/api/v1/refunds", status="paid")
    assert bad_status.status_code == 422 and error_code(bad_status) == "validation_error"
    # Someone else's payment: its refunds are as invisible as the payment.
    theirs = await get(api, other, f"/api/v1/payments/{pid}/refunds")
    assert theirs.status_code == 404 and error_code(theirs) == "payment_not_found"
    mine = await get(api, user, f"/api/v1/payments/{pid}/refunds")
    assert [r["refund_id"] for r in mine.json()] == ids


# ------------------------------------------------------------------------------ next charge
async def seed_subscription(
    api: Api,
    user: str,
    plan_id: str,
    *,
    status: str = "active",
    end_in: timedelta = timedelta(days=10),
    auto_renew: bool = True,
    next_retry_in: timedelta | None = None,
    next_plan_id: str | None = None,
) -> datetime:
    now = datetime.now(UTC)
    end = now + end_in
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO subscriptions (subscription_id, user_id, status, plan_id, period_start,"
            " period_end, version, updated_at, auto_renew, next_retry_at, next_plan_id,"
            " payment_method_saved) VALUES (%s, %s, %s, %s, %s, %s, 1, now(), %s, %s, %s, true)",
            (
                subscription_id_for(user),
                user,
                status,
                plan_id,
                end - timedelta(days=30),
                end,
                auto_renew,
                now + next_retry_in if next_retry_in is not None else None,
                next_plan_id,
            ),
        )
    return end


async def test_next_charge_is_the_renewal_lead_before_the_end_at_the_price_then(
    api: Api,
) -> None:
    # The price changes between now and the period end: the renewal pays the later one.
    plan = await make_plan(api, [(None, 10000), (timedelta(days=5), 12500)])
    user = new_user()
    end = await seed_subscription(api, user, plan, end_in=timedelta(days=10))
    me = (await get(api, user, "/api/v1/subscriptions/me")).json()
    lead = timedelta(seconds=api.settings.renew_lead_s)
    assert datetime.fromisoformat(me["next_charge_at"]) == end - lead
    assert me["next_charge_amount"] == {"value": "125.00", "currency": "RUB"}
    assert me["plan_price"] == {"value": "100.00", "currency": "RUB"}
    assert me["next_plan_id"] is None


async def test_next_charge_follows_a_scheduled_downgrade_and_a_dunning_retry(api: Api) -> None:
    dear = await make_plan(api, [(None, 30000)])
    cheap = await make_plan(api, [(None, 10000)])
    user = new_user()
    await seed_subscription(
        api,
        user,
        dear,
        status="past_due",
        end_in=timedelta(days=-1),
        next_retry_in=timedelta(days=2),
        next_plan_id=cheap,
    )
    me = (await get(api, user, "/api/v1/subscriptions/me")).json()
    retry_at = datetime.fromisoformat(me["next_charge_at"]) - datetime.now(UTC)
    assert timedelta(days=1, hours=23) < retry_at <= timedelta(days=2)
    assert me["next_plan_id"] == cheap
    assert me["next_charge_amount"] == {"value": "100.00", "currency": "RUB"}


@pytest.mark.parametrize(
    ("status", "auto_renew"), [("active", False), ("expired", True), ("canceled", True)]
)
async def test_no_next_charge_without_auto_renew_or_once_over(
    api: Api, status: str, auto_renew: bool
) -> None:
    plan = await make_plan(api, [(None, 10000)])
    user = new_user()
    await seed_subscription(api, user, plan, status=status, auto_renew=auto_renew)
    me = (await get(api, user, "/api/v1/subscriptions/me")).json()
    assert (me["next_charge_at"], me["next_charge_amount"]) == (None, None)
    assert me["plan_price"] == {"value": "100.00", "currency": "RUB"}


async def test_prices_follow_the_engines_clock_not_the_databases(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests (and the year-long e2e) shift the engine's clock: a purchase must be priced at
    the version the ledger's timer would also see as in force, whatever PostgreSQL's now()."""
    plan = await make_plan(api, [(None, 10000), (timedelta(days=5), 12000)])
    monkeypatch.setattr(clock._clock, "offset_ms", 6 * 86_400_000)
    user = new_user()
    resp = await api.pay(user, body={"plan_id": plan, "return_url": RETURN_URL})
    assert resp.status_code == 202, resp.text
    await api.settle()
    [cmd] = published(api, user)
    assert isinstance(cmd, PaySubscription) and cmd.amount == Money(12000, "RUB")
    listed = {p["plan_id"]: p for p in (await api.client.get("/api/v1/plans")).json()}
    assert (listed[plan]["price_version"], listed[plan]["next_price"]) == (2, None)
