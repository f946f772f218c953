"""Trials in the analytical history (issue 16), on the embedded ClickHouse: trials started and
converted per day, card checks neither a success nor a failure of a payment, and a trial worth
nothing in MRR. The events come from the pure ledger machine, as the stack would make them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import msgspec
import pytest

from analytics import queries as q
from analytics.ingest import write_batch
from billing.clickhouse import ClickHouseClient, connect, embedded_dir
from schemas.ids import command_id_for, observation_id_for, payment_id_for, subscription_id_for
from schemas.messages import (
    AnyEvent,
    PaymentObserved,
    PaySubscription,
    SetAutoRenew,
    encode,
)
from schemas.money import Money
from schemas.state import SubscriptionState
from streams.ledger.machine import LedgerInput, Policy, decide, due_commands

pytestmark = pytest.mark.integration

T0 = int(datetime(2026, 3, 1, 9, tzinfo=UTC).timestamp() * 1000)
DAY = 86_400_000
PRICE = Money(29900, "RUB")
POLICY = Policy()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClickHouseClient]:
    ch = connect(embedded_dir(tmp_path), database=f"t_{uuid.uuid4().hex[:12]}")
    yield ch
    ch.command(f"DROP DATABASE IF EXISTS {ch.database}")
    ch.close()


def seen(
    sub: str, payment_id: str, status: str, at: int, amount: Money, **kw: object
) -> PaymentObserved:
    provider_id = f"prov-{payment_id[:8]}"
    return PaymentObserved(
        observation_id=observation_id_for(provider_id, status),
        subscription_id=sub,
        observed_at=at,
        source="gateway",
        payment_id=payment_id,
        provider_payment_id=provider_id,
        status=status,  # type: ignore[arg-type]
        amount=amount,
        **kw,  # type: ignore[arg-type]
    )


def trial_history(user: str, converts: bool) -> list[AnyEvent]:
    """A 7-day trial; the first charge at its end succeeds (``converts``) or the user turns
    auto-renew off first."""
    sub = subscription_id_for(user)
    cid = command_id_for(user, "trial")
    pid = payment_id_for(cid)
    check = Money(POLICY.verify_amount_minor, "RUB")
    inputs: list[LedgerInput] = [
        PaySubscription(
            command_id=cid,
            subscription_id=sub,
            issued_at=T0,
            user_id=user,
            payment_id=pid,
            plan_id="monthly",
            amount=PRICE,
            period_months=1,
            return_url="https://x/",
            description="Monthly",
            trial_days=7,
        ),
        seen(
            sub,
            pid,
            "waiting_for_capture",
            T0 + 1_000,
            check,
            paid=True,
            payment_method_id=pid,
            payment_method_saved=True,
        ),
        seen(sub, pid, "canceled", T0 + 2_000, check, cancellation_reason="canceled_by_merchant"),
    ]
    if not converts:
        inputs.append(
            SetAutoRenew(
                command_id=command_id_for(user, "off"),
                subscription_id=sub,
                issued_at=T0 + DAY,
                user_id=user,
                enabled=False,
            )
        )
    state: SubscriptionState | None = None
    log: list[AnyEvent] = []
    for msg in inputs:
        d = decide(state, msg, POLICY)
        state, log = d.state, log + d.events
    assert state is not None
    end = (state.period_end or 0) + 1
    for _ in range(5):  # the reminder first, then the charge (or the lapse)
        for cmd in due_commands(state, end, POLICY):
            d = decide(state, cmd, POLICY)
            assert d.state is not None
            state, log = d.state, log + d.events
    assert state is not None
    renewal = next((p for p in state.payments.values() if p.kind == "renewal"), None)
    if converts:
        assert renewal is not None
        d = decide(state, seen(sub, renewal.payment_id, "succeeded", end + 5_000, PRICE), POLICY)
        log += d.events
    else:
        assert renewal is None
    return log


def test_trials_and_their_conversion_are_counted(store: ClickHouseClient) -> None:
    events = trial_history("ta-converts", True) + trial_history("ta-stops", False)
    asyncio.run(write_batch(store, [encode(e) for e in events]))
    rows = q.trials(store, T0 - DAY, T0 + 30 * DAY)
    assert rows == [q.TrialsRow(date(2026, 3, 1), trials=2, converted=1)]
    assert rows[0].conversion == 0.5
    # The card checks are no payments: only the first charge counts, as a success.
    success = q.payment_success(store, T0 - DAY, T0 + 30 * DAY)
    assert [(r.succeeded, r.canceled) for r in success] == [(1, 0)]
    assert q.decline_reasons(store, T0 - DAY, T0 + 30 * DAY) == []
    assert msgspec.json.encode(rows)  # plain data, for the API
