"""Where a 54-FZ receipt's contact comes from (issue 16): the request's, else the profile's,
else the sign-on token's verified email; nothing valid is no contact (the API's 422)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.auth import Principal, _with_email
from api.intake import receipt_customer
from schemas.messages import ReceiptCustomer


class Cursor:
    def __init__(self, row: tuple[Any, ...] | None) -> None:
        self.row = row

    async def fetchone(self) -> tuple[Any, ...] | None:
        return self.row


class Conn:
    """Answers the profile lookup with ``row``; counts the lookups."""

    def __init__(self, row: tuple[Any, ...] | None) -> None:
        self.row = row
        self.lookups = 0

    async def execute(self, sql: str, params: tuple[Any, ...]) -> Cursor:
        assert "user_profiles" in sql
        self.lookups += 1
        return Cursor(self.row)


def resolve(
    conn: Any, token: str | None, email: str | None = None, phone: str | None = None
) -> ReceiptCustomer | None:
    return asyncio.run(receipt_customer(conn, "u-1", token, email, phone))


PROFILE = ("saved@example.com", "79001234567")


def test_the_request_wins_and_skips_the_profile() -> None:
    conn = Conn(PROFILE)
    assert resolve(conn, "token@example.com", email="asked@example.com") == ReceiptCustomer(
        email="asked@example.com"
    )
    assert conn.lookups == 0


def test_the_profile_then_the_token() -> None:
    assert resolve(Conn(PROFILE), "token@example.com") == ReceiptCustomer(
        email="saved@example.com", phone="79001234567"
    )
    assert resolve(Conn((None, "79001234567")), "t@example.com") == ReceiptCustomer(
        phone="79001234567"
    )
    assert resolve(Conn(None), "token@example.com") == ReceiptCustomer(email="token@example.com")


@pytest.mark.parametrize("token", [None, "not-an-email"])
def test_nothing_valid_is_no_contact(token: str | None) -> None:
    assert resolve(Conn(None), token) is None


def test_the_token_email_is_taken_unless_the_provider_says_it_is_unverified() -> None:
    user = Principal("u-1", frozenset())
    assert _with_email(user, {"email": "a@example.com"}).email == "a@example.com"
    assert _with_email(user, {"email": "a@example.com", "email_verified": True}).email
    assert _with_email(user, {"email": "a@example.com", "email_verified": False}).email is None
    assert _with_email(user, {"email": 5}).email is None
    assert _with_email(user, {}).email is None
