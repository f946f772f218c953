"""The Postgres projection against a real server: events from the pure machine are projected,
replays and re-emissions change nothing, and the outbox loop is closed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from schemas.ids import command_id_for, observation_id_for, payment_id_for, subscription_id_for
from schemas.messages import AnyEvent, PaymentObserved, PaySubscription, encode
from schemas.money import Money
from schemas.pg import migrate
from schemas.state import SubscriptionState
from streams.ledger.machine import LedgerInput, Policy, decide
from streams.sinks.postgres import project

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def projection_dsn(pg_dsn: str) -> str:
    name = f"proj_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = pg_dsn.rsplit("/", 1)[0] + f"/{name}"
    if "?" in pg_dsn:
        dsn += "?" + pg_dsn.split("?", 1)[1]
    migrate(dsn)
    return dsn


@pytest.fixture
async def conn(projection_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(projection_dsn) as c:
        yield c


def flow(user: str, *statuses: str) -> tuple[list[tuple[AnyEvent, bytes]], PaySubscription]:
    sub = subscription_id_for(user)
    cid = command_id_for(user, "key-1")
    cmd = PaySubscription(
        command_id=cid,
        subscription_id=sub,
        issued_at=T0,
        user_id=user,
        payment_id=payment_id_for(cid),
        plan_id="monthly",
        amount=Money(29900, "RUB"),
        period_months=1,
        return_url="https://cinema.example/back",
        description="Cinema monthly",
    )
    inputs: list[LedgerInput] = [cmd]
    for i, status in enumerate(statuses):
        inputs.append(
            PaymentObserved(
                observation_id=observation_id_for(f"prov-{user}", status),
                subscription_id=sub,
                observed_at=T0 + 1000 * (i + 1),
                source="webhook",
                payment_id=cmd.payment_id,
                provider_payment_id=f"prov-{user}",
                status=status,  # type: ignore[arg-type]
                amount=cmd.amount,
                confirmation_url="http://emu/confirm" if status == "pending" else None,
                cancellation_reason="insufficient_funds" if status == "canceled" else None,
            )
        )
    state: SubscriptionState | None = None
    out: list[tuple[AnyEvent, bytes]] = []
    for msg in inputs:
        d = decide(state, msg, Policy())
        state = d.state
        out.extend((e, encode(e)) for e in d.events)
    return out, cmd


async def outbox(conn: psycopg.AsyncConnection[Any], cmd: PaySubscription) -> None:
    await conn.execute(
        "INSERT INTO command_outbox (command_id, subscription_id, user_id, command_type, payload)"
        " VALUES (%s, %s, %s, 'PaySubscription', %s)",
        (cmd.command_id, cmd.subscription_id, cmd.user_id, encode(cmd)),
    )
    await conn.commit()


async def row(conn: psycopg.AsyncConnection[Any], sql: str, *params: Any) -> tuple[Any, ...]:
    cur = await conn.execute(sql, params)
    result = await cur.fetchone()
    assert result is not None
    return tuple(result)


async def test_happy_path_projects_payment_subscription_and_closes_the_outbox(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    user = f"u-{uuid.uuid4()}"
    events, cmd = flow(user, "pending", "succeeded")
    await outbox(conn, cmd)
    assert await project(conn, events) == len(events)
    status, period_end = await row(
        conn, "SELECT status, period_end FROM payments WHERE payment_id = %s", cmd.payment_id
    )
    assert status == "succeeded" and period_end is not None
    sub_status, plan = await row(
        conn, "SELECT status, plan_id FROM subscriptions WHERE user_id = %s", user
    )
    assert (sub_status, plan) == ("active", "monthly")
    (outbox_status,) = await row(
        conn, "SELECT status FROM command_outbox WHERE command_id = %s", cmd.command_id
    )
    assert outbox_status == "done"
    (n,) = await row(
        conn,
        "SELECT count(*) FROM subscription_events WHERE subscription_id = %s",
        cmd.subscription_id,
    )
    assert n == len(events)


async def test_replayed_and_reordered_batches_change_nothing(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    user = f"u-{uuid.uuid4()}"
    events, cmd = flow(user, "pending", "succeeded")
    await project(conn, events)
    before = await row(conn, "SELECT * FROM payments WHERE payment_id = %s", cmd.payment_id)
    # A replay after a crash: the whole batch again, then an older prefix again.
    assert await project(conn, events) == 0
    assert await project(conn, events[:2]) == 0
    after = await row(conn, "SELECT * FROM payments WHERE payment_id = %s", cmd.payment_id)
    assert before == after
    (n,) = await row(
        conn,
        "SELECT count(*) FROM subscription_events WHERE subscription_id = %s",
        cmd.subscription_id,
    )
    assert n == len(events)


async def test_declined_payment_leaves_the_subscription_inactive_with_a_reason(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    user = f"u-{uuid.uuid4()}"
    events, cmd = flow(user, "pending", "canceled")
    await outbox(conn, cmd)
    await project(conn, events)
    status, reason = await row(
        conn, "SELECT status, status_reason FROM payments WHERE payment_id = %s", cmd.payment_id
    )
    assert (status, reason) == ("canceled", "insufficient_funds")
    (sub_status,) = await row(conn, "SELECT status FROM subscriptions WHERE user_id = %s", user)
    assert sub_status == "inactive"
    ob_status, ob_reason = await row(
        conn,
        "SELECT status, status_reason FROM command_outbox WHERE command_id = %s",
        cmd.command_id,
    )
    assert ob_status == "done" and "insufficient_funds" in ob_reason


async def test_events_split_across_batches_apply_in_order(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    user = f"u-{uuid.uuid4()}"
    events, _cmd = flow(user, "pending", "succeeded")
    for e in events:
        await project(conn, [e])
    (status,) = await row(conn, "SELECT status FROM subscriptions WHERE user_id = %s", user)
    assert status == "active"
