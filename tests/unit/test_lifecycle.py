"""Table-driven tests of the lifecycle rules in the pure machine: refunds, auto-renew,
renewals, dunning, lapse and expiry. Time is the messages' own: no clock, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from schemas.ids import derived_id, observation_id_for
from schemas.messages import (
    PaymentObserved,
    RefundCallFailed,
    RefundObserved,
    RefundPayment,
    SetAutoRenew,
    SubscriptionDue,
    SweepRefund,
)
from schemas.money import Money
from schemas.periods import period_end_ms
from schemas.state import SubscriptionState
from streams.ledger.machine import (
    LedgerInput,
    Policy,
    decide,
    due_commands,
    next_due,
    next_wakeup,
    renewal_payment_id,
)
from tests.unit.test_machine import PRICE, SUB, T0, USER, observed, pay, pid

DAY = 86_400_000
POLICY = Policy(
    payment_deadline_ms=10_000,
    redrive_max_backoff_ms=80_000,
    renew_lead_ms=DAY,
    dunning_schedule_ms=(DAY, 3 * DAY),
)
PERIOD_END = period_end_ms(T0 + 1_000, 1)
METHOD = "pm-1"


def saved_success(at: int = T0 + 1_000) -> PaymentObserved:
    return observed("succeeded", at=at, payment_method_id=METHOD, payment_method_saved=True)


def refund(key: str, amount: int | None = None, at: int = T0 + 5_000) -> RefundPayment:
    return RefundPayment(
        command_id=derived_id(SUB, f"refund-command-{key}"),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        refund_id=derived_id(SUB, f"refund-{key}"),
        payment_id=pid(),
        amount=None if amount is None else Money(amount, "RUB"),
        reason="test",
    )


def refund_seen(key: str, status: str = "succeeded", at: int = T0 + 6_000) -> RefundObserved:
    rid = derived_id(SUB, f"refund-{key}")
    return RefundObserved(
        observation_id=observation_id_for(f"r-{key}", status),
        subscription_id=SUB,
        observed_at=at,
        source="gateway",
        refund_id=rid,
        payment_id=pid(),
        provider_refund_id=f"r-{key}",
        status=status,  # type: ignore[arg-type]
        amount=PRICE,
    )


def refund_unknown(key: str) -> RefundCallFailed:
    rid = derived_id(SUB, f"refund-{key}")
    return RefundCallFailed(
        observation_id=derived_id(rid, "callfail-0-unknown"),
        subscription_id=SUB,
        observed_at=T0 + 5_500,
        source="gateway",
        refund_id=rid,
        payment_id=pid(),
        outcome="unknown",
        error_code="timeout",
        error="boom",
        attempt=0,
    )


def auto_renew(enabled: bool, at: int = T0 + 2_000) -> SetAutoRenew:
    return SetAutoRenew(
        command_id=derived_id(SUB, f"auto-{enabled}-{at}"),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        enabled=enabled,
    )


def tick(state: SubscriptionState, at: int) -> list[LedgerInput]:
    """What the ledger's timer would send at ``at``."""
    return list(due_commands(state, at, POLICY))


def renewal_seen(
    state: SubscriptionState, attempt: int, status: str, at: int, reason: str | None = None
) -> PaymentObserved:
    payment_id = renewal_payment_id(state, attempt)
    provider_id = f"prov-renew-{attempt}-{state.period_end}"
    return PaymentObserved(
        observation_id=observation_id_for(provider_id, status),
        subscription_id=SUB,
        observed_at=at,
        source="gateway",
        payment_id=payment_id,
        provider_payment_id=provider_id,
        status=status,  # type: ignore[arg-type]
        amount=PRICE,
        paid=status == "succeeded",
        cancellation_reason=reason,
    )


def apply(
    state: SubscriptionState | None, inputs: Sequence[LedgerInput]
) -> tuple[SubscriptionState, list[str]]:
    types: list[str] = []
    for msg in inputs:
        d = decide(state, msg, POLICY)
        state = d.state
        if not d.duplicate:
            types += [type(e).__name__ for e in d.events]
    assert state is not None
    return state, types


def active() -> SubscriptionState:
    state, _ = apply(None, [pay(), saved_success()])
    assert state.status == "active" and state.payment_method_id == METHOD
    return state


