"""Pure pieces of the API: request fingerprints, advisory-lock keys, Idempotency-Key parsing,
pagination cursors, return-URL validation and the webhook source address."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError

from api.deps import IDEMPOTENCY_KEY_PATTERN, IdempotencyKey
from api.errors import InvalidCursor
from api.errors import install as install_errors
from api.intake import advisory_lock_key, fingerprint
from api.queries import decode_cursor, encode_cursor
from api.routes.webhooks import source_ip
from billing.config import Settings
from schemas.http import PaymentCreate


def test_fingerprint_is_canonical_and_covers_method_and_path() -> None:
    a = fingerprint("POST", "/api/v1/payments", {"plan_id": "m", "return_url": "https://x"})
    b = fingerprint("post", "/api/v1/payments", {"return_url": "https://x", "plan_id": "m"})
    assert a == b
    assert a != fingerprint("PUT", "/api/v1/payments", {"plan_id": "m", "return_url": "https://x"})
    assert a != fingerprint("POST", "/api/v2/payments", {"plan_id": "m", "return_url": "https://x"})
    assert a != fingerprint("POST", "/api/v1/payments", {"plan_id": "y", "return_url": "https://x"})


def test_advisory_lock_key_is_a_stable_signed_bigint_per_user_and_key() -> None:
    k = advisory_lock_key("alice", "k1")
    assert k == advisory_lock_key("alice", "k1")
    assert -(2**63) <= k < 2**63
    assert k != advisory_lock_key("bob", "k1")
    assert k != advisory_lock_key("alice", "k2")
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert advisory_lock_key("ab", "c") != advisory_lock_key("a", "bc")


def key_app() -> FastAPI:
    """A route that takes the Idempotency-Key as every write does, with the API's errors."""
    app = FastAPI()
    install_errors(app)

    @app.post("/w")
    async def write(key: IdempotencyKey) -> dict[str, str]:
        return {"key": key}

    return app


async def send_key(raw: str | None) -> httpx.Response:
    headers = {} if raw is None else {b"Idempotency-Key": raw.encode("latin-1")}
    transport = httpx.ASGITransport(app=key_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post("/w", headers=headers)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("abc", "abc"), ('"abc"', "abc"), ('""', '""'), ("a b", "a b"), ("k" * 255, "k" * 255)],
)
async def test_idempotency_key_accepted(raw: str, expected: str) -> None:
    resp = await send_key(raw)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"key": expected}
    assert re.fullmatch(IDEMPOTENCY_KEY_PATTERN, raw)  # what the OpenAPI document says


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, "idempotency_key_missing"),
        ("", "idempotency_key_missing"),
        ("   ", "idempotency_key_missing"),
        ("k" * 256, "idempotency_key_invalid"),
        ("a\tb", "idempotency_key_invalid"),
        (" abc", "idempotency_key_invalid"),
        ("caf\u00e9", "idempotency_key_invalid"),
    ],
)
async def test_idempotency_key_refused(raw: str | None, code: str) -> None:
    resp = await send_key(raw)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == code
    assert raw is None or not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, raw)


def test_cursor_round_trip() -> None:
    at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    pid = "0b6f6c3a-7a7e-4c55-9b5e-3a1f2d7c9e10"
    got_at, got_pid = decode_cursor(encode_cursor(at, pid))
    assert (got_at, str(got_pid)) == (at, pid)


@pytest.mark.parametrize(
    "cursor",
    ["", "!!!", "Zm9v", encode_cursor(datetime(2026, 1, 1), "not-a-uuid"), "bm9ufGJhZA"],
)
def test_bad_cursor(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor)


@pytest.mark.parametrize(
    "url",
    ["https://cinema.example/back", "http://127.0.0.1:8000/x?y=1#z", "https://a.b/" + "c" * 2030],
)
def test_return_url_accepted(url: str) -> None:
    assert PaymentCreate(plan_id="monthly", return_url=url).return_url == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x.example/",
        "javascript:alert(1)",
        "//x.example/",
        "https://",
        "https://x.example:bad/",
        "https://x.example/a b",
        "https://x.example/\n",
        "https://a.b/" + "c" * 2040,
        "https://x.example:99999/",
        "https://user@x.example/",
        "https://x.example/\u00e9",
        "https://x.example\n",
    ],
)
def test_return_url_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        PaymentCreate(plan_id="monthly", return_url=url)


def fake_request(peer: str | None, forwarded: str | None = None) -> Any:
    headers = {"x-forwarded-for": forwarded} if forwarded is not None else {}
    client = SimpleNamespace(host=peer) if peer is not None else None
    return SimpleNamespace(client=client, headers=headers)


@pytest.mark.parametrize(
    ("trust", "peer", "forwarded", "expected"),
    [
        (False, "1.2.3.4", "5.6.7.8", "1.2.3.4"),
        (True, "1.2.3.4", "9.9.9.9, 5.6.7.8", "5.6.7.8"),
        (True, "1.2.3.4", None, "1.2.3.4"),
        (False, "::ffff:10.1.2.3", None, "10.1.2.3"),
        (False, None, None, None),
        (False, "testclient", None, None),
        (True, "1.2.3.4", "bogus", None),
    ],
)
def test_source_ip(
    trust: bool, peer: str | None, forwarded: str | None, expected: str | None
) -> None:
    settings = Settings(
        env="test", jwt_secret=SecretStr("x" * 32), webhook_trust_forwarded_for=trust
    )
    ip = source_ip(fake_request(peer, forwarded), settings)
    assert (str(ip) if ip is not None else None) == expected
