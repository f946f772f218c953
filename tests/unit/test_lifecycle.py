"""Table-driven tests of the lifecycle rules in the pure machine: refunds, auto-renew,
renewals, dunning, lapse and expiry. Time is the messages' own: no clock, no I/O."""

from __future__ import annotations

import msgspec
import pytest

from schemas.ids import derived_id, observation_id_for
from schemas.messages import (
    ChangePlan,
    PaymentObserved,
    PaymentSettleRequested,
    PlanChangeRejected,
    RefundObserved,
    RefundPayment,
    RetryPayment,
    SetAutoRenew,
    SettlePayment,
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
    renewal_at,
    renewal_payment_id,
)
from streams.ledger.prices import PriceBook

# Re-exported (``X as X``) only for test_money_edges and test_notify, which are being changed
# elsewhere and still import them from here; anything new imports tests.factories.
# tests/unit/test_test_layout.py lists them.
from tests.factories import (
    DAY,
    METHOD,
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
    quote,
    refund,
    refund_seen,
    refund_unknown,
)

PERIOD_END = period_end_ms(T0 + 1_000, 1)
# The renewal of the first period: the lead before its end plus this subscription's own
# offset within the spread (renewals of one cohort do not fire in one tick).
RENEW_AT = renewal_at(SUB, PERIOD_END, POLICY)


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
    assert next_due(state, POLICY) == ("renew", RENEW_AT)
    assert next_wakeup(state, POLICY) == RENEW_AT
    assert tick(state, RENEW_AT - 1) == []


def test_renewal_charges_the_saved_method_and_extends_the_period() -> None:
    state = active()
    (due,) = tick(state, RENEW_AT)
    assert isinstance(due, SubscriptionDue) and due.kind == "renew"
    state, types = apply(state, [due])
    assert types == ["PaymentRequested"]
    renewal = state.payments[renewal_payment_id(state, 0)]
    assert renewal.kind == "renewal" and renewal.request is not None
    assert renewal.request.payment_method_id == METHOD
    assert renewal.amount == PRICE
    # the timer firing again (or a second worker) applies nothing new
    assert tick(state, RENEW_AT + 1) == []
    state2, types2 = apply(state, [due])
    assert types2 == [] and state2 == state
    state, types = apply(state, [renewal_seen(state, 0, "succeeded", RENEW_AT + 5)])
    assert types == ["PaymentSucceeded", "SubscriptionActivated"]
    assert state.status == "active" and state.period_end == period_end_ms(PERIOD_END, 1)


def test_auto_renew_off_expires_at_period_end_and_on_again_renews() -> None:
    state, types = apply(active(), [auto_renew(False)])
    assert types == ["AutoRenewChanged"] and not state.auto_renew
    assert next_due(state, POLICY) == ("lapse", PERIOD_END)
    on, _ = apply(state, [auto_renew(True, T0 + 3_000)])
    assert next_due(on, POLICY) == ("renew", RENEW_AT)
    (lapse,) = tick(state, PERIOD_END)
    state, types = apply(state, [lapse])
    assert types == ["SubscriptionExpired"] and state.status == "expired"
    assert next_due(state, POLICY) is None


def test_soft_decline_goes_past_due_then_a_retry_recovers() -> None:
    state = active()
    (due,) = tick(state, RENEW_AT)
    state, _ = apply(state, [due])
    declined_at = RENEW_AT + 5
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
    (due,) = tick(state, RENEW_AT)
    state, _ = apply(state, [due])
    state, types = apply(state, [renewal_seen(state, 0, "canceled", RENEW_AT + 5, "card_expired")])
    assert types == ["PaymentCanceled", "RenewalFailed"] and state.dunning_stopped
    assert next_due(state, POLICY) == ("lapse", PERIOD_END)
    (lapse,) = tick(state, PERIOD_END)
    state, types = apply(state, [lapse])
    assert types == ["SubscriptionExpired"] and state.status == "expired"


def test_dunning_schedule_exhausted_expires() -> None:
    state = active()
    (due,) = tick(state, RENEW_AT)
    state, _ = apply(state, [due])
    at = RENEW_AT + 5
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
    (due,) = tick(state, RENEW_AT)
    off, _ = apply(state, [auto_renew(False)])
    after, types = apply(off, [due])
    assert types == [] and after == off