# ---------------------------------------------------------------------------------- refunds
REFUND_CASES: list[tuple[str, list[LedgerInput], list[str], str, int]] = [
    # (name, inputs after an active paid subscription, events, subscription status, refunded)
    (
        "full refund of the current period ends access at once",
        [refund("a"), refund_seen("a")],
        ["RefundRequested", "RefundSucceeded", "SubscriptionCanceled"],
        "canceled",
        29900,
    ),
    (
        "partial refund keeps access",
        [refund("a", 10000), refund_seen("a")],
        ["RefundRequested", "RefundSucceeded"],
        "active",
        10000,
    ),
    (
        "two partials up to the full amount: the second ends access",
        [refund("a", 10000), refund_seen("a"), refund("b", 19900), refund_seen("b")],
        [
            "RefundRequested",
            "RefundSucceeded",
            "RefundRequested",
            "RefundSucceeded",
            "SubscriptionCanceled",
        ],
        "canceled",
        29900,
    ),
    (
        "a refund in flight counts against the refundable amount (concurrent requests)",
        [refund("a", 20000), refund("b", 20000)],
        ["RefundRequested", "RefundRejected"],
        "active",
        0,
    ),
    (
        "more than captured is rejected",
        [refund("a", 30000)],
        ["RefundRejected"],
        "active",
        0,
    ),
    (
        "a failed refund frees the amount again",
        [refund("a", 20000), refund_seen("a", "canceled"), refund("b", 20000)],
        ["RefundRequested", "RefundFailed", "RefundRequested"],
        "active",
        0,
    ),
    (
        "unknown refund outcome then success",
        [refund("a", 5000), refund_unknown("a"), refund_seen("a")],
        ["RefundRequested", "RefundOutcomeUnknown", "RefundSucceeded"],
        "active",
        5000,
    ),
    (
        "a duplicate refund observation applies once",
        [refund("a", 5000), refund_seen("a"), refund_seen("a")],
        ["RefundRequested", "RefundSucceeded"],
        "active",
        5000,
    ),
    (
        "nothing left to refund",
        [refund("a"), refund_seen("a"), refund("b")],
        ["RefundRequested", "RefundSucceeded", "SubscriptionCanceled", "RefundRejected"],
        "canceled",
        29900,
    ),
]


@pytest.mark.parametrize(
    ("name", "inputs", "expected", "status", "refunded"),
    REFUND_CASES,
    ids=[c[0] for c in REFUND_CASES],
)
def test_refunds(
    name: str, inputs: list[LedgerInput], expected: list[str], status: str, refunded: int
) -> None:
    state, types = apply(active(), inputs)
    assert types == expected
    assert state.status == status
    rec = state.payments[pid()]
    assert rec.refunded_minor == refunded
    assert 0 <= rec.refunded_minor + rec.refunding_minor <= rec.amount.amount_minor


@pytest.mark.parametrize("inputs", [c[1] for c in REFUND_CASES], ids=[c[0] for c in REFUND_CASES])
def test_every_refund_input_replayed_changes_nothing(inputs: list[LedgerInput]) -> None:
    state: SubscriptionState | None = active()
    for msg in inputs:
        first = decide(state, msg, POLICY)
        again = decide(first.state, msg, POLICY)
        assert again.duplicate and again.state == first.state
        assert again.events == first.events
        state = first.state


def test_refund_of_a_payment_not_succeeded_is_rejected() -> None:
    state, types = apply(None, [pay(), refund("a")])
    assert types == ["PaymentRequested", "RefundRejected"]
    assert state.refunds == {}


def test_overdue_refund_is_swept_with_a_derived_id() -> None:
    state, _ = apply(active(), [refund("a", 5000)])
    (cmd,) = tick(state, T0 + 5_000 + 10_000)
    assert isinstance(cmd, SweepRefund) and cmd.attempt == 1
    assert tick(state, T0 + 5_000 + 10_000) == [cmd]  # the same command, the same id
    state, types = apply(state, [cmd])
    assert types == ["RefundRedriven"]


# ------------------------------------------------------------------- renewals and dunning
def test_nothing_is_due_before_the_renewal_time() -> None:
    state = active()
    assert next_due(state, POLICY) == ("renew", PERIOD_END - DAY)
    assert next_wakeup(state, POLICY) == PERIOD_END - DAY
    assert tick(state, PERIOD_END - DAY - 1) == []


def test_renewal_charges_the_saved_method_and_extends_the_period() -> None:
    state = active()
    (due,) = tick(state, PERIOD_END - DAY)
    assert isinstance(due, SubscriptionDue) and due.kind == "renew"
    state, types = apply(state, [due])
    assert types == ["PaymentRequested"]
    renewal = state.payments[renewal_payment_id(state, 0)]
    assert renewal.kind == "renewal" and renewal.request.payment_method_id == METHOD
    assert renewal.amount == PRICE
    # the timer firing again (or a second worker) applies nothing new
    assert tick(state, PERIOD_END - DAY + 1) == []
    state2, types2 = apply(state, [due])
    assert types2 == [] and state2 == state
    state, types = apply(state, [renewal_seen(state, 0, "succeeded", PERIOD_END - DAY + 5)])
    assert types == ["PaymentSucceeded", "SubscriptionActivated"]
    assert state.status == "active" and state.period_end == period_end_ms(PERIOD_END, 1)


def test_auto_renew_off_expires_at_period_end_and_on_again_renews() -> None:
    state, types = apply(active(), [auto_renew(False)])
    assert types == ["AutoRenewChanged"] and not state.auto_renew
    assert next_due(state, POLICY) == ("lapse", PERIOD_END)
    on, _ = apply(state, [auto_renew(True, T0 + 3_000)])
    assert next_due(on, POLICY) == ("renew", PERIOD_END - DAY)
    (lapse,) = tick(state, PERIOD_END)
    state, types = apply(state, [lapse])
    assert types == ["SubscriptionExpired"] and state.status == "expired"
    assert next_due(state, POLICY) is None


