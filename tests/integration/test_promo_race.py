"""Promo codes against the real PostgreSQL (issue 16): the last redemption raced by 20 users
(one gets it), a replay or a refusal counting nothing, the quote equal to the charge, each
refusal's code, and the admin's codes and redemptions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from schemas.messages import PaySubscription
from schemas.money import Money
from schemas.promo import charge_for
from tests.integration.api_support import (
    RETURN_URL,
    Api,
    Ledger,
    error_code,
    new_user,
    running_api,
)

pytestmark = pytest.mark.integration

ADMIN = "promo-admin"


def unique_code(prefix: str = "P") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}".upper()


async def create_code(api: Api, **fields: Any) -> httpx.Response:
    body = {
        "code": unique_code(),
        "discount": {"kind": "percent", "percent": 20},
        "reason": "test",
        **fields,
    }
    return await api.client.post(
        "/api/v1/admin/promo-codes",
        json=body,
        headers={**api.auth(ADMIN, admin=True), "Idempotency-Key": str(uuid.uuid4())},
    )


async def new_code(api: Api, **fields: Any) -> str:
    resp = await create_code(api, **fields)
    assert resp.status_code == 201, resp.text
    code: str = resp.json()["code"]
    return code


def pay_body(code: str | None, plan_id: str = "monthly", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"plan_id": plan_id, "return_url": RETURN_URL, **extra}
    if code is not None:
        body["promo_code"] = code
    return body


async def redeemed(api: Api, code: str) -> tuple[int, int]:
    """(the code's count, its redemption rows)."""
    async with api.pool.connection() as conn:
        cur = await conn.execute("SELECT redeemed FROM promo_codes WHERE code = %s", (code,))
        row = await cur.fetchone()
        assert row is not None
        cur = await conn.execute("SELECT count(*) FROM promo_redemptions WHERE code = %s", (code,))
        rows = await cur.fetchone()
        assert rows is not None
        return int(row[0]), int(rows[0])


def command_of(api: Api, payment_id: str) -> PaySubscription:
    for _, cmd in api.publisher.commands():
        if isinstance(cmd, PaySubscription) and cmd.payment_id == payment_id:
            return cmd
    raise AssertionError(f"no command for {payment_id}")


@pytest.fixture
async def wide_api(module_pg_dsn: str) -> AsyncIterator[Api]:
    """An API whose pool holds all 20 racers' transactions at once."""
    async with running_api(module_pg_dsn, api_pool_size=24) as a:
        yield a


async def waiting_on_the_code(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE 'UPDATE promo_codes SET redeemed%'"
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def test_twenty_users_race_for_the_last_redemption_and_one_gets_it(
    wide_api: Api, module_pg_dsn: str
) -> None:
    """A true race: the code's row is held while 20 payments get past every check and wait
    on its count together; released, exactly one takes the last redemption."""
    api = wide_api
    code = await new_code(api, max_redemptions=3)
    for _ in range(2):  # two taken before the race: one left
        assert (await api.pay(new_user(), body=pay_body(code))).status_code == 202
    users = [new_user() for _ in range(20)]
    connect = psycopg.AsyncConnection.connect
    async with (
        await connect(module_pg_dsn, autocommit=True) as holder,
        await connect(module_pg_dsn, autocommit=True) as watcher,  # fresh statistics each time
    ):
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM promo_codes WHERE code = %s FOR NO KEY UPDATE", (code,)
            )
            racers = [asyncio.create_task(api.pay(u, body=pay_body(code))) for u in users]
            waiting = 0
            for _ in range(200):
                waiting = await waiting_on_the_code(watcher)
                if waiting == len(users):
                    break
                await asyncio.sleep(0.05)
            assert waiting == len(users), f"only {waiting} racers reached the count together"
        answers = await asyncio.gather(*racers)
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] + [422] * 19, [r.text for r in answers if r.status_code != 422]
    assert {error_code(r) for r in answers if r.status_code == 422} == {"promo_exhausted"}
    assert await redeemed(api, code) == (3, 3)
    await api.settle()
    winner = next(r for r in answers if r.status_code == 202).json()["payment_id"]
    assert command_of(api, winner).promo is not None
    # The refused ones left no command and no redemption row behind.
    async with api.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM command_outbox WHERE user_id = ANY(%s)", (users,)
        )
        row = await cur.fetchone()
    assert row is not None and row[0] == 1


async def test_a_replay_counts_once_and_a_refusal_counts_nothing(api: Api) -> None:
    code = await new_code(api, max_redemptions=5)
    user = new_user()
    first = await api.pay(user, "same-key", body=pay_body(code.lower()))  # any case
    again = await api.pay(user, "same-key", body=pay_body(code.lower()))
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.headers.get("idempotent-replayed") == "true"
    assert await redeemed(api, code) == (1, 1)
    twice = await api.pay(user, "other-key", body=pay_body(code))
    assert twice.status_code == 422 and error_code(twice) == "promo_already_used"
    trial = await api.pay(new_user(), body=pay_body(code, trial=True))
    assert trial.status_code == 422
    assert error_code(trial) in ("promo_not_with_trial", "no_trial")
    assert await redeemed(api, code) == (1, 1)


