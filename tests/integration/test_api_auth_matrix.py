"""Every endpoint against every kind of caller: owner, another user, admin, no token, and
tokens that are expired, garbage, signed with another key, for another audience, unsigned."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import jwt
import pytest

from schemas.ids import subscription_id_for
from tests.integration.api_support import (
    JWT_SECRET,
    RETURN_URL,
    Api,
    error_code,
    new_user,
)

pytestmark = pytest.mark.integration

CALLERS = [
    "owner",
    "other",
    "admin",
    "none",
    "expired",
    "garbage",
    "wrong_key",
    "wrong_audience",
    "alg_none",
    "basic",
]
BAD_TOKENS = {
    "none": "token_missing",
    "basic": "token_missing",
    "expired": "token_expired",
    "garbage": "token_invalid",
    "wrong_key": "token_invalid",
    "wrong_audience": "token_invalid",
    "alg_none": "token_invalid",
}


@dataclass
class World:
    api: Api
    owner: str
    payment_id: str


@pytest.fixture(scope="module")
async def world(api: Api) -> World:
    owner = new_user()
    resp = await api.pay(owner, "auth-matrix")
    assert resp.status_code == 202
    await api.settle()
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO subscriptions (subscription_id, user_id, status, plan_id, period_start,"
            " period_end, version, updated_at)"
            " VALUES (%s, %s, 'active', 'monthly', now(), now() + interval '30 days', 1, now())",
            (subscription_id_for(owner), owner),
        )
    return World(api, owner, resp.json()["payment_id"])


def headers_for(w: World, caller: str) -> dict[str, str]:
    api = w.api
    aud = api.settings.jwt_audience
    now = int(time.time())
    if caller == "owner":
        return api.auth(w.owner)
    if caller == "other":
        return api.auth(new_user())
    if caller == "admin":
        return api.auth("admin-1", admin=True)
    if caller == "none":
        return {}
    if caller == "basic":
        return {"Authorization": "Basic dXNlcjpwYXNz"}
    if caller == "expired":
        token = jwt.encode({"sub": w.owner, "aud": aud, "exp": now - 10}, JWT_SECRET, "HS256")
    elif caller == "garbage":
        token = "not.a.jwt"
    elif caller == "wrong_key":
        token = jwt.encode(
            {"sub": w.owner, "aud": aud, "exp": now + 60}, "another-secret-32-bytes-long-xxxx"
        )
    elif caller == "wrong_audience":
        token = jwt.encode({"sub": w.owner, "aud": "other-app", "exp": now + 60}, JWT_SECRET)
    elif caller == "alg_none":
        token = jwt.encode(
            {"sub": w.owner, "aud": aud, "exp": now + 60, "roles": ["admin"]},
            "",
            algorithm="none",
        )
    else:
        raise AssertionError(caller)
    return {"Authorization": f"Bearer {token}"}


# Expected (status, code) for the good callers; the bad tokens are 401 everywhere but /plans.
GOOD: dict[str, dict[str, tuple[int, str | None]]] = {
    "get_payment": {
        "owner": (200, None),
        "other": (404, "payment_not_found"),
        "admin": (404, "payment_not_found"),
    },
    "list_payments": {"owner": (200, None), "other": (200, None), "admin": (200, None)},
    "subscription": {
        "owner": (200, None),
        "other": (404, "subscription_not_found"),
        "admin": (404, "subscription_not_found"),
    },
    "create_payment": {"owner": (202, None), "other": (202, None), "admin": (202, None)},
    "admin_commands": {
        "owner": (403, "forbidden"),
        "other": (403, "forbidden"),
        "admin": (200, None),
    },
    "plans": {"owner": (200, None), "other": (200, None), "admin": (200, None)},
    "profile": {"owner": (200, None), "other": (200, None), "admin": (200, None)},
    "quote": {"owner": (200, None), "other": (200, None), "admin": (200, None)},
    "promo_codes": {
        "owner": (403, "forbidden"),
        "other": (403, "forbidden"),
        "admin": (200, None),
    },
}


async def call(w: World, endpoint: str, headers: dict[str, str]) -> httpx.Response:
    client = w.api.client
    if endpoint == "get_payment":
        return await client.get(f"/api/v1/payments/{w.payment_id}", headers=headers)
    if endpoint == "list_payments":
        return await client.get("/api/v1/payments", headers=headers)
    if endpoint == "subscription":
        return await client.get("/api/v1/subscriptions/me", headers=headers)
    if endpoint == "create_payment":
        return await client.post(
            "/api/v1/payments",
            json={"plan_id": "monthly", "return_url": RETURN_URL},
            headers={**headers, "Idempotency-Key": f"matrix-{time.monotonic_ns()}"},
        )
    if endpoint == "admin_commands":
        return await client.get("/api/v1/admin/commands", headers=headers)
    if endpoint == "plans":
        return await client.get("/api/v1/plans", headers=headers)
    if endpoint == "profile":
        return await client.get("/api/v1/profile", headers=headers)
    if endpoint == "quote":
        return await client.get("/api/v1/plans/monthly/quote", headers=headers)
    if endpoint == "promo_codes":
        return await client.get("/api/v1/admin/promo-codes", headers=headers)
    raise AssertionError(endpoint)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", list(GOOD))
async def test_auth_matrix(world: World, endpoint: str, caller: str) -> None:
    resp = await call(world, endpoint, headers_for(world, caller))
    if caller in BAD_TOKENS:
        if endpoint == "plans":  # the catalogue is public: a token is not even looked at
            assert resp.status_code == 200
            return
        assert resp.status_code == 401, resp.text
        assert error_code(resp) == BAD_TOKENS[caller]
        assert resp.headers["www-authenticate"].startswith("Bearer")
        return
    status, code = GOOD[endpoint][caller]
    assert resp.status_code == status, resp.text
    if code:
        assert error_code(resp) == code


async def test_owner_sees_only_own_payments_in_the_list(world: World) -> None:
    api = world.api
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO payments (payment_id, subscription_id, user_id, command_id, plan_id,"
            " amount_minor, currency, status, created_at, updated_at, version)"
            " VALUES (%s, %s, %s, gen_random_uuid(), 'monthly', 29900, 'RUB', 'pending',"
            " now(), now(), 1) ON CONFLICT DO NOTHING",
            (world.payment_id, subscription_id_for(world.owner), world.owner),
        )
    mine = await api.client.get("/api/v1/payments", headers=api.auth(world.owner))
    theirs = await api.client.get("/api/v1/payments", headers=api.auth(new_user()))
    assert [p["payment_id"] for p in mine.json()["items"]] == [world.payment_id]
    assert theirs.json()["items"] == []


async def test_token_with_control_characters_in_sub_is_401(world: World) -> None:
    token = world.api.token("bad\u0000user")
    resp = await world.api.client.get(
        "/api/v1/subscriptions/me", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 401 and error_code(resp) == "token_invalid"


async def test_tokens_never_appear_in_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    token = world.api.token(world.owner)
    with caplog.at_level("DEBUG"):
        await world.api.pay(world.owner, "log-check")
        await world.api.client.get(
            "/api/v1/payments", headers={"Authorization": "Bearer " + token + "x"}
        )
        await world.api.settle()
    assert token not in caplog.text
    assert JWT_SECRET not in caplog.text