def test_an_early_tick_applies_nothing() -> None:
    state = active()
    early = SubscriptionDue(
        command_id=derived_id(SUB, "early"),
        subscription_id=SUB,
        issued_at=RENEW_AT - 10,
        kind="renew",
        due_at=RENEW_AT,
    )
    after, types = apply(state, [early])
    assert types == [] and after == state


def test_without_a_saved_method_the_renewal_fails_into_dunning() -> None:
    """No method (none saved, or all deleted from the wallet): the renewal is not skipped
    but fails at its time without a charge (the user is told), and dunning retries with
    whatever the wallet then holds."""
    state, _ = apply(None, [pay(), observed("succeeded")])
    assert state.payment_method_id is None
    kind, at = next_due(state, POLICY) or ("", 0)
    assert kind == "renew"
    (due,) = tick(state, at)
    state, types = apply(state, [due])
    assert types == ["RenewalFailed"] and state.dunning_attempt == 1
    assert state.next_retry_at is not None and not state.dunning_stopped
    assert all(p.kind != "renewal" for p in state.payments.values())  # nothing charged
    (lapse,) = tick(state, PERIOD_END)
    state, types = apply(state, [lapse])
    assert types == ["SubscriptionPastDue"]


def test_a_renewal_in_flight_at_period_end_goes_past_due_then_recovers() -> None:
    state = active()
    (due,) = tick(state, RENEW_AT)
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


# ------------------------------------------------- reminders, prices, retry, plan change, admin
REMIND = Policy(
    payment_deadline_ms=10_000,
    renew_lead_ms=DAY,
    dunning_schedule_ms=(DAY,),
    remind_ms=3 * DAY,
)


def test_reminder_goes_out_once_per_period_before_the_charge() -> None:
    state = active()
    assert next_due(state, REMIND) == ("remind", PERIOD_END - 3 * DAY)
    (remind,) = due_commands(state, PERIOD_END - 3 * DAY, REMIND)
    d = decide(state, remind, REMIND)
    assert [type(e).__name__ for e in d.events] == ["RenewalUpcoming"]
    assert d.state is not None and d.state.reminded_for == PERIOD_END
    assert next_due(d.state, REMIND) == ("renew", RENEW_AT)


def test_renewal_charges_the_price_in_force_from_the_timer() -> None:
    state = active()
    due = SubscriptionDue(
        command_id=derived_id(SUB, "due"),
        subscription_id=SUB,
        issued_at=RENEW_AT,
        kind="renew",
        due_at=RENEW_AT,
        price=quote(amount=34900, v=2),
    )
    state, _types = apply(state, [due])
    renewal = state.payments[renewal_payment_id(state, 0)]
    assert renewal.amount == Money(34900, "RUB") and renewal.request is not None
    assert renewal.request.price_version == 2
    # a quote for another plan is not this subscription's price: the sold price is used
    state2, _ = apply(active(), [msgspec.structs.replace(due, price=quote("yearly", 1))])
    assert state2.payments[renewal_payment_id(state2, 0)].amount == PRICE


def retry(of: str, key: str, at: int) -> RetryPayment:
    return RetryPayment(
        command_id=derived_id(SUB, f"retry-{key}"),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        retry_of=of,
        payment_id=derived_id(SUB, f"retry-payment-{key}"),
        price=quote(),
        return_url="https://cinema.example/return",
        description="retry",
    )


def test_retry_of_a_declined_payment_pays_once() -> None:
    state, _ = apply(None, [pay(), observed("canceled", cancellation_reason="insufficient_funds")])
    state, types = apply(state, [retry(pid(), "a", T0 + 5_000)])
    assert types == ["PaymentRequested"]
    new_id = derived_id(SUB, "retry-payment-a")
    assert state.payments[new_id].kind == "retry"
    # a second retry while the first is in flight is refused
    state, types = apply(state, [retry(pid(), "b", T0 + 6_000)])
    assert types == ["PaymentRejected"]


