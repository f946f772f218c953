"""The money edges of the pure machine (issue 11 §2): upgrade credits, refunds that meet plan
changes, access decided by what pays for now, amounts the provider changed, commands
redelivered after they left the replay memory. Hand-picked cases beside the model-based test
(tests/unit/test_machine_model.py), which found most of them."""

from __future__ import annotations

import msgspec
import pytest

from schemas.ids import derived_id, observation_id_for
from schemas.messages import (
    PaymentObserved,
    PaymentOutcomeUnknown,
    PlanChangeRejected,
    RefundObserved,
    RefundPayment,
    RefundRejected,
)
from schemas.money import Money
from schemas.periods import period_end_ms
from schemas.state import SubscriptionState
from streams.ledger.machine import LedgerInput, Policy, decide
from tests.factories import (
    POLICY,
    PRICE,
    SUB,
    T0,
    USER,
    active,
    admin,
    apply,
    change,
    observed,
    pay,
    pid,
    refund,
    refund_seen,
)

YEARLY = 299000


def upgrade_seen(state: SubscriptionState, at: int, amount: Money | None = None) -> PaymentObserved:
    charge = state.payments[derived_id(SUB, "change-payment-c")]
    return PaymentObserved(
        observation_id=observation_id_for("prov-upgrade", "succeeded"),
        subscription_id=SUB,
        observed_at=at,
        source="gateway",
        payment_id=charge.payment_id,
        provider_payment_id="prov-upgrade",
        status="succeeded",
        amount=amount or charge.amount,
        paid=True,
    )


def refund_of(payment_id: str, key: str, at: int, amount: int | None = None) -> RefundPayment:
    return RefundPayment(
        command_id=derived_id(SUB, f"refund-command-{key}"),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        refund_id=derived_id(SUB, f"refund-{key}"),
        payment_id=payment_id,
        amount=None if amount is None else Money(amount, "RUB"),
    )


def refund_ok(payment_id: str, key: str, at: int, amount: Money) -> RefundObserved:
    return RefundObserved(
        observation_id=observation_id_for(f"r-{key}", "succeeded"),
        subscription_id=SUB,
        observed_at=at,
        source="gateway",
        refund_id=derived_id(SUB, f"refund-{key}"),
        payment_id=payment_id,
        provider_refund_id=f"r-{key}",
        status="succeeded",
        amount=amount,
    )


def upgraded(at: int = T0 + 60_000) -> SubscriptionState:
    """Monthly paid at T0, upgraded to yearly a minute later (almost all of it credited)."""
    state, types = apply(active(), [change("yearly", YEARLY, 12, at)])
    assert types == ["PaymentRequested"]
    state, types = apply(state, [upgrade_seen(state, at + 1_000)])
    assert types == ["PaymentSucceeded", "SubscriptionActivated"]
    return state


def test_the_credit_is_recorded_on_the_payment_it_comes_from() -> None:
    state = upgraded()
    monthly = state.payments[pid()]
    charge = state.payments[derived_id(SUB, "change-payment-c")]
    assert monthly.credited_minor == YEARLY - charge.amount.amount_minor > 0
    assert charge.credits == {pid(): monthly.credited_minor}
    assert monthly.refundable_minor == PRICE.amount_minor - monthly.credited_minor
    assert monthly.period_end == charge.period_start  # it pays only up to the upgrade


def test_a_credited_payment_refunds_at_most_what_is_left_and_the_upgrade_keeps_access() -> None:
    """The black-box case of issue 11: monthly, upgrade, full refund of the monthly."""
    state = upgraded()
    left = state.payments[pid()].refundable_minor
    _, types = apply(state, [refund_of(pid(), "too-much", T0 + 70_000, PRICE.amount_minor)])
    assert types == ["RefundRejected"]
    state, types = apply(state, [refund_of(pid(), "all", T0 + 70_000)])
    assert types == ["RefundRequested"]
    assert state.refunds[derived_id(SUB, "refund-all")].amount == Money(left, "RUB")
    state, types = apply(state, [refund_ok(pid(), "all", T0 + 71_000, Money(left, "RUB"))])
    assert types == ["RefundSucceeded"]  # access rests on the upgrade: not canceled
    monthly = state.payments[pid()]
    assert monthly.refunded_minor + monthly.credited_minor == PRICE.amount_minor
    assert state.status == "active" and state.plan_id == "yearly"


