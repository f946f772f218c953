"""What a client of the running stack does, for the e2e, chaos and browser tests: sign requests,
pay, read a payment or refund and wait for its status, ask for a refund, and count what the
provider (the emulator) holds. Plain blocking ``httpx`` against ``Stack.api_url``; the stack
itself is in ``tests/e2e/harness.py``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx

from tests.e2e.harness import Stack, wait_until

BODY = {"plan_id": "monthly", "return_url": "https://cinema.example/return"}


def new_user(prefix: str = "u-") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def headers(stack: Stack, user: str, key: str | None = None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {stack.token(user)}"}
    if key is not None:
        h["Idempotency-Key"] = key
    return h


def get(stack: Stack, user: str, path: str) -> httpx.Response:
    return httpx.get(f"{stack.api_url}{path}", headers=headers(stack, user), timeout=10)


def pay(stack: Stack, user: str, key: str | None = None, body: dict[str, Any] = BODY) -> str:
    """Ask to pay (a fresh Idempotency-Key unless ``key``); the payment id of the 202."""
    resp = httpx.post(
        f"{stack.api_url}/api/v1/payments",
        headers=headers(stack, user, key or str(uuid.uuid4())),
        json=body,
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    payment_id: str = resp.json()["payment_id"]
    return payment_id


def payment(stack: Stack, user: str, payment_id: str) -> dict[str, Any]:
    resp = get(stack, user, f"/api/v1/payments/{payment_id}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def wait_status(
    stack: Stack, user: str, payment_id: str, *statuses: str, timeout: float = 60
) -> dict[str, Any]:
    """Poll the payment until its status is one of ``statuses``; the last body read."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(payment(stack, user, payment_id))
        return seen["status"] in statuses

    wait_until(reached, timeout=timeout, message=f"payment {payment_id} in {statuses}")
    return seen


def paid_user(stack: Stack, prefix: str = "u-") -> tuple[str, str]:
    """A new user with a paid, active monthly subscription: (user, payment id)."""
    user = new_user(prefix)
    pid = pay(stack, user)
    pending = wait_status(stack, user, pid, "pending")
    stack.control.confirm(pending["provider_payment_id"], "succeed")
    wait_status(stack, user, pid, "succeeded")
    wait_until(
        lambda: get(stack, user, "/api/v1/subscriptions/me").json().get("active") is True,
        message="subscription active",
    )
    return user, pid


def ask_refund(stack: Stack, user: str, pid: str, value: str | None = None) -> httpx.Response:
    """Ask to refund payment ``pid`` (in full unless ``value``); the raw response."""
    body: dict[str, Any] = {"reason": "e2e"}
    if value is not None:
        body["amount"] = {"value": value, "currency": "RUB"}
    return httpx.post(
        f"{stack.api_url}/api/v1/payments/{pid}/refunds",
        headers=headers(stack, user, str(uuid.uuid4())),
        json=body,
        timeout=10,
    )


def refund_status(stack: Stack, user: str, refund_id: str, *final: str) -> dict[str, Any]:
    """Poll the refund until its status is one of ``final``; the last body read."""
    seen: dict[str, Any] = {}

    def done() -> bool:
        r = get(stack, user, f"/api/v1/refunds/{refund_id}")
        assert r.status_code == 200, r.text
        seen.update(r.json())
        return seen["status"] in final

    wait_until(done, timeout=60, message=f"refund {refund_id} in {final}")
    return seen


def provider_payments(stack: Stack, payment_id: str) -> int:
    """Payments the provider created for our payment id (the charges that could happen)."""
    n: int = stack.control.stats()["by_payment_id"].get(payment_id, 0)
    return n


def provider_refunds(stack: Stack, provider_payment_id: str) -> list[dict[str, Any]]:
    """The provider's refund objects of one provider payment."""
    objects = stack.control.objects()
    refunds: list[dict[str, Any]] = [
        r for r in objects.get("refunds", []) if r.get("payment_id") == provider_payment_id
    ]
    return refunds


def ts(value: str) -> datetime:
    """An API timestamp (ISO 8601, ``Z`` or an offset) as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