def test_retry_racing_a_late_success_never_pays_the_period_twice() -> None:
    # the retry is accepted only while the period is unpaid; once another payment has
    # activated it, the retry is refused with period_already_paid
    state, _ = apply(None, [pay(), observed("canceled"), pay("k2", at=T0 + 2_000)])
    state, _ = apply(state, [observed("succeeded", "k2", at=T0 + 3_000)])
    state, types = apply(state, [retry(pid(), "late", T0 + 4_000)])
    assert types == ["PaymentRejected"]
    assert sum(p.status == "succeeded" for p in state.payments.values()) == 1


def test_retry_of_a_payment_that_did_not_fail_is_refused() -> None:
    _state, types = apply(active(), [retry(pid(), "x", T0 + 5_000)])
    assert types == ["PaymentRejected"]


def test_upgrade_charges_the_new_price_less_the_unused_part_and_starts_now() -> None:
    state = active()
    start, end = state.period_start or 0, state.period_end or 0
    half = start + (end - start) // 2
    state, types = apply(state, [change("yearly", 299000, 12, half)])
    assert types == ["PaymentRequested"]
    charge = state.payments[derived_id(SUB, "change-payment-c")]
    credit = 29900 * (end - half) // (end - start)
    assert charge.amount == Money(299000 - credit, "RUB") and charge.kind == "upgrade"
    assert charge.request is not None  # open: it keeps its request
    assert charge.request.payment_method_id == METHOD  # the saved card, no redirect
    provider = "prov-upgrade"
    ok = PaymentObserved(
        observation_id=observation_id_for(provider, "succeeded"),
        subscription_id=SUB,
        observed_at=half + 10,
        source="gateway",
        payment_id=charge.payment_id,
        provider_payment_id=provider,
        status="succeeded",
        amount=charge.amount,
        paid=True,
    )
    state, types = apply(state, [ok])
    assert types == ["PaymentSucceeded", "SubscriptionActivated"]
    assert state.plan_id == "yearly" and state.period_start == half + 10
    assert state.period_end == period_end_ms(half + 10, 12)
    assert state.renew_amount == Money(299000, "RUB")  # renewals charge the full price


def test_downgrade_applies_at_the_period_end() -> None:
    state, types = apply(active(), [change("cheap", 19900, 1, T0 + 5_000)])
    assert types == ["PlanChangeScheduled"]
    assert state.plan_id == "monthly" and state.renew_plan_id == "cheap"
    (due,) = tick(state, RENEW_AT)
    state, _ = apply(state, [due])
    renewal = state.payments[renewal_payment_id(state, 0)]
    assert renewal.plan_id == "cheap" and renewal.amount == Money(19900, "RUB")


@pytest.mark.parametrize(
    ("name", "prior", "cmd", "reason"),
    [
        ("not active", [pay()], change("yearly", 299000, 12, T0 + 5_000), "not_active"),
        ("same plan", None, change("monthly", 29900, 1, T0 + 5_000), "same_plan"),
    ],
)
def test_plan_change_refusals(
    name: str, prior: list[LedgerInput] | None, cmd: ChangePlan, reason: str
) -> None:
    state = apply(None, prior)[0] if prior else active()
    d = decide(state, cmd, POLICY)
    assert [type(e).__name__ for e in d.events] == ["PlanChangeRejected"]
    (event,) = d.events
    assert isinstance(event, PlanChangeRejected) and event.reason == reason


def test_admin_extend_grant_and_cancel_are_recorded_with_actor_and_reason() -> None:
    state, types = apply(active(), [admin("extend", T0 + 5_000, days=7)])
    assert types == ["PeriodAdjusted"] and state.period_end == PERIOD_END + 7 * DAY
    state, types = apply(state, [admin("grant", T0 + 6_000, plan_id="monthly", period_months=1)])
    assert types == ["PeriodAdjusted"]
    assert state.period_end == period_end_ms(PERIOD_END + 7 * DAY, 1)  # stacked after
    state, types = apply(state, [admin("cancel", T0 + 7_000)])
    assert types == ["SubscriptionCanceled"] and state.status == "canceled"
    assert next_due(state, POLICY) is None
    state, types = apply(state, [admin("extend", T0 + 8_000, days=1)])
    assert types == ["AdminActionRejected"]