async def test_the_quote_is_what_the_payment_charges(api: Api) -> None:
    code = await new_code(
        api, discount={"kind": "fixed", "amount": {"value": "50.00", "currency": "RUB"}}, periods=3
    )
    user = new_user()
    quoted = await api.client.get(
        "/api/v1/plans/monthly/quote", params={"promo_code": code}, headers=api.auth(user)
    )
    assert quoted.status_code == 200, quoted.text
    q = quoted.json()
    assert q["discount"]["value"] == "50.00" and q["discounted_periods"] == 3
    assert q["amount_minor"] == int(q["price"]["value"].replace(".", "")) - 5000
    paid = await api.pay(user, body=pay_body(code))
    assert paid.status_code == 202, paid.text
    await api.settle()
    cmd = command_of(api, paid.json()["payment_id"])
    assert charge_for(cmd.amount, cmd.promo) == Money(q["amount_minor"], "RUB")
    plain = await api.client.get("/api/v1/plans/monthly/quote", headers=api.auth(user))
    assert plain.json()["charge"] == plain.json()["price"]
    # Now used: the quote says so, as the payment would.
    used = await api.client.get(
        "/api/v1/plans/monthly/quote", params={"promo_code": code}, headers=api.auth(user)
    )
    assert used.status_code == 422 and error_code(used) == "promo_already_used"


async def test_each_refusal_has_its_code(api: Api) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    expiring = await new_code(api, expires_at=soon.isoformat())
    yearly_only = await new_code(api, plan_ids=["yearly"])
    archived = await new_code(api)
    resp = await api.client.post(
        f"/api/v1/admin/promo-codes/{archived.lower()}/archive",
        json={"reason": "over"},
        headers={**api.auth(ADMIN, admin=True), "Idempotency-Key": str(uuid.uuid4())},
    )
    assert resp.status_code == 200 and resp.json()["archived"] is True
    await asyncio.sleep(1.1)
    for code, expected in [
        ("NOSUCHCODE1", "promo_not_found"),
        (expiring, "promo_expired"),
        (archived, "promo_expired"),
        (yearly_only, "promo_not_for_plan"),
    ]:
        answer = await api.pay(new_user(), body=pay_body(code))
        assert answer.status_code == 422 and error_code(answer) == expected, answer.text
        assert (
            answer.json()["error"]["details"] is None
            or "code" in answer.json()["error"]["details"]
            or expected == "promo_not_found"
        )
    assert (await api.pay(new_user(), body=pay_body(yearly_only, "yearly"))).status_code == 202


async def test_admin_codes_are_unique_in_any_case_and_list_their_redemptions(
    api: Api, ledger: Ledger
) -> None:
    code = await new_code(api, periods=1)
    dup = await create_code(api, code=code.lower())
    assert dup.status_code == 409 and error_code(dup) == "promo_exists"
    past = await create_code(api, expires_at="2020-01-01T00:00:00Z")
    assert past.status_code == 422 and error_code(past) == "promo_expiry_in_past"
    unknown_plan = await create_code(api, plan_ids=["no-such-plan"])
    assert unknown_plan.status_code == 404
    user = new_user()
    paid = await api.pay(user, body=pay_body(code))
    assert paid.status_code == 202
    await ledger.drain(user)
    await ledger.observe(user, paid.json()["payment_id"], "succeeded")
    admin = api.auth(ADMIN, admin=True)
    listed = await api.client.get("/api/v1/admin/promo-codes", headers=admin)
    mine = next(c for c in listed.json() if c["code"] == code)
    assert (mine["redeemed"], mine["duration"], mine["percent"]) == (1, "once", 20)
    rows = await api.client.get(f"/api/v1/admin/promo-codes/{code}/redemptions", headers=admin)
    assert rows.status_code == 200
    [row] = rows.json()
    assert row["user_id"] == user and row["payment_status"] == "succeeded"
    assert row["charged"]["value"] == "239.20" and row["discount"]["value"] == "59.80"
    missing = await api.client.get("/api/v1/admin/promo-codes/NOPE123/redemptions", headers=admin)
    assert missing.status_code == 404 and error_code(missing) == "promo_not_found"


async def test_the_subscription_says_the_next_charge_is_discounted(
    api: Api, ledger: Ledger
) -> None:
    code = await new_code(api, periods=3)
    user = new_user()
    paid = await api.pay(user, body=pay_body(code))
    assert paid.status_code == 202, paid.text
    await ledger.drain(user)
    await ledger.observe(user, paid.json()["payment_id"], "succeeded")
    sub = (await api.client.get("/api/v1/subscriptions/me", headers=api.auth(user))).json()
    assert sub["promo_code"] == code and sub["promo_periods_left"] == 2
    assert sub["next_charge_amount"] == {"value": "239.20", "currency": "RUB"}, sub
    # Without a code, the plan's price.
    other = new_user()
    await ledger.subscribe(other)
    plain = (await api.client.get("/api/v1/subscriptions/me", headers=api.auth(other))).json()
    assert plain["promo_code"] is None
    assert plain["next_charge_amount"] == {"value": "299.00", "currency": "RUB"}, plain


async def test_a_payment_the_ledger_refuses_gives_its_redemption_back(
    api: Api, ledger: Ledger
) -> None:
    code = await new_code(api, max_redemptions=1)
    user = new_user()
    first = await api.pay(user, body=pay_body(None))  # in flight: the next one is refused
    assert first.status_code == 202
    await ledger.drain(user)
    second = await api.pay(user, body=pay_body(code))
    assert second.status_code == 202
    assert await redeemed(api, code) == (1, 1)
    events = await ledger.drain(user)
    assert [getattr(e, "reason", None) for e in events] == ["payment_in_progress"]
    assert await redeemed(api, code) == (0, 0)  # nothing was charged with it: free again
    await ledger.observe(user, first.json()["payment_id"], "canceled", reason="expired")
    again = await api.pay(user, body=pay_body(code))
    assert again.status_code == 202, again.text
    assert await redeemed(api, code) == (1, 1)
