"""The Postgres projection against a real server: events from the pure machine are projected,
replays and re-emissions change nothing, and the outbox loop is closed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from schemas.ids import command_id_for, observation_id_for, payment_id_for, subscription_id_for
from schemas.messages import (
    AnyEvent,
    PaymentObserved,
    PaySubscription,
    RefundObserved,
    RefundPayment,
    SettlePayment,
    encode,
)
from schemas.money import Money
from schemas.pg import migrate
from schemas.state import SubscriptionState
from streams.ledger.machine import LedgerInput, Policy, decide
from streams.projection.agent import project

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
    inputs = flow_inputs(user, *statuses)
    cmd = inputs[0]
    assert isinstance(cmd, PaySubscription)
    state: SubscriptionState | None = None
    out: list[tuple[AnyEvent, bytes]] = []
    for msg in inputs:
        d = decide(state, msg, Policy())
        state = d.state
        out.extend((e, encode(e)) for e in d.events)
    return out, cmd


def flow_inputs(user: str, *statuses: str) -> list[LedgerInput]:
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
    return inputs


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


# ------------------------------------------------- outbox rows closed by what they are about
def decide_all(inputs: list[LedgerInput]) -> list[list[tuple[AnyEvent, bytes]]]:
    """The events of each input, in order, through the pure machine."""
    state: SubscriptionState | None = None
    out: list[list[tuple[AnyEvent, bytes]]] = []
    for msg in inputs:
        d = decide(state, msg, Policy(capture_delay_ms=None))
        state = d.state
        out.append([(e, encode(e)) for e in d.events])
    return out


def observed(cmd: PaySubscription, status: str, at: int, **kw: Any) -> PaymentObserved:
    provider_id = f"prov-{cmd.payment_id}"
    return PaymentObserved(
        observation_id=observation_id_for(provider_id, status),
        subscription_id=cmd.subscription_id,
        observed_at=at,
        source=kw.pop("source", "webhook"),
        payment_id=cmd.payment_id,
        provider_payment_id=provider_id,
        status=status,  # type: ignore[arg-type]
        amount=cmd.amount,
        **kw,
    )


def two_stage_pay(user: str) -> PaySubscription:
    cid = command_id_for(user, "key-1")
    return PaySubscription(
        command_id=cid,
        subscription_id=subscription_id_for(user),
        issued_at=T0,
        user_id=user,
        payment_id=payment_id_for(cid),
        plan_id="monthly",
        amount=Money(29900, "RUB"),
        period_months=1,
        return_url="https://cinema.example/back",
        description="Cinema monthly",
        capture=False,
    )


async def insert_outbox(
    conn: psycopg.AsyncConnection[Any], message_id: str, sub: str, user: str, msg: Any
) -> None:
    """An outbox row as intake (or the resolution route) writes it: the topic is not the
    projection's business, so it is left to its default here."""
    await conn.execute(
        "INSERT INTO command_outbox (command_id, subscription_id, user_id, command_type, payload)"
        " VALUES (%s, %s, %s, %s, %s)",
        (message_id, sub, user, type(msg).__name__, encode(msg)),
    )
    await conn.commit()


async def outbox_state(conn: psycopg.AsyncConnection[Any], command_id: str) -> tuple[Any, ...]:
    return await row(
        conn, "SELECT status, status_reason FROM command_outbox WHERE command_id = %s", command_id
    )


@pytest.mark.parametrize(
    ("action", "outcome", "reason"),
    [("capture", "succeeded", "payment succeeded"), ("cancel", "canceled", "payment canceled")],
)
async def test_an_admin_settle_is_processing_once_requested_and_done_when_the_payment_ends(
    conn: psycopg.AsyncConnection[Any], action: str, outcome: str, reason: str
) -> None:
    """Issue 11 §3: PaymentSettleRequested used to leave the capture/release row 'accepted',
    so the relay republished it (another capture call) every few minutes, forever."""
    user = f"u-{uuid.uuid4()}"
    pay = two_stage_pay(user)
    settle = SettlePayment(
        command_id=command_id_for("admin-1", f"settle-{user}"),
        subscription_id=pay.subscription_id,
        issued_at=T0 + 2000,
        user_id=user,
        payment_id=pay.payment_id,
        action=action,  # type: ignore[arg-type]
        actor="admin:admin-1",
        reason="checked by phone",
    )
    held, settled, ended = decide_all(
        [
            pay,
            observed(pay, "waiting_for_capture", T0 + 1000),
            settle,
            observed(pay, outcome, T0 + 3000),
        ]
    )[1:]
    assert [type(e).__name__ for e, _ in settled] == ["PaymentSettleRequested"]
    await outbox(conn, pay)
    await insert_outbox(conn, settle.command_id, pay.subscription_id, user, settle)

    first = decide_all([pay])[0]
    await project(conn, first + held + settled)
    status, why = await outbox_state(conn, settle.command_id)
    assert status == "processing"  # taken: the relay leaves it
    assert why == f"{action} requested by admin:admin-1 (attempt 1)"

    await project(conn, ended)
    status, why = await outbox_state(conn, settle.command_id)
    assert status == "done" and why.startswith(reason)
    assert (await outbox_state(conn, pay.command_id))[0] == "done"  # the pay command too