def test_admin_grant_to_someone_who_never_paid() -> None:
    state, types = apply(None, [admin("grant", T0, plan_id="monthly", period_months=1)])
    assert types == ["PeriodAdjusted"] and state.status == "active"
    assert state.period_end == period_end_ms(T0, 1)
    assert next_due(state, POLICY) == ("lapse", state.period_end)  # no method: it lapses


def test_price_book_answers_the_version_in_force() -> None:
    book = PriceBook.of(
        [
            ("monthly", 1, -(2**62), 29900, "RUB", 1),
            ("monthly", 2, PERIOD_END, 34900, "RUB", 1),
        ]
    )
    assert book.quote("monthly", PERIOD_END - 1) == quote(v=1)
    assert book.quote("monthly", PERIOD_END) == quote(amount=34900, v=2)
    assert book.quote("unknown", PERIOD_END) is None
    # the timer asks for the price at the new period's start: the scheduled one
    (due,) = due_commands(active(), RENEW_AT, POLICY, book.quote)
    assert isinstance(due, SubscriptionDue) and due.price == quote(amount=34900, v=2)


# ---------------------------------------------------------------- two-stage (capture=false)
def held() -> SubscriptionState:
    state, types = apply(None, [pay(), observed("waiting_for_capture", at=T0 + 1_000)])
    assert types == ["PaymentRequested", "PaymentPending"] and state.status == "pending"
    return state


def settle_cmd(action: str, at: int) -> SettlePayment:
    return SettlePayment(
        command_id=derived_id(SUB, f"settle-{action}-{at}"),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        payment_id=pid(),
        action=action,  # type: ignore[arg-type]
        actor="admin:ops-1",
        reason="checked",
    )


def test_auto_capture_then_success_activates() -> None:
    state = held()
    assert next_due(state, POLICY) == ("capture", T0 + 1_000)
    (due,) = tick(state, T0 + 1_000)
    state, types = apply(state, [due])
    assert types == ["PaymentSettleRequested"]
    assert state.payments[pid()].settle_action == "capture"
    state, types = apply(state, [observed("succeeded", at=T0 + 2_000)])
    assert types == ["PaymentSucceeded", "SubscriptionActivated"]
    assert state.status == "active"
    assert next_due(state, POLICY) == (  # no saved method: it fails into dunning then
        "renew",
        renewal_at(SUB, state.period_end or 0, POLICY),
    )


def test_manual_mode_releases_the_hold_before_it_expires() -> None:
    manual = Policy(payment_deadline_ms=10_000, capture_delay_ms=None, hold_ms=6 * DAY)
    state = held()
    assert next_due(state, manual) == ("release", T0 + 1_000 + 6 * DAY)
    (due,) = [
        c
        for c in due_commands(state, T0 + 1_000 + 6 * DAY, manual)
        if isinstance(c, SubscriptionDue)
    ]
    d = decide(state, due, manual)
    assert [type(e).__name__ for e in d.events] == ["PaymentSettleRequested"]
    event = d.events[0]
    assert isinstance(event, PaymentSettleRequested) and event.action == "cancel"


def test_a_late_capture_is_redriven_with_a_new_attempt() -> None:
    state = held()
    (due,) = tick(state, T0 + 1_000)
    state, _ = apply(state, [due])
    deadline = state.payments[pid()].settle_deadline or 0
    assert next_due(state, POLICY) == ("capture", deadline)
    (again,) = [c for c in tick(state, deadline) if isinstance(c, SubscriptionDue)]
    state, types = apply(state, [again])
    assert types == ["PaymentSettleRequested"] and state.payments[pid()].settle_attempts == 2


def test_admin_settle_rules() -> None:
    manual = Policy(payment_deadline_ms=10_000, capture_delay_ms=None)
    state = held()
    d = decide(state, settle_cmd("cancel", T0 + 3_000), manual)
    assert [type(e).__name__ for e in d.events] == ["PaymentSettleRequested"]
    assert d.state is not None
    clash = decide(d.state, settle_cmd("capture", T0 + 4_000), manual)
    assert [type(e).__name__ for e in clash.events] == ["PaymentSettleRejected"]
    not_held = decide(active(), settle_cmd("capture", T0 + 5_000), manual)
    assert [type(e).__name__ for e in not_held.events] == ["PaymentSettleRejected"]