def test_a_fully_refunded_upgrade_ends_access_and_gives_its_credit_back() -> None:
    state = upgraded()
    charge = state.payments[derived_id(SUB, "change-payment-c")]
    state, types = apply(
        state,
        [
            refund_of(charge.payment_id, "up", T0 + 80_000),
            refund_ok(charge.payment_id, "up", T0 + 81_000, charge.amount),
        ],
    )
    assert types == ["RefundRequested", "RefundSucceeded", "SubscriptionCanceled"]
    monthly = state.payments[pid()]
    assert monthly.credited_minor == 0 and monthly.refundable_minor == PRICE.amount_minor


def test_a_declined_upgrade_gives_its_credit_back() -> None:
    state, _ = apply(active(), [change("yearly", YEARLY, 12, T0 + 60_000)])
    assert state.payments[pid()].credited_minor > 0
    charge = state.payments[derived_id(SUB, "change-payment-c")]
    declined = msgspec.structs.replace(
        upgrade_seen(state, T0 + 61_000),
        observation_id=observation_id_for("prov-upgrade", "canceled"),
        status="canceled",
        paid=False,
    )
    state, _ = apply(state, [declined])
    assert state.payments[charge.payment_id].status == "canceled"
    assert state.payments[pid()].credited_minor == 0


REFUSALS: list[tuple[str, list[LedgerInput], LedgerInput, str]] = [
    (
        "a plan change while a refund is in flight",
        [refund("a", 1000)],
        change("yearly", YEARLY, 12, T0 + 6_000),
        "refund_in_progress",
    ),
    (
        "a refund while a plan change is in flight",
        [change("yearly", YEARLY, 12, T0 + 6_000)],
        refund("a", 1000, at=T0 + 7_000),
        "plan_change_in_progress",
    ),
    (
        "an upgrade while a later period is already paid",
        [pay("k2", at=T0 + 2_000), observed("succeeded", "k2", at=T0 + 3_000)],
        change("yearly", YEARLY, 12, T0 + 6_000),
        "prepaid_period",
    ),
    (
        "an upgrade whose credit covers the whole new price",
        [change("cheap", 19900, 1, T0 + 2_000, key="down")],  # renews at 199.00 now
        change("mid", 20000, 1, T0 + 3_000),
        "credit_exceeds_price",
    ),
]


