"""The console's API client against a scripted transport: headers, the retry policy (same
Idempotency-Key on every attempt, only for answers another attempt may change), errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from dashboard.client import (
    AdminClient,
    ApiError,
    ApiUnreachable,
    BadResponse,
    RetryPolicy,
    SessionExpired,
)
from schemas.http import AdminRefundCreate, MoneyIn

PAYMENT = str(uuid.uuid4())
SUB = str(uuid.uuid4())
ACCEPTED = {
    "command_id": str(uuid.uuid4()),
    "refund_id": str(uuid.uuid4()),
    "payment_id": PAYMENT,
    "subscription_id": SUB,
    "status": "accepted",
    "status_url": "/api/v1/admin/commands/x",
}


def error(status: int, code: str, **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": code.replace("_", " "), "details": None}}
    return httpx.Response(status, json=body, headers=headers)


class Script:
    """Answers requests in order; records them."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(script: Callable[[httpx.Request], httpx.Response], **kw: Any) -> AdminClient:
    sleeps: list[float] = []
    c = AdminClient(
        "http://api.test",
        token="tok",
        transport=httpx.MockTransport(script),
        sleep=sleeps.append,
        jitter=lambda: 1.0,
        **kw,
    )
    c.sleeps = sleeps  # type: ignore[attr-defined]
    return c


def refund(c: AdminClient, key: str = "key-1") -> Any:
    return c.refund(PAYMENT, AdminRefundCreate(reason="because"), key)


def test_a_write_sends_the_token_the_key_and_the_body() -> None:
    script = Script(httpx.Response(202, json=ACCEPTED))
    out = refund(client(script))
    assert out.refund_id == ACCEPTED["refund_id"]
    (req,) = script.requests
    assert req.method == "POST"
    assert req.url.path == f"/api/v1/admin/payments/{PAYMENT}/refunds"
    assert req.headers["authorization"] == "Bearer tok"
    assert req.headers["idempotency-key"] == "key-1"
    assert json.loads(req.content) == {"reason": "because"}  # no amount: a full refund


def test_a_partial_refund_sends_the_amount_as_a_decimal_string() -> None:
    script = Script(httpx.Response(202, json=ACCEPTED))
    body = AdminRefundCreate(amount=MoneyIn(value="100.00", currency="RUB"), reason="r")
    client(script).refund(PAYMENT, body, "k")
    assert json.loads(script.requests[0].content)["amount"] == {
        "value": "100.00",
        "currency": "RUB",
    }


@pytest.mark.parametrize(
    "first",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        error(409, "idempotency_key_in_flight", **{"Retry-After": "1"}),
        error(503, "database_unavailable"),
        error(502, "http_502"),
    ],
    ids=["connect", "timeout", "in-flight", "503", "502"],
)
def test_an_unknown_outcome_is_retried_with_the_same_key(first: Any) -> None:
    script = Script(
        first, httpx.Response(202, json=ACCEPTED, headers={"Idempotent-Replayed": "true"})
    )
    c = client(script)
    refund(c)
    keys = [r.headers["idempotency-key"] for r in script.requests]
    assert keys == ["key-1", "key-1"]
    assert len(c.sleeps) == 1  # type: ignore[attr-defined]
    assert c.last_replayed is True


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (422, "idempotency_key_reused"),
        (422, "refund_invalid"),
        (409, "conflict"),
        (404, "payment_not_found"),
        (403, "forbidden"),
        (503, "analytics_unavailable"),
    ],
)
def test_a_definitive_answer_is_not_retried(status: int, code: str) -> None:
    script = Script(error(status, code))
    with pytest.raises(ApiError) as info:
        refund(client(script))
    assert (info.value.status, info.value.code) == (status, code)
    assert not info.value.retryable
    assert len(script.requests) == 1


def test_retries_are_bounded_and_back_off() -> None:
    script = Script(*(httpx.ConnectError("down") for _ in range(3)))
    c = client(script, retry=RetryPolicy(max_retries=2, base_s=0.5, cap_s=5.0))
    with pytest.raises(ApiUnreachable):
        refund(c)
    assert len(script.requests) == 3
    assert c.sleeps == [0.5, 1.0]  # type: ignore[attr-defined]


