"""Reads from the read models (and the outbox before the projection has caught up), plans,
probes, the admin view of stuck commands, and the OpenAPI document."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from schemas.ids import subscription_id_for
from tests.integration.api_support import Api, error_code, new_user

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def seed_payment(
    api: Api,
    user: str,
    *,
    status: str = "succeeded",
    created_at: datetime = T0,
    amount_minor: int = 29900,
    payment_id: str | None = None,
) -> str:
    pid = payment_id or str(uuid.uuid4())
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO payments (payment_id, subscription_id, user_id, command_id, plan_id,"
            " amount_minor, currency, status, status_reason, provider_payment_id,"
            " confirmation_url, period_start, period_end, created_at, updated_at, version)"
            " VALUES (%s, %s, %s, gen_random_uuid(), 'monthly', %s, 'RUB', %s, NULL, %s,"
            " NULL, %s, %s, %s, %s, 1)",
            (
                pid,
                subscription_id_for(user),
                user,
                amount_minor,
                status,
                f"prov-{pid}",
                created_at,
                created_at + timedelta(days=31),
                created_at,
                created_at,
            ),
        )
    return pid


async def test_payment_from_read_model_with_decimal_money(api: Api) -> None:
    user = new_user()
    pid = await seed_payment(api, user, amount_minor=29905)
    resp = await api.client.get(f"/api/v1/payments/{pid}", headers=api.auth(user))
    assert resp.status_code == 200
    body = resp.json()
    assert body["amount"] == {"value": "299.05", "currency": "RUB"}
    assert body["amount_minor"] == 29905
    assert body["status"] == "succeeded"
    assert body["provider_payment_id"] == f"prov-{pid}"
    assert body["subscription_id"] == subscription_id_for(user)
    assert datetime.fromisoformat(body["period_start"]) == T0
    assert datetime.fromisoformat(body["period_end"]) == T0 + timedelta(days=31)
    for key in ("status_reason", "confirmation_url", "created_at", "updated_at", "plan_id"):
        assert key in body


async def test_unknown_payment_is_404(api: Api) -> None:
    resp = await api.client.get(f"/api/v1/payments/{uuid.uuid4()}", headers=api.auth(new_user()))
    assert resp.status_code == 404 and error_code(resp) == "payment_not_found"


async def test_poll_right_after_202_answers_from_the_outbox(api: Api) -> None:
    user = new_user()
    accepted = await api.pay(user)
    url = accepted.json()["status_url"]

    resp = await api.client.get(url, headers=api.auth(user))
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "accepted"
    assert body["amount"] == {"value": "299.00", "currency": "RUB"}
    assert body["payment_id"] == accepted.json()["payment_id"]
    # Another user asking for it learns nothing.
    other = await api.client.get(url, headers=api.auth(new_user()))
    assert other.status_code == 404 and error_code(other) == "payment_not_found"

    async with api.pool.connection() as conn:
        await conn.execute(
            "UPDATE command_outbox SET status = 'rejected', status_reason = 'plan_change_pending'"
            " WHERE user_id = %s",
            (user,),
        )
    rejected = (await api.client.get(url, headers=api.auth(user))).json()
    assert (rejected["status"], rejected["status_reason"]) == ("rejected", "plan_change_pending")

    # Once projected, the read model wins.
    await seed_payment(api, user, status="pending", payment_id=body["payment_id"])
    projected = (await api.client.get(url, headers=api.auth(user))).json()
    assert projected["status"] == "pending"


async def test_history_is_newest_first_with_cursor_pages_and_status_filter(api: Api) -> None:
    user = new_user()
    ids = [
        await seed_payment(
            api,
            user,
            created_at=T0 + timedelta(hours=i),
            status="canceled" if i % 2 else "succeeded",
        )
        for i in range(5)
    ]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (
            await api.client.get("/api/v1/payments", params=params, headers=api.auth(user))
        ).json()
        seen += [p["payment_id"] for p in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert pages == 3

    canceled = await api.client.get(
        "/api/v1/payments", params={"status": "canceled"}, headers=api.auth(user)
    )
    assert [p["payment_id"] for p in canceled.json()["items"]] == [ids[3], ids[1]]


async def test_same_timestamp_payments_do_not_fall_between_pages(api: Api) -> None:
    user = new_user()
    ids = {await seed_payment(api, user, created_at=T0) for _ in range(3)}
    first = (
        await api.client.get("/api/v1/payments", params={"limit": 1}, headers=api.auth(user))
    ).json()
    rest = (
        await api.client.get(
            "/api/v1/payments",
            params={"limit": 10, "cursor": first["next_cursor"]},
            headers=api.auth(user),
        )
    ).json()
    got = [p["payment_id"] for p in first["items"] + rest["items"]]
    assert sorted(got) == sorted(ids) and len(got) == 3


@pytest.mark.parametrize(
    ("status", "end_offset", "active"),
    [
        ("active", timedelta(days=10), True),
        ("active", timedelta(days=-1), False),
        ("past_due", timedelta(days=10), False),
        ("pending", None, False),
    ],
)
async def test_subscription_me(
    api: Api, status: str, end_offset: timedelta | None, active: bool
) -> None:
    user = new_user()
    now = datetime.now(UTC)
    end = now + end_offset if end_offset is not None else None
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO subscriptions (subscription_id, user_id, status, plan_id, period_start,"
            " period_end, version, updated_at) VALUES (%s, %s, %s, %s, %s, %s, 1, now())",
            (
                subscription_id_for(user),
                user,
                status,
                "monthly" if end else None,
                now - timedelta(days=20) if end else None,
                end,
            ),
        )
    body = (await api.client.get("/api/v1/subscriptions/me", headers=api.auth(user))).json()
    assert body["active"] is active
    assert body["status"] == status
    assert body["subscription_id"] == subscription_id_for(user)
    if end:
        assert body["plan"] == {"plan_id": "monthly", "name": "Cinema monthly"}
    else:
        assert body["plan"] is None


async def test_no_subscription_is_404(api: Api) -> None:
    resp = await api.client.get("/api/v1/subscriptions/me", headers=api.auth(new_user()))
    assert resp.status_code == 404 and error_code(resp) == "subscription_not_found"


async def test_plans_catalogue_is_public_and_hides_archived(api: Api) -> None:
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO plans (plan_id, name, amount_minor, currency, period_months, archived)"
            " VALUES ('retired', 'Retired', 100, 'RUB', 1, true) ON CONFLICT DO NOTHING"
        )
    resp = await api.client.get("/api/v1/plans")
    assert resp.status_code == 200
    plans = {p["plan_id"]: p for p in resp.json()}
    assert "retired" not in plans
    assert plans["monthly"]["price"] == {"value": "299.00", "currency": "RUB"}
    assert plans["yearly"]["amount_minor"] == 299000
    assert plans["quarterly"]["period_months"] == 3


async def test_admin_sees_stuck_commands_with_reason(api: Api) -> None:
    user = new_user()
    api.publisher.fail = True
    try:
        accepted = await api.pay(user)
        await api.settle()
    finally:
        api.publisher.fail = False
    resp = await api.client.get(
        "/api/v1/admin/commands",
        params={"status": "accepted", "limit": 500},
        headers=api.auth("root", admin=True),
    )
    assert resp.status_code == 200
    [row] = [c for c in resp.json() if c["user_id"] == user]
    assert row["payment_id"] == accepted.json()["payment_id"]
    assert row["status"] == "accepted" and row["publish_attempts"] == 1
    assert "broker down" in row["last_error"]
    assert row["published_at"] is None

    async with api.pool.connection() as conn:
        await conn.execute("UPDATE command_outbox SET status = 'done' WHERE user_id = %s", (user,))
    all_open = await api.client.get(
        "/api/v1/admin/commands", params={"limit": 500}, headers=api.auth("root", admin=True)
    )
    assert user not in {c["user_id"] for c in all_open.json()}


async def test_probes_and_openapi(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    doc = (await api.client.get("/openapi.json")).json()
    post = doc["paths"]["/api/v1/payments"]["post"]
    assert "Idempotency-Key" in post["description"]
    assert {p["name"] for p in post["parameters"]} >= {"Idempotency-Key"}
    assert "422" in post["responses"] and "409" in post["responses"]
    assert "/api/v1/webhooks/yookassa" in doc["paths"]
    assert (await api.client.get("/docs")).status_code == 200
