"""Intake against the real PostgreSQL: idempotency matrix, server-side price, the outbox row
and its publish, a down broker, and the relay that recovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from api.relay import relay_once
from schemas.ids import command_id_for, payment_id_for, subscription_id_for
from schemas.messages import PaySubscription, decode_command
from schemas.money import Money
from tests.integration.api_support import RETURN_URL, Api, error_code, new_user, running_api

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
async def healthy_broker(api: Api) -> AsyncIterator[None]:
    api.publisher.fail = False
    api.publisher.hang = False
    yield
    await api.settle()
    api.publisher.fail = False
    api.publisher.hang = False


async def outbox_rows(api: Api, user: str) -> list[dict[str, Any]]:
    async with api.pool.connection() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as c:
        await c.execute(
            "SELECT command_id::text, subscription_id::text, payment_id::text, status,"
            " payload, publish_attempts, published_at, last_error,"
            " extract(epoch FROM next_publish_at - now()) AS due_in_s"
            " FROM command_outbox WHERE user_id = %s ORDER BY created_at",
            (user,),
        )
        return list(await c.fetchall())


async def idempotency_rows(api: Api, user: str) -> list[tuple[Any, ...]]:
    async with api.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT idem_key, command_id::text, response_status FROM idempotency_keys"
            " WHERE user_id = %s",
            (user,),
        )
        return list(await cur.fetchall())


def sent_for(api: Api, user: str) -> list[PaySubscription]:
    out = []
    for key, cmd in api.publisher.commands():
        if isinstance(cmd, PaySubscription) and cmd.user_id == user:
            assert key == cmd.subscription_id.encode()
            out.append(cmd)
    return out


async def test_accepts_writes_outbox_and_idempotency_record_then_publishes(api: Api) -> None:
    user, key = new_user(), "key-accept-1"
    resp = await api.pay(user, key)

    assert resp.status_code == 202, resp.text
    cid = command_id_for(user, key)
    pid = payment_id_for(cid)
    assert resp.json() == {
        "payment_id": pid,
        "subscription_id": subscription_id_for(user),
        "status": "accepted",
        "status_url": f"/api/v1/payments/{pid}",
    }
    assert resp.headers["location"] == f"/api/v1/payments/{pid}"
    assert "idempotent-replayed" not in resp.headers

    [row] = await outbox_rows(api, user)
    assert (row["command_id"], row["payment_id"]) == (cid, pid)
    assert row["status"] == "accepted"
    assert 3.0 < float(row["due_in_s"]) <= 5.0  # relay_delay_s after intake
    cmd = decode_command(bytes(row["payload"]))
    assert isinstance(cmd, PaySubscription)
    assert cmd.amount == Money(29900, "RUB") and cmd.period_months == 1
    assert cmd.return_url == RETURN_URL and cmd.plan_id == "monthly"
    assert abs(cmd.issued_at - time.time() * 1000) < 60_000
    assert await idempotency_rows(api, user) == [(key, cid, 202)]

    await api.settle()
    assert sent_for(api, user) == [cmd]
    [row] = await outbox_rows(api, user)
    assert row["published_at"] is not None and row["publish_attempts"] == 1
    assert row["last_error"] is None


async def test_replay_returns_first_answer_without_a_second_command(api: Api) -> None:
    user, key = new_user(), "key-replay"
    first = await api.pay(user, key)
    await api.settle()
    second = await api.pay(user, key)

    assert second.status_code == 202
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["location"] == first.headers["location"]
    await api.settle()
    assert len(await outbox_rows(api, user)) == 1
    assert len(sent_for(api, user)) == 1


async def test_sf_string_quoted_key_is_the_same_key(api: Api) -> None:
    user = new_user()
    first = await api.pay(user, "abc-123")
    again = await api.pay(user, '"abc-123"')
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()


async def test_same_key_different_body_is_422_and_changes_nothing(api: Api) -> None:
    user, key = new_user(), "key-reuse"
    assert (await api.pay(user, key)).status_code == 202
    resp = await api.pay(user, key, {"plan_id": "yearly", "return_url": RETURN_URL})
    assert resp.status_code == 422
    assert error_code(resp) == "idempotency_key_reused"
    other_url = await api.pay(user, key, {"plan_id": "monthly", "return_url": RETURN_URL + "x"})
    assert error_code(other_url) == "idempotency_key_reused"
    [row] = await outbox_rows(api, user)
    assert decode_command(bytes(row["payload"])).plan_id == "monthly"  # type: ignore[union-attr]


async def test_same_key_for_two_users_is_two_commands(api: Api) -> None:
    alice, bob = new_user(), new_user()
    a = await api.pay(alice, "shared-key")
    b = await api.pay(bob, "shared-key")
    assert a.status_code == b.status_code == 202
    assert a.json()["payment_id"] != b.json()["payment_id"]
    assert "idempotent-replayed" not in b.headers


async def test_missing_key_is_400(api: Api) -> None:
    user = new_user()
    resp = await api.client.post(
        "/api/v1/payments",
        json={"plan_id": "monthly", "return_url": RETURN_URL},
        headers=api.auth(user),
    )
    assert resp.status_code == 400
    assert error_code(resp) == "idempotency_key_missing"
    assert await outbox_rows(api, user) == []


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        ("", 400, "idempotency_key_missing"),
        ("   ", 400, "idempotency_key_missing"),
        ("k" * 256, 400, "idempotency_key_invalid"),
        ("k" * 255, 202, None),
        ("x", 202, None),
    ],
    ids=["empty", "blank", "256-chars", "255-chars", "1-char"],
)
async def test_key_length_bounds(api: Api, key: str, status: int, code: str | None) -> None:
    user = new_user()
    resp = await api.pay(user, key)
    assert resp.status_code == status, resp.text
    if code:
        assert error_code(resp) == code
        assert await outbox_rows(api, user) == []


async def test_twenty_concurrent_same_key_make_exactly_one_command(api: Api) -> None:
    user, key = new_user(), "key-race"
    # A slow broker keeps the first publish in flight, so nothing hides a duplicate publish.
    responses = await asyncio.gather(*(api.pay(user, key) for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    fresh = [
        r for r in responses if r.status_code == 202 and "idempotent-replayed" not in r.headers
    ]
    replays = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    in_flight = [r for r in responses if r.status_code == 409]

    assert len(fresh) == 1, statuses
    assert len(fresh) + len(replays) + len(in_flight) == 20, statuses
    assert all(error_code(r) == "idempotency_key_in_flight" for r in in_flight)
    assert all(r.headers["retry-after"] for r in in_flight)
    assert all(r.json() == fresh[0].json() for r in replays)
    await api.settle()
    assert len(await outbox_rows(api, user)) == 1
    assert len(sent_for(api, user)) == 1
    # After the race, the key replays.
    again = await api.pay(user, key)
    assert again.headers.get("idempotent-replayed") == "true"


async def test_price_comes_from_the_plan_and_client_amounts_are_refused(api: Api) -> None:
    user = new_user()
    resp = await api.pay(
        user,
        body={
            "plan_id": "yearly",
            "return_url": RETURN_URL,
            "amount": {"value": "1.00", "currency": "RUB"},
        },
    )
    assert resp.status_code == 422
    assert error_code(resp) == "validation_error"
    assert await outbox_rows(api, user) == []

    ok = await api.pay(user, body={"plan_id": "yearly", "return_url": RETURN_URL})
    assert ok.status_code == 202
    [row] = await outbox_rows(api, user)
    cmd = decode_command(bytes(row["payload"]))
    assert isinstance(cmd, PaySubscription)
    assert (cmd.amount, cmd.period_months) == (Money(299000, "RUB"), 12)


async def test_unknown_and_archived_plans(api: Api) -> None:
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO plans (plan_id, name, amount_minor, currency, period_months, archived)"
            " VALUES ('legacy', 'Old plan', 19900, 'RUB', 1, true) ON CONFLICT DO NOTHING"
        )
    user = new_user()
    missing = await api.pay(user, body={"plan_id": "platinum", "return_url": RETURN_URL})
    assert missing.status_code == 404 and error_code(missing) == "plan_not_found"
    archived = await api.pay(user, body={"plan_id": "legacy", "return_url": RETURN_URL})
    assert archived.status_code == 422 and error_code(archived) == "plan_unavailable"
    assert await outbox_rows(api, user) == []
    assert await idempotency_rows(api, user) == []


async def test_broker_down_still_202_quickly_and_relay_publishes_later(api: Api) -> None:
    user = new_user()
    api.publisher.hang = True  # unreachable broker: the publish would wait forever
    started = time.monotonic()
    resp = await api.pay(user)
    elapsed = time.monotonic() - started

    assert resp.status_code == 202
    assert elapsed < api.settings.publish_timeout_s  # the answer never waits for the broker
    await api.settle()  # the background publish gives up after publish_timeout_s
    [row] = await outbox_rows(api, user)
    assert row["published_at"] is None
    assert "publish failed" in row["last_error"]
    assert sent_for(api, user) == []

    api.publisher.hang = False
    api.publisher.fail = True
    async with api.pool.connection() as conn:
        await conn.execute(
            "UPDATE command_outbox SET next_publish_at = now() WHERE user_id = %s", (user,)
        )
    assert await relay_once(api.pool, api.publisher, api.settings) == 0
    [row] = await outbox_rows(api, user)
    assert row["publish_attempts"] == 2 and row["published_at"] is None
    assert "broker down" in row["last_error"]
    assert float(row["due_in_s"]) > 0  # backed off, not hammered

    api.publisher.fail = False
    async with api.pool.connection() as conn:
        await conn.execute(
            "UPDATE command_outbox SET next_publish_at = now() WHERE user_id = %s", (user,)
        )
    assert await relay_once(api.pool, api.publisher, api.settings) >= 1
    [row] = await outbox_rows(api, user)
    assert row["published_at"] is not None and row["last_error"] is None
    [cmd] = sent_for(api, user)
    assert cmd.payment_id == resp.json()["payment_id"]


async def test_relay_republishes_unprocessed_commands_with_backoff(api: Api) -> None:
    user = new_user()
    await api.pay(user)
    await api.settle()
    assert len(sent_for(api, user)) == 1
    # Not due yet: relay_delay_s has not passed.
    await relay_once(api.pool, api.publisher, api.settings)
    assert len(sent_for(api, user)) == 1

    delays = []
    for _ in range(3):
        async with api.pool.connection() as conn:
            await conn.execute(
                "UPDATE command_outbox SET next_publish_at = now() WHERE user_id = %s", (user,)
            )
        await relay_once(api.pool, api.publisher, api.settings)
        [row] = await outbox_rows(api, user)
        delays.append(round(float(row["due_in_s"])))
    assert len(sent_for(api, user)) == 4  # a published but never processed command returns
    assert delays == [10, 20, 40]  # relay_delay_s * 2**attempts (1, 2, 3 before each pass)
    assert row["publish_attempts"] == 4


async def test_relay_backoff_is_capped(api: Api) -> None:
    user = new_user()
    await api.pay(user)
    await api.settle()
    async with api.pool.connection() as conn:
        await conn.execute(
            "UPDATE command_outbox SET next_publish_at = now(), publish_attempts = 5000"
            " WHERE user_id = %s",
            (user,),
        )
    await relay_once(api.pool, api.publisher, api.settings)
    [row] = await outbox_rows(api, user)
    assert round(float(row["due_in_s"])) == api.settings.relay_max_backoff_s


@pytest.mark.parametrize("status", ["processing", "done", "rejected"])
async def test_relay_leaves_commands_the_ledger_has_taken(api: Api, status: str) -> None:
    user = new_user()
    await api.pay(user)
    await api.settle()
    async with api.pool.connection() as conn:
        await conn.execute(
            "UPDATE command_outbox SET status = %s, next_publish_at = now() - interval '1 hour'"
            " WHERE user_id = %s",
            (status, user),
        )
    await relay_once(api.pool, api.publisher, api.settings)
    assert len(sent_for(api, user)) == 1


async def test_relay_started_by_the_lifespan_publishes_what_intake_could_not(
    module_pg_dsn: str,
) -> None:
    async with running_api(
        module_pg_dsn, relay=True, relay_interval_s=0.05, relay_delay_s=0.2
    ) as api:
        user = new_user()
        api.publisher.fail = True
        resp = await api.pay(user)
        await api.settle()
        assert sent_for(api, user) == []
        api.publisher.fail = False
        for _ in range(100):
            if sent_for(api, user):
                break
            await asyncio.sleep(0.05)
        [cmd] = sent_for(api, user)
        assert cmd.payment_id == resp.json()["payment_id"]