def test_backoff_is_capped_and_honours_retry_after_within_the_cap() -> None:
    policy = RetryPolicy(max_retries=9, base_s=0.5, cap_s=5.0)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay_s(1, jitter=0.0) == 0.25  # jitter halves at most
    assert policy.delay_s(1, retry_after_s=3.0) == 3.0
    assert policy.delay_s(1, retry_after_s=60.0) == 5.0


def test_a_write_without_a_key_is_refused_before_sending() -> None:
    script = Script()
    with pytest.raises(ValueError, match="Idempotency-Key"):
        client(script).request("POST", "/api/v1/admin/plans", json={})
    assert script.requests == []


def test_401_is_a_session_expired_error() -> None:
    script = Script(error(401, "token_expired"))
    with pytest.raises(SessionExpired):
        client(script).plans()


def test_an_unexpected_body_is_a_bad_response_not_a_crash() -> None:
    script = Script(httpx.Response(200, json={"items": "nope"}))
    with pytest.raises(BadResponse):
        client(script).subscriptions()


def test_an_error_without_the_json_shape_keeps_the_status() -> None:
    script = Script(httpx.Response(500, text="boom"))
    with pytest.raises(ApiError) as info:
        client(script).plans()
    assert info.value.status == 500 and info.value.code == "http_500"


def test_query_parameters_are_encoded_and_empty_filters_dropped() -> None:
    script = Script(
        httpx.Response(200, json={"items": [], "next_offset": None}),
        httpx.Response(200, json=[]),
    )
    c = client(script)
    c.discrepancies(open_only=False, kinds=["amount_mismatch", "duplicate_charge"], offset=100)
    c.revenue(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    first, second = script.requests
    assert first.url.params.get_list("kind") == ["amount_mismatch", "duplicate_charge"]
    assert first.url.params["open_only"] == "false"
    assert "run_id" not in first.url.params
    assert second.url.params["from"] == "2026-01-01T00:00:00+00:00"


def test_ids_in_paths_must_be_what_the_api_names() -> None:
    c = client(Script())
    with pytest.raises(ValueError):
        c.subscription("../admin/plans")
    with pytest.raises(ValueError):
        c.archive_plan("../x", "r", "k")


def test_wait_command_polls_until_done() -> None:
    def command(status: str) -> httpx.Response:
        now = "2026-11-25T10:00:00Z"
        return httpx.Response(
            200,
            json={
                "command_id": ACCEPTED["command_id"],
                "command_type": "RefundPayment",
                "subscription_id": SUB,
                "user_id": "u",
                "payment_id": PAYMENT,
                "status": status,
                "status_reason": None,
                "publish_attempts": 1,
                "published_at": now,
                "next_publish_at": now,
                "last_error": None,
                "created_at": now,
                "updated_at": now,
            },
        )

    script = Script(command("accepted"), command("processing"), command("done"))
    c = client(script)
    assert c.wait_command(ACCEPTED["command_id"], timeout_s=10, interval_s=0.1).status == "done"
    assert len(script.requests) == 3


def test_login_posts_credentials_without_a_key() -> None:
    script = Script(
        httpx.Response(
            200,
            json={
                "access_token": "t",
                "token_type": "bearer",
                "expires_in": 900,
                "expires_at": "2026-11-25T10:15:00Z",
                "user_id": "ops",
                "roles": ["admin"],
            },
        )
    )
    c = AdminClient("http://api.test", transport=httpx.MockTransport(script))
    out = c.login("ops", "secret")
    assert out.access_token == "t"
    (req,) = script.requests
    assert "idempotency-key" not in req.headers and "authorization" not in req.headers
    assert json.loads(req.content) == {"username": "ops", "password": "secret"}


def test_a_wrong_password_is_not_retried() -> None:
    script = Script(error(400, "invalid_credentials"))
    c = AdminClient("http://api.test", transport=httpx.MockTransport(script), sleep=lambda s: None)
    with pytest.raises(ApiError) as info:
        c.login("ops", "nope")
    assert info.value.code == "invalid_credentials" and len(script.requests) == 1