@pytest.mark.parametrize(("name", "prior", "cmd", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_that_keep_credit_and_refunds_apart(
    name: str, prior: list[LedgerInput], cmd: LedgerInput, reason: str
) -> None:
    state, _ = apply(active(), prior)
    d = decide(state, cmd, POLICY)
    (event,) = d.events
    assert isinstance(event, PlanChangeRejected | RefundRejected)
    assert event.reason == reason


def test_refunding_the_current_period_moves_the_next_paid_one_up() -> None:
    state, _ = apply(
        active(), [pay("k2", at=T0 + 2_000), observed("succeeded", "k2", at=T0 + 3_000)]
    )
    second = state.payments[pid("k2")]
    assert second.period_start == state.payments[pid()].period_end
    state, types = apply(state, [refund("a", at=T0 + 5_000), refund_seen("a", at=T0 + 6_000)])
    assert types == ["RefundRequested", "RefundSucceeded", "AccessShortened"]
    second = state.payments[pid("k2")]
    assert second.period_start == T0 + 6_000  # the paid month starts now, not in a month
    assert state.status == "active" and state.period_end == second.period_end


def test_a_success_for_another_amount_is_escalated_not_granted() -> None:
    state, _ = apply(None, [pay()])
    odd = observed("succeeded", amount=Money(100, "RUB"))
    state, types = apply(state, [odd])
    assert types == ["PaymentOutcomeUnknown"]
    rec = state.payments[pid()]
    assert rec.status == "unknown" and rec.escalated and rec.deadline_at is None
    assert rec.provider_payment_id == "prov-k1" and "amount_mismatch" in (rec.status_reason or "")
    assert state.status == "pending"
    # redeliveries change nothing; only reconciliation (an operator's accept) settles it
    _, types = apply(
        state,
        [msgspec.structs.replace(odd, observation_id=derived_id(SUB, "again"), source="poll")],
    )
    assert types == []
    accepted = msgspec.structs.replace(
        odd, observation_id=derived_id(SUB, "recon"), source="reconciliation"
    )
    state, types = apply(state, [accepted])
    assert types == ["PaymentSucceeded", "SubscriptionActivated"]
    assert state.payments[pid()].amount == Money(100, "RUB")  # what was captured


def test_another_currency_is_escalated_too() -> None:
    state, _ = apply(None, [pay()])
    d = decide(state, observed("succeeded", amount=Money(29900, "USD")), POLICY)
    (event,) = d.events
    assert isinstance(event, PaymentOutcomeUnknown) and event.escalated


def test_an_admin_command_redelivered_after_leaving_the_replay_memory_applies_nothing() -> None:
    small = Policy(recent_sources=2)
    grant = admin("grant", T0 + 5_000, plan_id="monthly", period_months=1)
    state = decide(active(), grant, small).state
    assert state is not None
    granted_until = state.period_end
    for n in range(3):  # push the grant out of ``recent``
        state = decide(state, admin("extend", T0 + 6_000 + n, days=1), small).state
        assert state is not None
    assert grant.command_id not in state.recent
    d = decide(state, grant, small)
    assert d.duplicate and d.events == [] and d.state == state
    assert granted_until is not None and state.period_end == granted_until + 3 * 86_400_000


def test_period_end_after_upgrade_is_a_full_new_period() -> None:
    state = upgraded(at=T0 + 60_000)
    assert state.period_end == period_end_ms(T0 + 61_000, 12)


def test_evolve_refuses_a_version_gap_or_a_repeat() -> None:
    from streams.ledger.machine import VersionGap, evolve

    state, _ = apply(None, [pay()])
    d = decide(state, observed("pending"), POLICY)
    (event,) = d.events
    with pytest.raises(VersionGap):
        evolve(state, msgspec.structs.replace(event, version=state.version + 2))
    with pytest.raises(VersionGap):
        evolve(state, msgspec.structs.replace(event, version=state.version))
    assert evolve(state, event).version == state.version + 1


def test_past_the_key_window_with_nothing_found_the_payment_is_handed_to_reconciliation() -> None:
    from schemas.messages import KEY_WINDOW_EXPIRED, PaymentCallFailed
    from streams.ledger.machine import due_commands

    state, _ = apply(None, [pay()])
    expired = PaymentCallFailed(
        observation_id=derived_id(pid(), "expired"),
        subscription_id=SUB,
        observed_at=T0 + 21 * 3_600_000,
        source="gateway",
        payment_id=pid(),
        outcome="unknown",
        error_code=KEY_WINDOW_EXPIRED,
        error="request is 21.0 h old, past the 20 h key window",
        attempt=0,
    )
    state, types = apply(state, [expired])
    assert types == ["PaymentOutcomeUnknown"]
    rec = state.payments[pid()]
    assert rec.status == "unknown" and rec.deadline_at is None and not rec.escalated
    assert KEY_WINDOW_EXPIRED in (rec.status_reason or "")
    assert due_commands(state, T0 + 30 * 86_400_000, POLICY) == []  # never re-driven
    # a late outcome from the provider still applies
    state, types = apply(state, [observed("succeeded", at=T0 + 22 * 3_600_000)])
    assert types == ["PaymentSucceeded", "SubscriptionActivated"]
