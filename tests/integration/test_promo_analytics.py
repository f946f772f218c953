"""Promo codes in the analytical history (issue 16), on the embedded ClickHouse: revenue is
what was charged, MRR is after the discount while it lasts, and the discounts given are
counted per code. The events come from the pure ledger machine, as the stack would make them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from analytics import queries as q
from analytics.ingest import write_batch
from billing.clickhouse import ClickHouseClient, connect, embedded_dir
from schemas.ids import command_id_for, observation_id_for, payment_id_for, subscription_id_for
from schemas.messages import AnyEvent, PaymentObserved, PaySubscription, encode
from schemas.money import Money
from schemas.promo import Discount
from schemas.state import SubscriptionState
from streams.ledger.machine import Policy, decide, due_commands

pytestmark = pytest.mark.integration

T0 = int(datetime(2026, 3, 1, 9, tzinfo=UTC).timestamp() * 1000)
DAY = 86_400_000
PRICE = Money(29900, "RUB")
POLICY = Policy(remind_ms=0)
HALF = Discount(code="HALF2", kind="percent", value=50, plan_id="monthly", periods=2)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClickHouseClient]:
    ch = connect(embedded_dir(tmp_path), database=f"t_{uuid.uuid4().hex[:12]}")
    yield ch
    ch.command(f"DROP DATABASE IF EXISTS {ch.database}")
    ch.close()


def seen(sub: str, payment_id: str, status: str, at: int, amount: Money) -> PaymentObserved:
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
        paid=status == "succeeded",
        payment_method_id=f"pm-{payment_id[:8]}",
        payment_method_saved=True,
    )


def history(user: str, promo: Discount | None, renewals: int) -> list[AnyEvent]:
    """A purchase of the monthly plan at T0 (with ``promo``), then ``renewals`` renewals
    charged by the timer and succeeded."""
    sub = subscription_id_for(user)
    cid = command_id_for(user, "buy")
    pid = payment_id_for(cid)
    buy = PaySubscription(
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
        promo=promo,
    )
    d = decide(None, buy, POLICY)
    state: SubscriptionState | None = d.state
    log = list(d.events)
    assert state is not None
    charged = state.payments[pid].amount
    d = decide(state, seen(sub, pid, "succeeded", T0 + 1_000, charged), POLICY)
    state, log = d.state, log + d.events
    for _ in range(renewals):
        assert state is not None
        at = (state.period_end or 0) - 1
        for cmd in due_commands(state, at, POLICY):
            d = decide(state, cmd, POLICY)
            state, log = d.state, log + d.events
        assert state is not None
        rec = next(p for p in state.payments.values() if p.status == "requested")
        d = decide(state, seen(sub, rec.payment_id, "succeeded", at + 1_000, rec.amount), POLICY)
        state, log = d.state, log + d.events
    return log


def test_revenue_is_what_was_charged_mrr_is_after_the_discount_and_discounts_per_code(
    store: ClickHouseClient,
) -> None:
    events = history("pa-promo", HALF, renewals=3) + history("pa-full", None, renewals=0)
    asyncio.run(write_batch(store, [encode(e) for e in events]))
    window = (T0 - DAY, T0 + 200 * DAY)
    half = 29900 - 14950
    # Charged: 149.50 twice (the purchase and the first renewal), then 299.00 twice; 299.00
    # for the other user.
    gross = sum(r.gross_minor for r in q.revenue_by_day(store, *window))
    assert gross == 2 * half + 2 * 29900 + 29900
    [row] = q.discounts(store, *window)
    assert (row.code, row.currency, row.charges) == ("HALF2", "RUB", 2)
    assert (row.discount_minor, row.charged_minor) == (2 * 14950, 2 * half)
    # MRR at the close of March: 149.50 (discounted) + 299.00; at the close of May, when the
    # discount has ended, 299.00 + 0 (the other user's month ended in April).
    moves = {m.month: m for m in q.mrr_movements(store, date(2026, 3, 1), 3, cache=False)}
    assert moves[date(2026, 3, 1)].mrr_minor == half + 29900
    assert moves[date(2026, 5, 1)].mrr_minor == 29900