async def test_every_settle_of_a_payment_is_closed_by_its_outcome(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """Two admins capture the same held payment (both asked of the provider), a third asks
    to release it meanwhile (refused): the success closes both captures, the refusal stays."""
    user = f"u-{uuid.uuid4()}"
    pay = two_stage_pay(user)

    def settle(admin: str, action: str, at: int) -> SettlePayment:
        return SettlePayment(
            command_id=command_id_for(admin, f"settle-{user}"),
            subscription_id=pay.subscription_id,
            issued_at=at,
            user_id=user,
            payment_id=pay.payment_id,
            action=action,  # type: ignore[arg-type]
            actor=f"admin:{admin}",
        )

    first, second, release = (
        settle("admin-1", "capture", T0 + 2000),
        settle("admin-2", "capture", T0 + 2100),
        settle("admin-3", "cancel", T0 + 2200),
    )
    batches = decide_all(
        [
            pay,
            observed(pay, "waiting_for_capture", T0 + 1000),
            first,
            second,
            release,
            observed(pay, "succeeded", T0 + 3000),
        ]
    )
    for cmd in (first, second, release):
        await insert_outbox(conn, cmd.command_id, pay.subscription_id, user, cmd)
    await project(conn, [e for b in batches[:-1] for e in b])
    assert [(await outbox_state(conn, c.command_id))[0] for c in (first, second, release)] == [
        "processing",
        "processing",
        "rejected",
    ]
    await project(conn, batches[-1])
    states = [await outbox_state(conn, c.command_id) for c in (first, second, release)]
    assert states == [
        ("done", "payment succeeded"),
        ("done", "payment succeeded"),
        ("rejected", "already asked to capture"),
    ]


async def test_a_reconciliation_correction_is_done_once_the_payment_is_canceled(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """An admin's accept_provider (our succeeded payment the provider never made): the
    observation's row is closed by the PaymentCanceled it causes."""
    user = f"u-{uuid.uuid4()}"
    events, pay = flow(user, "pending", "succeeded")
    await project(conn, events)
    correction = PaymentObserved(
        observation_id=observation_id_for(f"prov-{user}", "canceled"),
        subscription_id=pay.subscription_id,
        observed_at=T0 + 10_000,
        source="reconciliation",
        payment_id=pay.payment_id,
        provider_payment_id=f"prov-{user}",
        status="canceled",
        amount=pay.amount,
        cancellation_party="merchant",
        cancellation_reason="not at the provider",
    )
    await insert_outbox(conn, correction.observation_id, pay.subscription_id, user, correction)
    await project(conn, events)  # the payment's own outcome closes nothing of the correction
    assert (await outbox_state(conn, correction.observation_id))[0] == "accepted"

    canceled = decide_all([*flow_inputs(user, "pending", "succeeded"), correction])[-1]
    assert "PaymentCanceled" in [type(e).__name__ for e, _ in canceled]
    await project(conn, canceled)
    status, why = await outbox_state(conn, correction.observation_id)
    assert status == "done" and why.startswith("payment canceled: reconciliation")


async def test_a_refund_correction_is_done_once_the_refund_is_canceled(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    user = f"u-{uuid.uuid4()}"
    inputs = flow_inputs(user, "pending", "succeeded")
    pay = inputs[0]
    assert isinstance(pay, PaySubscription)
    refund = RefundPayment(
        command_id=command_id_for(user, "refund-1"),
        subscription_id=pay.subscription_id,
        issued_at=T0 + 5000,
        user_id=user,
        refund_id=str(uuid.uuid4()),
        payment_id=pay.payment_id,
    )

    def refund_seen(status: str, source: str) -> RefundObserved:
        return RefundObserved(
            observation_id=observation_id_for(f"prov-r-{user}", status),
            subscription_id=pay.subscription_id,
            observed_at=T0 + 6000,
            source=source,  # type: ignore[arg-type]
            refund_id=refund.refund_id,
            payment_id=pay.payment_id,
            provider_refund_id=f"prov-r-{user}",
            status=status,  # type: ignore[arg-type]
            amount=pay.amount,
            cancellation_reason="not at the provider" if status == "canceled" else None,
        )

    correction = refund_seen("canceled", "reconciliation")
    batches = decide_all([*inputs, refund, refund_seen("succeeded", "webhook"), correction])
    await insert_outbox(conn, correction.observation_id, pay.subscription_id, user, correction)
    await project(conn, [e for b in batches[:-1] for e in b])
    assert (await outbox_state(conn, correction.observation_id))[0] == "accepted"
    assert "RefundFailed" in [type(e).__name__ for e, _ in batches[-1]]
    await project(conn, batches[-1])
    status, why = await outbox_state(conn, correction.observation_id)
    assert status == "done" and why == "refund canceled: not at the provider"
