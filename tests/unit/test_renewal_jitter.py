"""Renewals are spread over the lead window (issue 13): a cohort sharing one period end (a
promotion, a midnight) does not fire in one sweeper tick. Each subscription's offset is fixed
by its id (the same in every process and on every replay), never later than the period end
less the safety margin, and the timer's ``next_wakeup`` says exactly that time."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from schemas.ids import subscription_id_for
from schemas.messages import SubscriptionDue
from streams.ledger.machine import (
    HOUR_MS,
    Policy,
    due_commands,
    next_due,
    next_wakeup,
    renewal_at,
)
from tests.factories import DAY, POLICY, SUB, active

END = 1_798_761_600_000  # 2027-01-01T00:00:00Z: a midnight cohort
COHORT = [subscription_id_for(f"promo-user-{i}") for i in range(20_000)]
MINUTE = 60_000


def test_a_cohort_is_spread_over_the_window_not_fired_in_one_tick() -> None:
    policy = Policy()  # lead 1 day, spread 12 h, margin 1 h
    times = [renewal_at(s, END, policy) for s in COHORT]
    earliest = END - policy.renew_lead_ms
    assert min(times) >= earliest and max(times) <= earliest + policy.renew_spread_ms
    per_tick = Counter((t - earliest) // 2_000 for t in times)  # the sweeper ticks every 2 s
    assert max(per_tick.values()) <= 10  # before: all 20,000 in the first tick
    per_minute = Counter((t - earliest) // MINUTE for t in times)
    minutes = policy.renew_spread_ms // MINUTE
    assert len(per_minute) >= 0.99 * minutes  # every minute of the window is used
    mean = len(COHORT) / minutes
    assert max(per_minute.values()) <= 3 * mean  # and none is crowded


def test_the_offset_is_fixed_per_subscription_in_every_process() -> None:
    a = [renewal_at(s, END, POLICY) for s in COHORT[:100]]
    b = [renewal_at(s, END, dataclasses.replace(POLICY)) for s in COHORT[:100]]
    assert a == b
    # Pinned: a stable hash (blake2b), not Python's per-process salted hash().
    assert renewal_at(SUB, END, Policy()) - (END - DAY) == 34_453_339
    # The same offset every period.
    assert renewal_at(SUB, END + 31 * DAY, Policy()) - renewal_at(SUB, END, Policy()) == 31 * DAY


@pytest.mark.parametrize(
    ("lead", "spread", "margin", "latest_before_end"),
    [
        (DAY, 12 * HOUR_MS, HOUR_MS, 12 * HOUR_MS),  # the spread ends well before the margin
        (DAY, 30 * HOUR_MS, HOUR_MS, HOUR_MS),  # a spread wider than the lead: the margin holds
        (2 * HOUR_MS, 12 * HOUR_MS, HOUR_MS, HOUR_MS),
        (HOUR_MS, 12 * HOUR_MS, HOUR_MS, HOUR_MS),  # no room: charged at the lead, as before
        (30_000, 12 * HOUR_MS, HOUR_MS, 30_000),  # a lead shorter than the margin: as before
        (DAY, 0, HOUR_MS, DAY),  # spread off
    ],
)
def test_never_later_than_the_period_end_less_the_margin(
    lead: int, spread: int, margin: int, latest_before_end: int
) -> None:
    policy = Policy(renew_lead_ms=lead, renew_spread_ms=spread, renew_margin_ms=margin)
    times = [renewal_at(s, END, policy) for s in COHORT[:5_000]]
    assert min(times) >= END - lead
    assert max(times) <= END - latest_before_end
    if latest_before_end < lead:
        assert max(times) - min(times) > 0.9 * (lead - latest_before_end)  # spread in full


def test_the_timer_wakes_at_the_subscriptions_own_renewal_time() -> None:
    state = active()  # the factories' policy: no reminder, lead 1 day
    assert state.period_end is not None
    at = renewal_at(SUB, state.period_end, POLICY)
    assert END - DAY < at + (END - state.period_end) <= END - POLICY.renew_margin_ms
    assert next_due(state, POLICY) == ("renew", at)
    assert next_wakeup(state, POLICY) == at
    assert due_commands(state, at - 1, POLICY) == []
    (due,) = due_commands(state, at, POLICY)
    assert isinstance(due, SubscriptionDue) and (due.kind, due.due_at) == ("renew", at)
