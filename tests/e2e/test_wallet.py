"""The wallet through the whole stack (issue 16): a card added through a card check (held,
saved, released: nothing captured) becomes the default with its displayable details; the
default changed and a card deleted between renewals; the renewal charges the default in force
and the deleted card is never charged. Invariants checked after."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from schemas.periods import dt_to_ms
from tests.e2e.client import get, headers, paid_user, ts, wait_status
from tests.e2e.harness import Stack, wait_until
from tests.e2e.invariants import check_invariants

pytestmark = [pytest.mark.e2e]

HOUR_MS = 3_600_000


def wallet(stack: Stack, user: str) -> list[dict[str, Any]]:
    resp = get(stack, user, "/api/v1/payment-methods")
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def default_of(stack: Stack, user: str) -> str | None:
    return next((m["method_id"] for m in wallet(stack, user) if m["default"]), None)


def write(stack: Stack, user: str, method: str, path: str, **kw: Any) -> httpx.Response:
    resp = httpx.request(
        method,
        f"{stack.api_url}/api/v1/payment-methods{path}",
        headers=headers(stack, user, str(uuid.uuid4())),
        timeout=10,
        **kw,
    )
    assert resp.status_code == 202, resp.text
    return resp


def provider_charges(stack: Stack) -> list[dict[str, Any]]:
    payments: list[dict[str, Any]] = stack.control.objects().get("payments", [])
    return payments


def test_a_wallet_change_between_renewals(stack: Stack) -> None:
    user, first = paid_user(stack, "wallet-")
    wait_until(lambda: len(wallet(stack, user)) == 1, message="the first card in the wallet")
    card_a = wallet(stack, user)[0]
    assert card_a["default"] and card_a["last4"] == "4444" and card_a["expiry_year"] == "2030"

    # A new card through a card check: held, saved, released; it becomes the default.
    check = write(stack, user, "POST", "", json={"return_url": "https://cinema.example/w"})
    check_id = check.json()["payment_id"]
    pending = wait_status(stack, user, check_id, "pending")
    assert pending["amount"] == {"value": "1.00", "currency": "RUB"}
    stack.control.confirm(pending["provider_payment_id"], "succeed")
    wait_status(stack, user, check_id, "canceled")
    wait_until(lambda: len(wallet(stack, user)) == 2, message="the second card")
    card_b = next(m for m in wallet(stack, user) if m["method_id"] != card_a["method_id"])
    assert default_of(stack, user) == card_b["method_id"]
    check_obj = next(p for p in provider_charges(stack) if p["id"] == card_b["method_id"])
    assert check_obj["status"] == "canceled" and "captured_at" not in check_obj

    # Between renewals: back to card A, and card B deleted.
    write(stack, user, "PUT", f"/{card_a['method_id']}/default")
    wait_until(lambda: default_of(stack, user) == card_a["method_id"], message="A default")
    write(stack, user, "DELETE", f"/{card_b['method_id']}")
    wait_until(
        lambda: [m["method_id"] for m in wallet(stack, user)] == [card_a["method_id"]],
        message="B deleted",
    )
    # Someone else's (or a deleted) method is not found.
    gone = httpx.delete(
        f"{stack.api_url}/api/v1/payment-methods/{card_b['method_id']}",
        headers=headers(stack, user, str(uuid.uuid4())),
        timeout=10,
    )
    assert gone.status_code == 404, gone.text

    # The renewal (charged a day ahead, spread by at most 12 h) uses the default in force.
    period_end = ts(get(stack, user, "/api/v1/subscriptions/me").json()["period_end"])
    stack.advance_clock(dt_to_ms(period_end) - 11 * HOUR_MS - stack.now_ms())

    def renewal() -> dict[str, Any] | None:
        return next(
            (
                p
                for p in provider_charges(stack)
                if p.get("metadata", {}).get("payment_id") not in (first, check_id)
                and p["status"] == "succeeded"
                and p.get("metadata", {}).get("subscription_id")
            ),
            None,
        )

    wait_until(lambda: renewal() is not None, timeout=90, message="the renewal charged")
    charged = renewal()
    assert charged is not None and charged["payment_method"]["id"] == card_a["method_id"]
    # The deleted card was never charged: the only provider payment with it is its check.
    b = card_b["method_id"]
    with_b = [p["id"] for p in provider_charges(stack) if p["payment_method"]["id"] == b]
    assert with_b == [b]
    wait_until(
        lambda: ts(get(stack, user, "/api/v1/subscriptions/me").json()["period_end"]) > period_end,
        message="period extended",
    )
    check_invariants(stack, [user])
