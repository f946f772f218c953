"""The API routes the console needs that do not touch PostgreSQL: console login (password
hashing, the token it issues, throttling, never logging the password) and the analytics
answers (asked of the history worker; 503 ``analytics_unavailable`` when it cannot answer)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import date
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from analytics import queries
from api import errors
from api.auth import decode_token, mint_token
from api.routes import analytics, session
from api.routes.session import LoginThrottle
from billing.config import Settings
from billing.passwords import hash_password, parse_hash, verify_password

SECRET = "unit-test-secret-of-at-least-thirty-two-bytes"
PASSWORD = "correct horse battery staple"
FAST_N = 2**4  # scrypt cost small enough for unit tests
HASH = hash_password(PASSWORD, n=FAST_N)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "jwt_secret": SecretStr(SECRET),
        "dashboard_admin_user": "ops",
        "dashboard_admin_password_hash": SecretStr(HASH),
        "dashboard_session_ttl_s": 600,
        "history_url": "http://history.test",
        "clickhouse_url": None,
    }
    values.update(overrides)
    return Settings(**values)


def make_app(
    s: Settings, worker: Callable[[httpx.Request], httpx.Response] | None = None
) -> FastAPI:
    app = FastAPI()
    errors.install(app)
    app.state.settings = s
    if worker is not None:
        app.state.analytics_transport = httpx.MockTransport(worker)
    app.include_router(session.router)
    app.include_router(analytics.router)
    return app


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=make_app(settings())), base_url="http://api"
    ) as c:
        yield c


async def login(c: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await c.post("/api/v1/admin/session", json={"username": username, "password": password})


# ------------------------------------------------------------------------------ passwords
def test_hash_round_trip_and_salt() -> None:
    assert verify_password(PASSWORD, HASH)
    assert not verify_password(PASSWORD + "!", HASH)
    assert hash_password(PASSWORD, n=FAST_N) != HASH  # a fresh salt each time
    n, r, p, salt, digest = parse_hash(hash_password("x"))
    assert (n, r, p) == (2**14, 8, 1) and len(salt) == 16 and len(digest) == 32


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plain",
        "scrypt:3:8:1:c2FsdHNhbHQ:aGFzaGhhc2hoYXNoaGFzaA",  # n not a power of two
        "scrypt:16384:8:1:c2FsdA:aGFzaA",  # salt and hash too short
        "scrypt$16384$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "bcrypt:x:y:z:a:b",
    ],
)
def test_malformed_hashes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_hash(bad)


def test_a_password_with_control_characters_cannot_be_hashed() -> None:
    with pytest.raises(ValueError):
        hash_password("a\x00b")


# ---------------------------------------------------------------------------------- login
async def test_login_issues_a_short_lived_admin_token(api: httpx.AsyncClient) -> None:
    resp = await login(api, "ops", PASSWORD)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 600
    assert body["user_id"] == "ops" and body["roles"] == ["admin"]
    principal = decode_token(settings(), body["access_token"])
    assert principal.user_id == "ops" and principal.is_admin


@pytest.mark.parametrize(("user", "password"), [("ops", "wrong"), ("root", PASSWORD)])
async def test_bad_credentials_are_one_error(
    api: httpx.AsyncClient, user: str, password: str
) -> None:
    resp = await login(api, user, password)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_credentials"


async def test_the_password_never_reaches_the_logs(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await login(api, "ops", "hunter2-wrong")
    await login(api, "ops", PASSWORD)
    assert "hunter2" not in caplog.text and PASSWORD not in caplog.text
    assert "console login failed" in caplog.text


async def test_repeated_failures_are_throttled(api: httpx.AsyncClient) -> None:
    for _ in range(session.MAX_FAILURES):
        assert (await login(api, "ops", "nope")).status_code == 400
    resp = await login(api, "ops", PASSWORD)  # even the right password waits
    assert resp.status_code == 429
    assert resp.json()["error"]["code"] == "too_many_attempts"
    assert int(resp.headers["retry-after"]) > 0


def test_throttle_window_slides_and_success_clears() -> None:
    now = [0.0]
    t = LoginThrottle(max_failures=2, window_s=10, clock=lambda: now[0])
    t.failed("k")
    t.failed("k")
    assert t.retry_after("k") == 10
    now[0] = 10.5
    assert t.retry_after("k") is None
    t.failed("k")
    t.succeeded("k")
    t.failed("k")
    assert t.retry_after("k") is None


def test_throttle_memory_is_bounded() -> None:
    t = LoginThrottle(max_keys=3)
    for i in range(10):
        t.failed(str(i))
    assert len(t._failures) == 3


async def test_login_is_disabled_without_a_hash() -> None:
    app = make_app(settings(dashboard_admin_password_hash=None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        resp = await login(c, "ops", PASSWORD)
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "admin_login_disabled"


async def test_a_malformed_hash_disables_login_loudly(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(settings(dashboard_admin_password_hash=SecretStr("scrypt:oops")))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        resp = await login(c, "ops", PASSWORD)
    assert resp.status_code == 503 and "malformed" in caplog.text


@pytest.mark.parametrize(
    "body",
    [
        {"username": "ops"},
        {"username": "ops", "password": 123},
        {"username": "o\x00ps", "password": "x"},
        {"username": "ops", "password": "a\x7fb"},
        {"username": "ops", "password": "x" * 2000},
        {"username": "ops", "password": "x", "roles": ["admin"]},
    ],
)
async def test_malformed_login_bodies_are_422(api: httpx.AsyncClient, body: dict[str, Any]) -> None:
    resp = await api.post("/api/v1/admin/session", json=body)
    assert resp.status_code == 422
    assert "x" * 50 not in resp.text  # validation errors never echo the input


# ------------------------------------------------------------------------------ analytics
def admin_headers(s: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(s, 'ops', roles=('admin',))}"}


OVERVIEW = queries.Overview(
    revenue=[queries.RevenueRow(date(2026, 11, 1), "RUB", "monthly", 29900, 0, 29900, 1, 0)],
    active=queries.ActiveSubscribers(at_ms=1_790_000_000_000, total=3, by_plan={"monthly": 3}),
    success=[queries.SuccessRateRow(date(2026, 11, 1), 3, 1)],
    declines=[queries.DeclineReason("insufficient_funds", "yoo_money", 1, 1.0)],
    mrr=[queries.MrrMovement(date(2026, 11, 1), "RUB", 89700, 89700, 0, 0, 0, 0, 3, 3, 0)],
    refund_rate=[queries.RefundRate("RUB", 29900, 0, 1, 0)],
    dunning=[queries.DunningRecovery(date(2026, 11, 1), 2, 1, 0)],
)


async def test_analytics_are_asked_of_the_history_worker() -> None:
    asked: list[httpx.Request] = []

    def worker(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json=msgspec.to_builtins(OVERVIEW))

    s = settings()
    app = make_app(s, worker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        resp = await c.get("/api/v1/admin/analytics/overview", headers=admin_headers(s))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert str(asked[0].url).startswith("http://history.test/analytics/overview/?at=")
    assert body["active"]["total"] == 3
    assert body["success"][0]["rate"] == 0.75  # derived fields are filled in
    assert body["mrr"][0]["net_new_minor"] == 89700
    assert body["dunning"][0]["open"] == 1 and body["dunning"][0]["rate"] == 1.0


async def test_windows_are_sent_as_epoch_ms_and_checked() -> None:
    asked: list[httpx.Request] = []

    def worker(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json=[])

    s = settings()
    app = make_app(s, worker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        ok = await c.get(
            "/api/v1/admin/analytics/revenue",
            params={"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"},
            headers=admin_headers(s),
        )
        reversed_ = await c.get(
            "/api/v1/admin/analytics/revenue",
            params={"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
            headers=admin_headers(s),
        )
        naive = await c.get(
            "/api/v1/admin/analytics/revenue",
            params={"from": "2026-11-01T00:00:00"},
            headers=admin_headers(s),
        )
        too_long = await c.get(
            "/api/v1/admin/analytics/decline-reasons",
            params={"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            headers=admin_headers(s),
        )
        months = await c.get(
            "/api/v1/admin/analytics/mrr",
            params={"months": 3, "from_month": "2026-09-15"},
            headers=admin_headers(s),
        )
        asked_before = len(asked)
        ancient = [
            await c.get(
                "/api/v1/admin/analytics/mrr",
                params={"from_month": first},
                headers=admin_headers(s),
            )
            for first in ("0001-01-01", "1969-06-01")
        ]
    assert ok.status_code == 200 and ok.json() == []
    assert asked[0].url.params["from"] == "1793491200000"
    assert asked[0].url.params["to"] == "1793577600000"
    assert reversed_.status_code == 422 and reversed_.json()["error"]["code"] == "invalid_range"
    assert naive.status_code == 422
    assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "window_too_long"
    assert months.status_code == 200
    assert asked[-1].url.path == "/analytics/mrr_movements/"
    assert asked[-1].url.params["from_month"] == "2026-09-01"
    for resp in ancient:  # was a 503 (engine error) and a 200 from a traceback
        assert resp.status_code == 422, resp.text
    assert len(asked) == asked_before  # refused before the history worker is asked


@pytest.mark.parametrize(
    "answer",
    [
        httpx.ConnectError("refused"),
        httpx.Response(404, json={"error": {"code": "unknown_query"}}),
        httpx.Response(500, text="boom"),
        httpx.Response(200, json={"revenue": "not a list"}),
        httpx.Response(200, text="not json"),
    ],
    ids=["down", "unknown", "500", "shape", "not-json"],
)
async def test_analytics_unavailable_is_a_clear_503(answer: Any) -> None:
    def worker(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx.Response)
        return answer

    s = settings()
    app = make_app(s, worker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        resp = await c.get("/api/v1/admin/analytics/overview", headers=admin_headers(s))
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "analytics_unavailable"
    assert resp.headers["retry-after"]


async def test_analytics_are_for_admins_only() -> None:
    s = settings()
    app = make_app(s, lambda r: httpx.Response(200, json=[]))
    user = {"Authorization": f"Bearer {mint_token(s, 'u1')}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        assert (await c.get("/api/v1/admin/analytics/revenue", headers=user)).status_code == 403
        assert (await c.get("/api/v1/admin/analytics/revenue")).status_code == 401


class FakeClickHouse:
    """Stands in for a ClickHouse server client (the API asks it directly when
    BILLING_CLICKHOUSE_URL is a server)."""

    def __init__(self, rows: list[tuple[Any, ...]] | Exception) -> None:
        self.rows = rows
        self.asked: list[dict[str, Any]] = []

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        self.asked.append(dict(params or {}))
        if isinstance(self.rows, Exception):
            raise self.rows
        return self.rows


@pytest.mark.parametrize("fails", [False, True])
async def test_a_clickhouse_server_is_asked_directly(fails: bool) -> None:
    s = settings(clickhouse_url=SecretStr("http://billing:pw@clickhouse:8123/billing"))
    app = make_app(s, lambda r: pytest.fail("the history worker must not be asked"))
    rows: list[tuple[Any, ...]] | Exception = [
        ("insufficient_funds", "yoo_money", 3),
        ("card_expired", "issuer", 1),
    ]
    fake = FakeClickHouse(ConnectionError("down") if fails else rows)
    app.state.analytics_clickhouse = fake
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        resp = await c.get("/api/v1/admin/analytics/decline-reasons", headers=admin_headers(s))
    if fails:
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "analytics_unavailable"
        return
    assert resp.status_code == 200, resp.text
    assert resp.json() == [
        {"reason": "insufficient_funds", "party": "yoo_money", "payments": 3, "share": 0.75},
        {"reason": "card_expired", "party": "issuer", "payments": 1, "share": 0.25},
    ]
    assert set(fake.asked[0]) == {"from_ms", "to_ms"}
