"""Whatever a client sends, the answer is a 4xx with the one machine-readable error body (never
a 500), and nothing is written."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.main import create_app
from billing.pg_local import dsn_with_database
from tests.integration.api_support import (
    RETURN_URL,
    Api,
    api_settings,
    error_code,
    fake_normalise,
    new_user,
)

pytestmark = pytest.mark.integration

OK_BODY = {"plan_id": "monthly", "return_url": RETURN_URL}


async def outbox_count(api: Api) -> int:
    async with api.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM command_outbox")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


def body_case(body: Any) -> bytes:
    return json.dumps(body).encode()


BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("malformed-json", b'{"plan_id": "monthly",', 400, "malformed_json"),
    ("not-json-at-all", b"plan_id=monthly", 400, "malformed_json"),
    # FastAPI's body parser turns its RecursionError into a plain 400.
    ("nested-1000-deep", b'{"a":' * 1000 + b"1" + b"}" * 1000, 400, "bad_request"),
    ("nested-100k-deep", b"[" * 100_000 + b"]" * 100_000, 400, "bad_request"),
    ("empty-body", b"", 422, "validation_error"),
    ("array", body_case([OK_BODY]), 422, "validation_error"),
    ("string", body_case("monthly"), 422, "validation_error"),
    ("null", b"null", 422, "validation_error"),
    ("plan-id-int", body_case({**OK_BODY, "plan_id": 5}), 422, "validation_error"),
    ("plan-id-null", body_case({**OK_BODY, "plan_id": None}), 422, "validation_error"),
    ("plan-id-empty", body_case({**OK_BODY, "plan_id": ""}), 422, "validation_error"),
    ("plan-id-nul", body_case({**OK_BODY, "plan_id": "month\u0000ly"}), 422, "validation_error"),
    ("plan-id-long", body_case({**OK_BODY, "plan_id": "p" * 65}), 422, "validation_error"),
    ("missing-return-url", body_case({"plan_id": "monthly"}), 422, "validation_error"),
    ("missing-plan", body_case({"return_url": RETURN_URL}), 422, "validation_error"),
    ("url-ftp", body_case({**OK_BODY, "return_url": "ftp://x.example/"}), 422, "validation_error"),
    (
        "url-javascript",
        body_case({**OK_BODY, "return_url": "javascript:alert(1)"}),
        422,
        "validation_error",
    ),
    ("url-relative", body_case({**OK_BODY, "return_url": "/back"}), 422, "validation_error"),
    ("url-no-host", body_case({**OK_BODY, "return_url": "https://"}), 422, "validation_error"),
    (
        "url-bad-port",
        body_case({**OK_BODY, "return_url": "https://x.example:99999/"}),
        422,
        "validation_error",
    ),
    (
        "url-space",
        body_case({**OK_BODY, "return_url": "https://x.example/a b"}),
        422,
        "validation_error",
    ),
    (
        "url-nul",
        body_case({**OK_BODY, "return_url": "https://x.example/\u0000"}),
        422,
        "validation_error",
    ),
    (
        "url-too-long",
        body_case({**OK_BODY, "return_url": "https://x.example/" + "a" * 2040}),
        422,
        "validation_error",
    ),
    ("url-int", body_case({**OK_BODY, "return_url": 42}), 422, "validation_error"),
    (
        "client-amount",
        body_case({**OK_BODY, "amount": {"value": "1.00", "currency": "RUB"}}),
        422,
        "validation_error",
    ),
    ("client-currency", body_case({**OK_BODY, "currency": "USD"}), 422, "validation_error"),
    ("huge", body_case({**OK_BODY, "pad": "x" * (1024 * 1024)}), 413, "payload_too_large"),
]


@pytest.mark.parametrize(
    ("raw", "status", "code"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
async def test_bad_payment_bodies(api: Api, raw: bytes, status: int, code: str) -> None:
    before = await outbox_count(api)
    resp = await api.client.post(
        "/api/v1/payments",
        content=raw,
        headers={
            **api.auth(new_user()),
            "Idempotency-Key": "k-bad",
            "Content-Type": "application/json",
        },
    )
    assert resp.status_code == status, resp.text
    assert error_code(resp) == code
    assert await outbox_count(api) == before


async def test_validation_details_locate_the_field_and_never_echo_input(api: Api) -> None:
    secret = "https://x.example/ secret-token-123"
    resp = await api.pay(new_user(), body={"plan_id": "monthly", "return_url": secret})
    assert resp.status_code == 422
    details = resp.json()["error"]["details"]
    assert details[0]["loc"] == ["body", "return_url"]
    assert "secret-token-123" not in resp.text


async def test_url_of_exactly_2048_chars_is_accepted(api: Api) -> None:
    url = "https://x.example/" + "a" * (2048 - len("https://x.example/"))
    resp = await api.pay(new_user(), body={"plan_id": "monthly", "return_url": url})
    assert resp.status_code == 202, resp.text


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_wrong_content_type_is_415(api: Api, content_type: str | None) -> None:
    headers = {**api.auth(new_user()), "Idempotency-Key": "k-ct"}
    if content_type:
        headers["Content-Type"] = content_type
    resp = await api.client.post(
        "/api/v1/payments", content=json.dumps(OK_BODY).encode(), headers=headers
    )
    assert resp.status_code == 415
    assert error_code(resp) == "unsupported_media_type"


async def test_json_content_type_with_charset_is_fine(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/payments",
        content=json.dumps(OK_BODY).encode(),
        headers={
            **api.auth(new_user()),
            "Idempotency-Key": "k-charset",
            "Content-Type": "application/json; charset=utf-8",
        },
    )
    assert resp.status_code == 202, resp.text


async def test_huge_body_without_content_length_is_413(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"plan_id": "monthly", "pad": "'
        for _ in range(64):
            yield b"x" * 8192
        yield b'"}'

    resp = await api.client.post(
        "/api/v1/payments",
        content=chunks(),
        headers={
            **api.auth(new_user()),
            "Idempotency-Key": "k-stream",
            "Content-Type": "application/json",
        },
    )
    assert resp.status_code == 413
    assert error_code(resp) == "payload_too_large"


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "code"),
    [
        ("GET", "/api/v1/payments/not-a-uuid", None, 422, "validation_error"),
        ("GET", "/api/v1/payments/12345", None, 422, "validation_error"),
        ("GET", "/api/v1/payments", {"limit": "0"}, 422, "validation_error"),
        ("GET", "/api/v1/payments", {"limit": "101"}, 422, "validation_error"),
        ("GET", "/api/v1/payments", {"limit": "ten"}, 422, "validation_error"),
        ("GET", "/api/v1/payments", {"status": "paid-ish"}, 422, "validation_error"),
        # Not the shape of a cursor (the document says base64url): 422; well-formed but not
        # one this API issued: 400.
        ("GET", "/api/v1/payments", {"cursor": "!!!not-base64!!!"}, 422, "validation_error"),
        ("GET", "/api/v1/payments", {"cursor": "Zm9vfGJhcg"}, 400, "invalid_cursor"),
        ("GET", "/api/v1/payments", {"cursor": "x" * 300}, 422, "validation_error"),
        ("GET", "/api/v1/nothing-here", None, 404, "not_found"),
        ("DELETE", "/api/v1/plans", None, 405, "method_not_allowed"),
        ("PUT", "/api/v1/payments", None, 405, "method_not_allowed"),
    ],
)
async def test_bad_paths_and_queries(
    api: Api,
    method: str,
    path: str,
    params: dict[str, str] | None,
    status: int,
    code: str,
) -> None:
    resp = await api.client.request(method, path, params=params, headers=api.auth(new_user()))
    assert resp.status_code == status, resp.text
    assert error_code(resp) == code


async def test_database_down_is_503_not_500(api: Api, module_pg_dsn: str) -> None:
    # An app pointed at a database that does not exist: every connection attempt fails.
    app = create_app(
        api_settings(dsn_with_database(module_pg_dsn, "no_such_database_here")),
        publisher=api.publisher,
        provider=api.provider,
        normalise=fake_normalise,
        relay=False,
        pool_timeout_s=0.5,
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        live = await client.get("/healthz")
        ready = await client.get("/readyz")
        plans = await client.get("/api/v1/plans")
        pay = await client.post(
            "/api/v1/payments",
            json=OK_BODY,
            headers={**api.auth(new_user()), "Idempotency-Key": "k-db"},
        )
    assert live.status_code == 200
    assert ready.status_code == 503 and error_code(ready) == "not_ready"
    assert plans.status_code == 503 and error_code(plans) == "database_unavailable"
    assert pay.status_code == 503 and error_code(pay) == "database_unavailable"