# ------------------------------------------------------- reconciliation over a terminal status
def test_reconciliation_applies_a_provider_success_over_our_cancel() -> None:
    state, _ = apply(None, [pay(), observed("canceled")])
    webhook_late = observed("succeeded")  # a webhook cannot reopen a terminal payment
    assert decide(state, webhook_late, POLICY).duplicate
    fix = msgspec.structs.replace(
        observed("succeeded", at=T0 + 9_000),
        source="reconciliation",
        observation_id=derived_id(SUB, "recon-1"),
    )
    state, types = apply(state, [fix])
    assert types == ["PaymentSucceeded", "SubscriptionActivated"] and state.status == "active"


def test_reconciliation_applies_a_provider_cancel_over_our_success() -> None:
    fix = msgspec.structs.replace(
        observed("canceled", at=T0 + 9_000),
        source="reconciliation",
        observation_id=derived_id(SUB, "recon-2"),
    )
    state, types = apply(active(), [fix])
    assert types == ["PaymentCanceled", "SubscriptionCanceled"] and state.status == "canceled"


def dup_refund(provider_id: str, at: int = T0 + 7_000) -> RefundPayment:
    return RefundPayment(
        command_id=derived_id(SUB, f"dup-{provider_id}"),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        refund_id=derived_id(SUB, f"dup-refund-{provider_id}"),
        payment_id=pid(),
        amount=PRICE,
        actor="reconciler",
        duplicate_of_provider_id=provider_id,
    )


def test_a_duplicate_charge_is_refunded_without_touching_our_payment() -> None:
    state, types = apply(active(), [dup_refund("prov-dup")])
    assert types == ["RefundRequested"]
    rec = state.payments[pid()]
    assert rec.refunding_minor == 0 and rec.refundable_minor == 29900
    # the recorded charge is never refunded as a duplicate; a re-run asks nothing new
    _, types = apply(state, [dup_refund("prov-k1", at=T0 + 8_000)])
    assert types == ["RefundRejected"]
    again = msgspec.structs.replace(dup_refund("prov-dup"), command_id=derived_id(SUB, "rerun"))
    _, types = apply(state, [again])
    assert types == []


def test_reconciliation_corrects_a_terminal_refund_without_double_counting() -> None:
    state, _ = apply(active(), [refund("a", 5000), refund_seen("a", "canceled")])
    assert state.payments[pid()].refunded_minor == 0
    fix = msgspec.structs.replace(
        refund_seen("a", "succeeded", at=T0 + 9_000), source="reconciliation"
    )
    state, types = apply(state, [fix])
    assert types == ["RefundSucceeded"]
    rec = state.payments[pid()]
    assert (rec.refunded_minor, rec.refunding_minor) == (5000, 0)


def test_an_admin_action_without_a_subscription_is_answered() -> None:
    d = decide(None, admin("extend", T0, days=3), POLICY)
    assert [type(e).__name__ for e in d.events] == ["AdminActionRejected"]


def test_refunding_a_stacked_future_period_takes_it_out_of_access() -> None:
    state, _ = apply(
        active(), [pay("k2", at=T0 + 2_000), observed("succeeded", "k2", at=T0 + 3_000)]
    )
    two_months = state.period_end
    assert two_months == period_end_ms(PERIOD_END, 1)
    second = RefundPayment(
        command_id=derived_id(SUB, "refund-second"),
        subscription_id=SUB,
        issued_at=T0 + 4_000,
        user_id=USER,
        refund_id=derived_id(SUB, "refund-second-id"),
        payment_id=pid("k2"),
    )
    seen = RefundObserved(
        observation_id=observation_id_for("r-second", "succeeded"),
        subscription_id=SUB,
        observed_at=T0 + 5_000,
        source="gateway",
        refund_id=second.refund_id,
        payment_id=pid("k2"),
        provider_refund_id="r-second",
        status="succeeded",
        amount=PRICE,
    )
    state, types = apply(state, [second, seen])
    assert types == ["RefundRequested", "RefundSucceeded", "AccessShortened"]
    assert state.status == "active" and state.period_end == PERIOD_END