def test_soft_decline_goes_past_due_then_a_retry_recovers() -> None:
    state = active()
    (due,) = tick(state, PERIOD_END - DAY)
    state, _ = apply(state, [due])
    declined_at = PERIOD_END - DAY + 5
    state, types = apply(
        state, [renewal_seen(state, 0, "canceled", declined_at, "insufficient_funds")]
    )
    assert types == ["PaymentCanceled", "RenewalFailed"]
    assert state.next_retry_at == declined_at + DAY and state.status == "active"
    # the period ends before the retry: past due (no access), retry still scheduled
    (lapse,) = tick(state, PERIOD_END)
    state, types = apply(state, [lapse])
    assert types == ["SubscriptionPastDue"] and state.status == "past_due"
    (retry,) = tick(state, declined_at + DAY)
    assert isinstance(retry, SubscriptionDue) and retry.kind == "retry"
    state, types = apply(state, [retry])
    assert types == ["PaymentRequested"]
    ok_at = declined_at + DAY + 10
    state, types = apply(state, [renewal_seen(state, 1, "succeeded", ok_at)])
    assert types == ["PaymentSucceeded", "SubscriptionActivated"]
    assert state.status == "active" and state.dunning_attempt == 0
    assert state.period_start == ok_at and state.period_end == period_end_ms(ok_at, 1)


def test_hard_decline_stops_dunning_and_expires_at_period_end() -> None:
    state = active()
    (due,) = tick(state, PERIOD_END - DAY)
    state, _ = apply(state, [due])
    state, types = apply(
        state, [renewal_seen(state, 0, "canceled", PERIOD_END - DAY + 5, "card_expired")]
    )
    assert types == ["PaymentCanceled", "RenewalFailed"] and state.dunning_stopped
    assert next_due(state, POLICY) == ("lapse", PERIOD_END)
    (lapse,) = tick(state, PERIOD_END)
    state, types = apply(state, [lapse])
    assert types == ["SubscriptionExpired"] and state.status == "expired"


def test_dunning_schedule_exhausted_expires() -> None:
    state = active()
    (due,) = tick(state, PERIOD_END - DAY)
    state, _ = apply(state, [due])
    at = PERIOD_END - DAY + 5
    state, _ = apply(state, [renewal_seen(state, 0, "canceled", at, "insufficient_funds")])
    (lapse,) = tick(state, PERIOD_END)
    state, _ = apply(state, [lapse])
    for attempt in (1, 2):
        (retry,) = tick(state, state.next_retry_at or 0)
        assert isinstance(retry, SubscriptionDue) and retry.kind == "retry"
        state, _ = apply(state, [retry])
        at = retry.issued_at + 5
        state, types = apply(
            state, [renewal_seen(state, attempt, "canceled", at, "insufficient_funds")]
        )
    assert types == ["PaymentCanceled", "RenewalFailed", "SubscriptionExpired"]
    assert state.status == "expired"
    charges = [p for p in state.payments.values() if p.kind == "renewal"]
    assert len(charges) == 3 and all(p.status == "canceled" for p in charges)


def test_a_stale_tick_applies_nothing() -> None:
    state = active()
    (due,) = tick(state, PERIOD_END - DAY)
    off, _ = apply(state, [auto_renew(False)])
    after, types = apply(off, [due])
    assert types == [] and after == off


def test_an_early_tick_applies_nothing() -> None:
    state = active()
    early = SubscriptionDue(
        command_id=derived_id(SUB, "early"),
        subscription_id=SUB,
        issued_at=PERIOD_END - DAY - 10,
        kind="renew",
        due_at=PERIOD_END - DAY,
    )
    after, types = apply(state, [early])
    assert types == [] and after == state


def test_without_a_saved_method_the_subscription_lapses() -> None:
    state, _ = apply(None, [pay(), observed("succeeded")])
    assert state.payment_method_id is None
    assert next_due(state, POLICY) == ("lapse", PERIOD_END)
    (lapse,) = tick(state, PERIOD_END)
    state, types = apply(state, [lapse])
    assert types == ["SubscriptionExpired"]


def test_a_renewal_in_flight_at_period_end_goes_past_due_then_recovers() -> None:
    state = active()
    (due,) = tick(state, PERIOD_END - DAY)
    state, _ = apply(state, [due])
    lapse = [c for c in tick(state, PERIOD_END) if isinstance(c, SubscriptionDue)]
    assert [c.kind for c in lapse] == ["lapse"]
    state, types = apply(state, lapse)
    assert types == ["SubscriptionPastDue"]
    state, types = apply(state, [renewal_seen(state, 0, "succeeded", PERIOD_END + 50)])
    assert types == ["PaymentSucceeded", "SubscriptionActivated"] and state.status == "active"


def test_paying_again_after_expiry_starts_a_new_period() -> None:
    state, _ = apply(active(), [auto_renew(False)])
    (lapse,) = tick(state, PERIOD_END)
    state, _ = apply(state, [lapse])
    state, types = apply(state, [pay("k2", at=PERIOD_END + 100)])
    assert types == ["PaymentRequested"] and state.status == "pending"
