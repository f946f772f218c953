"""Authorization matrix: EVERY route of the app, called by each of {owner, other user, admin,
no token, expired token} → the expected status. The routes are enumerated from the app
itself, so a new route without an entry here fails ``test_every_route_is_in_the_matrix``:
nobody adds an endpoint without saying who may call it.

"owner" is a plain user who owns the payment, refund and subscription in the paths; "other"
is another plain user; "admin" has the admin role but owns nothing (user endpoints are scoped
to the caller, so for an admin someone else's payment is a 404 there too). Each request is
otherwise valid, so the status says only who may do it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from fastapi.routing import iter_route_contexts

from api.auth import mint_token
from schemas.ids import subscription_id_for
from tests.integration.api_support import (
    JWT_SECRET,
    RETURN_URL,
    Api,
    Ledger,
    error_code,
    new_user,
)

pytestmark = pytest.mark.integration

CALLERS = ("owner", "other", "admin", "none", "expired")
ADMIN = "matrix-admin"


@dataclass
class World:
    api: Api
    owner: str
    ids: dict[str, str]  # the path parameters: the owner's payment, refund, ...


@pytest.fixture(scope="module")
async def world(api: Api) -> World:
    ledger = Ledger(api)
    owner = new_user()
    payment_id = await ledger.subscribe(owner)
    refund = await api.client.post(
        f"/api/v1/payments/{payment_id}/refunds",
        json={"amount": {"value": "1.00", "currency": "RUB"}},
        headers={**api.auth(owner), "Idempotency-Key": "matrix-refund"},
    )
    assert refund.status_code == 202, refund.text
    await ledger.drain(owner)
    plan_id = f"matrix-{uuid.uuid4().hex[:8]}"
    created = await api.client.post(
        "/api/v1/admin/plans",
        json={
            "plan_id": plan_id,
            "name": "Matrix",
            "price": {"value": "10.00", "currency": "RUB"},
            "period_months": 1,
            "reason": "matrix",
        },
        headers={**api.auth(ADMIN, admin=True), "Idempotency-Key": "matrix-plan"},
    )
    assert created.status_code == 201, created.text
    sub = subscription_id_for(owner)
    action = await api.client.post(
        f"/api/v1/admin/subscriptions/{sub}/extend",
        json={"days": 1, "reason": "matrix"},
        headers={**api.auth(ADMIN, admin=True), "Idempotency-Key": "matrix-extend"},
    )
    assert action.status_code == 202, action.text
    promo = await api.client.post(  # a promo code (issue 16)
        "/api/v1/admin/promo-codes",
        json=_new_promo(),
        headers={**api.auth(ADMIN, admin=True), "Idempotency-Key": "matrix-promo"},
    )
    assert promo.status_code == 201, promo.text
    method_id = f"pm-matrix-{uuid.uuid4().hex[:8]}"  # a saved card of the owner's (wallet)
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO payment_methods (method_id, subscription_id, user_id, last4,"
            " is_default, created_at, updated_at) VALUES (%s, %s, %s, '4444', true, now(), now())",
            (method_id, sub, owner),
        )
    ids = {
        "user_id": f"matrix-granted-{uuid.uuid4().hex[:8]}",  # a user with no subscription
        "method_id": method_id,
        "payment_id": payment_id,
        "refund_id": refund.json()["refund_id"],
        "subscription_id": sub,
        "plan_id": plan_id,
        "command_id": action.json()["command_id"],
        "name": "swagger-ui.css",
        "code": promo.json()["code"],
    }
    return World(api, owner, ids)


def headers_for(w: World, caller: str) -> dict[str, str]:
    if caller == "owner":
        return w.api.auth(w.owner)
    if caller == "other":
        return w.api.auth(new_user())
    if caller == "admin":
        return w.api.auth(ADMIN, admin=True)
    if caller == "none":
        return {}
    if caller == "expired":
        claims = {
            "sub": ADMIN,
            "roles": ["admin"],
            "aud": w.api.settings.jwt_audience,
            "exp": int(time.time()) - 10,
        }
        return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, 'HS256')}"}
    raise AssertionError(caller)


Body = dict[str, Any] | Callable[[], dict[str, Any]] | None


@dataclass(frozen=True)
class Entry:
    """Expected status per caller; ``body`` (a dict, or a factory for bodies that must be
    unique per call) for writes, which also get a fresh Idempotency-Key."""

    owner: int
    other: int
    admin: int
    none: int = 401
    body: Body = None
    params: dict[str, str] | None = None

    def expected(self, caller: str) -> int:
        if caller == "expired":  # a bad token is refused wherever a token is looked at
            return 401 if self.none == 401 else self.none
        status: int = getattr(self, caller)
        return status


PUBLIC = Entry(200, 200, 200, 200)
USER_LIST = Entry(200, 200, 200)
MINE = Entry(200, 404, 404)
MINE_WRITE = Entry(202, 404, 404)  # a command about one of the caller's things
ADMIN_READ = Entry(403, 403, 200)
ANALYTICS = Entry(403, 403, 503)
REASON = {"reason": "matrix"}


def _new_plan() -> dict[str, Any]:
    return {
        "plan_id": f"m-{uuid.uuid4().hex[:10]}",
        "name": "M",
        "price": {"value": "5.00", "currency": "RUB"},
        "period_months": 1,
        "reason": "matrix",
    }


def _new_promo() -> dict[str, Any]:
    return {
        "code": f"M{uuid.uuid4().hex[:10]}",
        "discount": {"kind": "percent", "percent": 10},
        "reason": "matrix",
    }


MATRIX: dict[tuple[str, str], Entry] = {
    # Framework and probes: public.
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/assets/{name}"): PUBLIC,  # Swagger UI's files, served here (no CDN)
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,  # counts only, for the scraper (api/routes/metrics.py)
    ("GET", "/api/v1/plans"): PUBLIC,
    # Webhooks: trusted by source address and a re-read from the provider, never by a token.
    ("POST", "/api/v1/webhooks/yookassa"): Entry(
        200,
        200,
        200,
        200,
        body={"type": "notification", "event": "refund.succeeded", "object": {"id": "r-1"}},
    ),
    # The caller's own things.
    ("POST", "/api/v1/payments"): Entry(
        202, 202, 202, body={"plan_id": "monthly", "return_url": RETURN_URL}
    ),
    ("GET", "/api/v1/payments"): USER_LIST,
    ("GET", "/api/v1/payments/{payment_id}"): MINE,
    ("POST", "/api/v1/payments/{payment_id}/retry"): Entry(
        202, 404, 404, body={"return_url": RETURN_URL}
    ),
    ("POST", "/api/v1/payments/{payment_id}/refunds"): Entry(
        202, 404, 404, body={"amount": {"value": "1.00", "currency": "RUB"}, "reason": "m"}
    ),
    ("GET", "/api/v1/payments/{payment_id}/refunds"): MINE,
    ("GET", "/api/v1/refunds"): USER_LIST,
    ("GET", "/api/v1/refunds/{refund_id}"): MINE,
    ("GET", "/api/v1/subscriptions/me"): MINE,
    ("PUT", "/api/v1/subscriptions/me/auto-renew"): Entry(202, 404, 404, body={"enabled": True}),
    ("POST", "/api/v1/subscriptions/me/plan"): Entry(
        202, 404, 404, body={"plan_id": "yearly", "return_url": RETURN_URL}
    ),
    # Admin only.
    ("GET", "/api/v1/admin/commands"): ADMIN_READ,
    ("GET", "/api/v1/admin/commands/{command_id}"): ADMIN_READ,
    ("GET", "/api/v1/admin/plans"): ADMIN_READ,
    ("POST", "/api/v1/admin/plans"): Entry(403, 403, 201, body=_new_plan),
    ("PATCH", "/api/v1/admin/plans/{plan_id}"): Entry(
        403, 403, 200, body={"trial_days": 3, "reason": "matrix"}
    ),
    ("POST", "/api/v1/admin/plans/{plan_id}/archive"): Entry(403, 403, 200, body=REASON),
    ("POST", "/api/v1/admin/plans/{plan_id}/unarchive"): Entry(403, 403, 200, body=REASON),
    ("POST", "/api/v1/admin/plans/{plan_id}/prices"): Entry(
        403, 403, 201, body={"price": {"value": "6.00", "currency": "RUB"}, "reason": "matrix"}
    ),
    ("GET", "/api/v1/admin/subscriptions"): ADMIN_READ,
    ("GET", "/api/v1/admin/subscriptions/{subscription_id}"): ADMIN_READ,
    ("POST", "/api/v1/admin/payments/{payment_id}/refunds"): Entry(403, 403, 202, body=REASON),
    ("POST", "/api/v1/admin/payments/{payment_id}/capture"): Entry(403, 403, 202, body=REASON),
    ("POST", "/api/v1/admin/payments/{payment_id}/release"): Entry(403, 403, 202, body=REASON),
    ("POST", "/api/v1/admin/subscriptions/{subscription_id}/cancel"): Entry(
        403, 403, 202, body=REASON
    ),
    ("POST", "/api/v1/admin/subscriptions/{subscription_id}/extend"): Entry(
        403, 403, 202, body={"days": 1, "reason": "matrix"}
    ),
    ("POST", "/api/v1/admin/subscriptions/{subscription_id}/grant"): Entry(
        403, 403, 202, body={"plan_id": "monthly", "reason": "matrix"}
    ),
    ("POST", "/api/v1/admin/subscriptions/{subscription_id}/auto-renew"): Entry(
        403, 403, 202, body={"enabled": False, "reason": "matrix"}
    ),
    # The wallet (issue 16): the caller's own methods; an admin sees anyone's.
    ("GET", "/api/v1/payment-methods"): USER_LIST,
    ("POST", "/api/v1/payment-methods"): Entry(202, 202, 202, body={"return_url": RETURN_URL}),
    ("PUT", "/api/v1/payment-methods/{method_id}/default"): MINE_WRITE,
    ("DELETE", "/api/v1/payment-methods/{method_id}"): MINE_WRITE,
    ("GET", "/api/v1/admin/subscriptions/{subscription_id}/payment-methods"): ADMIN_READ,
    ("POST", "/api/v1/admin/users/{user_id}/grant"): Entry(
        403, 403, 202, body={"plan_id": "monthly", **REASON}
    ),
    # Promo codes (issue 16): any signed-in user gets a quote; admins manage the codes.
    ("GET", "/api/v1/plans/{plan_id}/quote"): USER_LIST,
    ("GET", "/api/v1/admin/promo-codes"): ADMIN_READ,
    ("POST", "/api/v1/admin/promo-codes"): Entry(403, 403, 201, body=_new_promo),
    ("GET", "/api/v1/admin/promo-codes/{code}"): ADMIN_READ,
    ("POST", "/api/v1/admin/promo-codes/{code}/archive"): Entry(403, 403, 200, body=REASON),
    ("GET", "/api/v1/admin/promo-codes/{code}/redemptions"): ADMIN_READ,
    # The receipts' contact (issue 16): everyone reads and sets their own profile only.
    ("GET", "/api/v1/profile"): USER_LIST,
    ("PUT", "/api/v1/profile"): Entry(200, 200, 200, body={"email": "viewer@example.com"}),
    # The admin console's. Login takes credentials, never a token; these settings configure
    # no console password hash, so it is disabled (503) for everyone.
    ("POST", "/api/v1/admin/session"): Entry(
        503, 503, 503, 503, body={"username": "admin", "password": "matrix"}
    ),
    # Analytics: admins only; no history worker answers these settings' BILLING_HISTORY_URL
    # (nor a ClickHouse server), so an admin gets 503 analytics_unavailable.
    ("GET", "/api/v1/admin/analytics/overview"): ANALYTICS,
    ("GET", "/api/v1/admin/analytics/revenue"): ANALYTICS,
    ("GET", "/api/v1/admin/analytics/payment-success"): ANALYTICS,
    ("GET", "/api/v1/admin/analytics/decline-reasons"): ANALYTICS,
    ("GET", "/api/v1/admin/analytics/trials"): ANALYTICS,
    ("GET", "/api/v1/admin/analytics/discounts"): ANALYTICS,
    ("GET", "/api/v1/admin/analytics/refund-rate"): ANALYTICS,
    ("GET", "/api/v1/admin/analytics/dunning"): ANALYTICS,
    ("GET", "/api/v1/admin/analytics/mrr"): ANALYTICS,
    ("GET", "/api/v1/admin/analytics/active-subscribers"): ANALYTICS,
    ("GET", "/api/v1/admin/analytics/discrepancies"): ANALYTICS,
    ("GET", "/api/v1/admin/reconciliation/summary"): ADMIN_READ,
    ("GET", "/api/v1/admin/reconciliation/runs"): ADMIN_READ,
    ("GET", "/api/v1/admin/reconciliation/discrepancies"): ADMIN_READ,
    ("POST", "/api/v1/admin/reconciliation/resolutions"): Entry(
        403,
        403,
        404,  # no such discrepancy: the decision itself is the admin's
        body={"item_key": "payment:matrix:amount_mismatch", "resolution": "write_off", **REASON},
    ),
}

EXPECTED_CODES = {401: {"token_missing", "token_expired"}, 403: {"forbidden"}}


def app_routes(api: Api) -> set[tuple[str, str]]:
    routes: set[tuple[str, str]] = set()
    for ctx in iter_route_contexts(api.app.routes):
        path = ctx.path
        assert path is not None, ctx
        for method in ctx.methods or ():
            if method != "HEAD":
                routes.add((method, path))
    return routes


async def test_every_route_is_in_the_matrix(api: Api) -> None:
    routes = app_routes(api)
    missing = routes - set(MATRIX)
    stale = set(MATRIX) - routes
    assert not missing, f"routes without an authorization entry: {sorted(missing)}"
    assert not stale, f"matrix entries for routes that no longer exist: {sorted(stale)}"


async def request(w: World, method: str, path: str, entry: Entry, caller: str) -> httpx.Response:
    url = path.format(**w.ids)
    headers = headers_for(w, caller)
    body = entry.body() if callable(entry.body) else entry.body
    if method == "DELETE":
        headers["Idempotency-Key"] = f"matrix-{uuid.uuid4()}"
    elif method in ("POST", "PUT", "PATCH"):
        headers["Idempotency-Key"] = f"matrix-{uuid.uuid4()}"
        return await w.api.client.request(
            method, url, json=body or {}, headers=headers, params=entry.params
        )
    return await w.api.client.request(method, url, headers=headers, params=entry.params)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "path"), sorted(MATRIX), ids=lambda v: str(v))
async def test_authorization(world: World, method: str, path: str, caller: str) -> None:
    entry = MATRIX[(method, path)]
    resp = await request(world, method, path, entry, caller)
    expected = entry.expected(caller)
    assert resp.status_code == expected, f"{caller} {method} {path}: {resp.text}"
    if resp.status_code >= 400:
        code = error_code(resp)  # one error shape everywhere
        if resp.status_code in EXPECTED_CODES:
            assert code in EXPECTED_CODES[resp.status_code], code
        if resp.status_code == 401:
            assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_a_token_with_other_roles_is_not_an_admin(world: World) -> None:
    # Roles are exact strings: neither another role nor a near miss of "admin" is one.
    token = mint_token(world.api.settings, "support-1", roles=("support", "Admin", "admin "))
    resp = await world.api.client.get(
        "/api/v1/admin/plans", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 403 and error_code(resp) == "forbidden"


HOSTILE_VALUES: list[Any] = ["a\x00b", "\x7f", "x" * 5000, 10**30, -1, 1.5, None, [], {}, True]


def hostile_bodies(body: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    """(the valid body with one field, nested too, replaced by a hostile value, that value)."""
    out: list[tuple[dict[str, Any], Any]] = []
    for key, value in body.items():
        for bad in HOSTILE_VALUES:
            out.append(({**body, key: bad}, bad))
        if isinstance(value, dict):
            out += [({**body, key: nested}, bad) for nested, bad in hostile_bodies(value)]
    return out


@pytest.mark.parametrize(
    ("method", "path"),
    sorted(
        k for k, e in MATRIX.items() if e.body is not None and k[1] != "/api/v1/webhooks/yookassa"
    ),
    ids=lambda v: str(v),
)
async def test_hostile_bodies_are_4xx_never_500(world: World, method: str, path: str) -> None:
    """Every field of every write, one at a time: control characters (PostgreSQL refuses NUL
    in text), huge strings and numbers, wrong types. Refused as the client's fault, or
    (a longer name, say) accepted; never a 500, never an error of another shape."""
    entry = MATRIX[(method, path)]
    caller = "admin" if path.startswith("/api/v1/admin/") else "owner"
    valid = entry.body() if callable(entry.body) else entry.body
    assert valid is not None
    for body, bad in hostile_bodies(valid):
        headers = {**headers_for(world, caller), "Idempotency-Key": f"hostile-{uuid.uuid4()}"}
        resp = await world.api.client.request(
            method, path.format(**world.ids), json=body, headers=headers
        )
        assert resp.status_code < 500, (body, resp.text)
        if isinstance(bad, str) and "\x00" in bad:
            # Accepted, it would reach a text column later: a poison message for the sink.
            assert 400 <= resp.status_code < 500, (body, resp.text)
        if resp.status_code >= 400:
            error_code(resp)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/payments", {"cursor": "a\x00"}),
        ("/api/v1/payments", {"created_from": "2026-01-01T00:00:00\x00Z"}),
        ("/api/v1/payments", {"created_from": "9999-12-31T23:59:59+14:00"}),
        ("/api/v1/refunds", {"status": "\x00"}),
        ("/api/v1/admin/subscriptions", {"user_id": "a\x00b"}),
        ("/api/v1/admin/subscriptions", {"plan_id": "a\x00"}),
        ("/api/v1/admin/subscriptions", {"cursor": "aWR8AA"}),
        ("/api/v1/admin/subscriptions/{subscription_id}", {"events_after": "99999999999999999999"}),
        ("/api/v1/admin/commands", {"limit": "1e3"}),
    ],
)
async def test_hostile_queries_are_4xx_or_empty_never_500(
    world: World, path: str, params: dict[str, str]
) -> None:
    caller = "admin" if path.startswith("/api/v1/admin/") else "owner"
    resp = await world.api.client.get(
        path.format(**world.ids), params=params, headers=headers_for(world, caller)
    )
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        error_code(resp)
