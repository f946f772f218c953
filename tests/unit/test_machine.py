"""Table-driven tests of the pure ledger state machine (no Faust, no I/O)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import pytest

from schemas.ids import command_id_for, derived_id
from schemas.messages import (
    AddPaymentMethod,
    AdminAdjust,
    ManagePaymentMethod,
    MethodDetails,
    PaymentObserved,
    PaySubscription,
    RefundPayment,
    RetryPayment,
    SetAutoRenew,
    SettlePayment,
    encode,
)
from schemas.money import Money
from schemas.periods import dt_to_ms
from schemas.state import SubscriptionState, decode_state, encode_state
from streams.ledger.machine import (
    Decision,
    LedgerInput,
    Policy,
    decide,
    due_commands,
    evolve,
    next_due,
)
from tests.factories import (
    METHOD,
    PRICE,
    SUB,
    T0,
    USER,
    call_failed,
    change,
    observed,
    pay,
    pid,
    quote,
    refund,
    refund_seen,
    saved_success,
    sweep,
)
from tests.factories import POLICY as FACTORY_POLICY
from tests.factories import apply as apply_lifecycle

POLICY = Policy(payment_deadline_ms=10_000, redrive_max_backoff_ms=80_000, recent_sources=16)


def run(inputs: Sequence[LedgerInput]) -> tuple[SubscriptionState | None, list[list[str]]]:
    """Apply inputs in order; return the final state and the event types per input."""
    state: SubscriptionState | None = None
    emitted: list[list[str]] = []
    for msg in inputs:
        d = decide(state, msg, POLICY)
        state = d.state
        emitted.append([] if d.duplicate else [type(e).__name__ for e in d.events])
    return state, emitted


# (name, inputs, expected event types per input, expected subscription status, payment status)
CASES: list[tuple[str, list[LedgerInput], list[list[str]], str, str | None]] = [
    ("pay", [pay()], [["PaymentRequested"]], "pending", "requested"),
    (
        "pay then pending",
        [pay(), observed("pending")],
        [["PaymentRequested"], ["PaymentPending"]],
        "pending",
        "pending",
    ),
    (
        "happy path",
        [pay(), observed("pending"), observed("succeeded")],
        [["PaymentRequested"], ["PaymentPending"], ["PaymentSucceeded", "SubscriptionActivated"]],
        "active",
        "succeeded",
    ),
    (
        "success without seeing pending",
        [pay(), observed("succeeded")],
        [["PaymentRequested"], ["PaymentSucceeded", "SubscriptionActivated"]],
        "active",
        "succeeded",
    ),
    (
        "out of order: pending after succeeded is ignored",
        [pay(), observed("succeeded"), observed("pending")],
        [["PaymentRequested"], ["PaymentSucceeded", "SubscriptionActivated"], []],
        "active",
        "succeeded",
    ),
    (
        "declined",
        [pay(), observed("pending"), observed("canceled", cancellation_reason="card_expired")],
        [["PaymentRequested"], ["PaymentPending"], ["PaymentCanceled"]],
        "inactive",
        "canceled",
    ),
    (
        "canceled is terminal: a later success is not applied",
        [pay(), observed("canceled"), observed("succeeded")],
        [["PaymentRequested"], ["PaymentCanceled"], []],
        "inactive",
        "canceled",
    ),
    (
        "second pay while the first is in flight is rejected",
        [pay("k1"), pay("k2")],
        [["PaymentRequested"], ["PaymentRejected"]],
        "pending",
        "requested",
    ),
    (
        "unknown outcome then success",
        [pay(), call_failed("unknown"), observed("succeeded")],
        [
            ["PaymentRequested"],
            ["PaymentOutcomeUnknown"],
            ["PaymentSucceeded", "SubscriptionActivated"],
        ],
        "active",
        "succeeded",
    ),
    (
        "unknown after pending changes nothing",
        [pay(), observed("pending"), call_failed("unknown")],
        [["PaymentRequested"], ["PaymentPending"], []],
        "pending",
        "pending",
    ),
    (
        "definite rejection cancels",
        [pay(), call_failed("rejected")],
        [["PaymentRequested"], ["PaymentCanceled"]],
        "inactive",
        "canceled",
    ),
    (
        "sweep re-drives an overdue payment",
        [pay(), sweep(1, T0 + 11_000)],
        [["PaymentRequested"], ["PaymentRedriven"]],
        "pending",
        "requested",
    ),
    (
        "stale sweep (wrong attempt) does nothing",
        [pay(), sweep(2, T0 + 11_000)],
        [["PaymentRequested"], []],
        "pending",
        "requested",
    ),
    (
        "sweep after success does nothing",
        [pay(), observed("succeeded"), sweep(1, T0 + 11_000)],
        [["PaymentRequested"], ["PaymentSucceeded", "SubscriptionActivated"], []],
        "active",
        "succeeded",
    ),
    (
        "an outcome for a subscription never billed is ignored",
        [observed("succeeded")],
        [[]],
        "none",
        None,
    ),
    (
        "pay again after a decline",
        [pay("k1"), observed("canceled", "k1"), pay("k2")],
        [["PaymentRequested"], ["PaymentCanceled"], ["PaymentRequested"]],
        "pending",
        "canceled",
    ),
]


CASE_IDS = [c[0] for c in CASES]


@pytest.mark.parametrize(
    ("name", "inputs", "expected", "sub_status", "pay_status"), CASES, ids=CASE_IDS
)
def test_transitions(
    name: str,
    inputs: list[LedgerInput],
    expected: list[list[str]],
    sub_status: str,
    pay_status: str | None,
) -> None:
    state, emitted = run(inputs)
    assert emitted == expected
    assert (state.status if state else "none") == sub_status
    if pay_status is not None:
        assert state is not None
        assert state.payments[pid()].status == pay_status


@pytest.mark.parametrize(("name", "inputs"), [(c[0], c[1]) for c in CASES], ids=CASE_IDS)
def test_every_input_replayed_reemits_the_same_events_and_changes_nothing(
    name: str, inputs: list[LedgerInput]
) -> None:
    state: SubscriptionState | None = None
    for msg in inputs:
        first = decide(state, msg, POLICY)
        again = decide(first.state, msg, POLICY)
        assert again.state == first.state
        assert [encode(e) for e in again.events] == [encode(e) for e in first.events]
        if first.events:
            assert again.duplicate
        state = first.state


@pytest.mark.parametrize(("name", "inputs"), [(c[0], c[1]) for c in CASES], ids=CASE_IDS)
def test_decide_is_deterministic_and_versions_are_consecutive(
    name: str, inputs: list[LedgerInput]
) -> None:
    def all_events(seq: list[LedgerInput]) -> list[bytes]:
        state: SubscriptionState | None = None
        out: list[bytes] = []
        for msg in seq:
            d: Decision = decide(state, msg, POLICY)
            if not d.duplicate:
                out.extend(encode(e) for e in d.events)
            state = d.state
        return out

    first, second = all_events(inputs), all_events(inputs)
    assert first == second
    versions = [msgspec.json.decode(e)["version"] for e in first]
    assert versions == list(range(1, len(versions) + 1))
    ids = [msgspec.json.decode(e)["event_id"] for e in first]
    assert len(set(ids)) == len(ids)


def test_folding_the_events_rebuilds_the_state() -> None:
    state, _ = run([pay(), observed("pending"), observed("succeeded")])
    assert state is not None
    events = [e for evs in state.recent.values() for e in evs]
    rebuilt = SubscriptionState(subscription_id=SUB, user_id=USER)
    for e in sorted(events, key=lambda e: e.version):
        rebuilt = evolve(rebuilt, e)
    assert msgspec.structs.replace(rebuilt, recent=state.recent, answered=state.answered) == state


def test_activation_period_is_calendar_aware() -> None:
    state, _ = run([pay(), observed("succeeded", at=T0)])
    assert state is not None
    assert state.period_start == T0
    # Jan 31 + 1 month = end of February (2026 is not a leap year), same time of day.
    assert state.period_end == dt_to_ms(datetime(2026, 2, 28, 12, 0, tzinfo=UTC))


def test_buying_while_active_stacks_the_new_period_after_the_current_one() -> None:
    state, emitted = run(
        [
            pay("k1"),
            observed("succeeded", "k1", at=T0),
            pay("k2", at=T0 + 5_000),
            observed("succeeded", "k2", at=T0 + 6_000),
        ]
    )
    assert emitted[-1] == ["PaymentSucceeded", "SubscriptionActivated"]
    assert state is not None
    feb_end = dt_to_ms(datetime(2026, 2, 28, 12, 0, tzinfo=UTC))
    second = state.payments[pid("k2")]
    assert second.period_start == feb_end  # no overlap, no period charged twice
    assert state.period_start == T0
    assert state.period_end == dt_to_ms(datetime(2026, 3, 28, 12, 0, tzinfo=UTC))


def test_saved_payment_method_is_recorded_only_when_saved_on_success() -> None:
    not_saved, _ = run([pay(), observed("succeeded", payment_method_id="pm-1")])
    saved, _ = run(
        [pay(), observed("succeeded", payment_method_id="pm-1", payment_method_saved=True)]
    )
    assert not_saved is not None and not_saved.payment_method_id is None
    assert saved is not None and saved.payment_method_id == "pm-1"


def test_redrive_backoff_grows_and_is_capped() -> None:
    state, _ = run([pay(), sweep(1, T0 + 10_000)])
    assert state is not None
    assert state.payments[pid()].deadline_at == T0 + 10_000 + 20_000
    state2, _ = run([pay(), sweep(1, T0 + 10_000), sweep(2, T0 + 40_000), sweep(3, T0 + 90_000)])
    assert state2 is not None
    rec = state2.payments[pid()]
    assert rec.attempts == 3
    assert rec.deadline_at == T0 + 90_000 + 80_000  # capped at redrive_max_backoff_ms


def test_old_command_evicted_from_the_replay_window_applies_nothing() -> None:
    inputs: list[LedgerInput] = [pay(), observed("succeeded")]
    for i in range(POLICY.recent_sources):  # each filler source emits, so it takes a slot
        inputs += [pay(f"x{i}", at=T0 + 20_000 + i), observed("canceled", f"x{i}")]
    state, _ = run(inputs)
    assert state is not None
    assert command_id_for(USER, "k1") not in state.recent
    d = decide(state, pay(), POLICY)
    assert d.duplicate and d.events == [] and d.state == state


def test_state_round_trips_through_its_table_encoding() -> None:
    state, _ = run([pay(), observed("pending"), observed("succeeded")])
    assert state is not None
    assert decode_state(encode_state(state)) == state


# ------------------------------------------------------------- bounded state (issue 13)
DAY = 86_400_000
RETENTION = POLICY.closed_retention_ms
PAID_END = dt_to_ms(datetime(2026, 2, 28, 12, 0, 1, tzinfo=UTC))  # pay() succeeded at T0 + 1 s


def quiet(at: int, key: str = "q") -> SetAutoRenew:
    """Any person's command at ``at`` (the state is compacted before every input)."""
    return SetAutoRenew(
        command_id=derived_id(SUB, f"quiet-{key}-{at}"),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        enabled=True,
    )


def duplicate_refund(key: str) -> RefundPayment:
    """Reconciliation refunds a second charge the provider made for our payment."""
    return RefundPayment(
        command_id=derived_id(SUB, f"dup-command-{key}"),
        subscription_id=SUB,
        issued_at=T0 + 9_000,
        user_id=USER,
        refund_id=derived_id(SUB, f"dup-{key}"),
        payment_id=pid(),
        amount=PRICE,
        reason="duplicate charge",
        actor="reconciler",
        duplicate_of_provider_id=f"prov-dup-{key}",
    )


PAID: list[LedgerInput] = [pay(), observed("succeeded")]
ONE = dataclasses.replace(POLICY, max_payments=1, max_refunds=1)
FORGETFUL = dataclasses.replace(POLICY, recent_sources=1, recent_events=1, answered_commands=1)
# (name, policy, inputs, the events of the last input, the reason of its refusal or None)
BOUND_CASES: list[tuple[str, Policy, list[LedgerInput], list[str], str | None]] = [
    (
        "a refund on the window's last day works as before",
        POLICY,
        [*PAID, refund("r", at=PAID_END + RETENTION - 1)],
        ["RefundRequested"],
        None,
    ),
    (
        "a refund past the window is refused while the record is still kept",
        POLICY,
        [*PAID, refund("r", at=PAID_END + RETENTION)],
        ["RefundRejected"],
        "refund_window_closed",
    ),
    (
        "a refund past the window is refused once the record is dropped",
        POLICY,
        [*PAID, quiet(PAID_END + RETENTION + 1), refund("r", at=PAID_END + RETENTION + 2)],
        ["RefundRejected"],
        "refund_window_closed",
    ),
    (
        "a purchase replayed after its records were dropped is refused, not charged",
        FORGETFUL,
        [*PAID, quiet(PAID_END + RETENTION + 1), pay()],
        ["PaymentRejected"],
        "command_expired",
    ),
    (
        "a refund replayed after its records were dropped is refused, not paid out",
        FORGETFUL,
        [
            *PAID,
            refund("r", 100),
            refund_seen("r"),
            quiet(PAID_END + RETENTION + 1),
            refund("r", 100),
        ],
        ["RefundRejected"],
        "command_expired",
    ),
    (
        "an auto-renew change replayed from before the horizon applies nothing",
        FORGETFUL,
        [
            *PAID,
            quiet(T0 + 2_000, "old"),
            quiet(PAID_END + RETENTION + 1),
            quiet(T0 + 2_000, "old"),
        ],
        [],
        None,
    ),
    (
        "a purchase past the limit of kept payments is refused",
        ONE,
        [pay("a"), observed("canceled", "a"), pay("b", at=T0 + 5_000)],
        ["PaymentRejected"],
        "too_many_payments",
    ),
    (
        "the limit counts only what is kept: past the window a purchase works again",
        ONE,
        [pay("a"), observed("canceled", "a"), pay("b", at=T0 + RETENTION)],
        ["PaymentRequested"],
        None,
    ),
    (
        "an upgrade past the limit of kept payments is refused",
        ONE,
        [*PAID, change("yearly", 299000, 12, T0 + 5 * DAY)],
        ["PlanChangeRejected"],
        "too_many_payments",
    ),
    (
        "a refund past the limit of kept refunds is refused",
        ONE,
        [*PAID, refund("a", 100), refund("b", 100, at=T0 + 6_000)],
        ["RefundRejected"],
        "too_many_refunds",
    ),
    (
        "a duplicate-charge refund is never refused by the limit",
        ONE,
        [*PAID, refund("a", 100), duplicate_refund("x")],
        ["RefundRequested"],
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "policy", "inputs", "types", "reason"), BOUND_CASES, ids=[c[0] for c in BOUND_CASES]
)
def test_bounded_state_refusals(
    name: str,
    policy: Policy,
    inputs: list[LedgerInput],
    types: list[str],
    reason: str | None,
) -> None:
    state: SubscriptionState | None = None
    d: Decision | None = None
    for msg in inputs:
        d = decide(state, msg, policy)
        state = d.state
    assert d is not None
    got = [] if d.duplicate else d.events
    assert [type(e).__name__ for e in got] == types, name
    refusals = [getattr(e, "reason", None) for e in got if type(e).__name__.endswith("Rejected")]
    assert refusals == ([reason] if reason else []), name


# ------------------------------------------------------------------ trials and the wallet
# The lifecycle policy (tests.factories.POLICY): renewals a day ahead, dunning after 1 and 3
# days, no reminders. A trial of 7 days; its card check holds 1.00 RUB.
LIFE = FACTORY_POLICY
VERIFY = Money(LIFE.verify_amount_minor, "RUB")
TRIAL_DAYS = 7
CARD = MethodDetails(
    title="Bank card *4444",
    first6="555555",
    last4="4444",
    expiry_month="12",
    expiry_year="2030",
    card_type="MasterCard",
    issuer_country="RU",
)


def trial(key: str = "t1", at: int = T0) -> PaySubscription:
    """The user asks for the monthly plan's free trial under Idempotency-Key ``key``."""
    return msgspec.structs.replace(pay(key, at=at), trial_days=TRIAL_DAYS)


def add_card(key: str = "w1", at: int = T0) -> AddPaymentMethod:
    cid = command_id_for(USER, key)
    return AddPaymentMethod(
        command_id=cid,
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        payment_id=pid(key),
        return_url="https://cinema.example/wallet",
    )


def manage(method: str, action: str, key: str, at: int) -> ManagePaymentMethod:
    return ManagePaymentMethod(
        command_id=command_id_for(USER, key),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        method_id=method,
        action=action,  # type: ignore[arg-type]
    )


def held(key: str, method: str | None, at: int = T0 + 1_000) -> PaymentObserved:
    """The card check of ``key`` is held; the provider saved ``method`` (None: saved none)."""
    return observed(
        "waiting_for_capture",
        key,
        at=at,
        amount=VERIFY,
        paid=True,
        payment_method_id=method or f"pm-{key}",
        payment_method_saved=method is not None,
        payment_method=CARD,
    )


def released(key: str, at: int = T0 + 2_000) -> PaymentObserved:
    return observed(
        "canceled",
        key,
        at=at,
        amount=VERIFY,
        cancellation_party="merchant",
        cancellation_reason="canceled_by_merchant",
    )


def on(
    state: SubscriptionState | None, *inputs: LedgerInput
) -> tuple[SubscriptionState, list[str]]:
    return apply_lifecycle(state, list(inputs), LIFE)


def trialing(at: int = T0) -> SubscriptionState:
    """A trial started at ``at + 1 s`` with the card pm-t saved, its check released."""
    state, _ = on(None, trial(at=at), held("t1", "pm-t", at + 1_000), released("t1", at + 2_000))
    return state


def tick_until(state: SubscriptionState, now: int) -> tuple[SubscriptionState, list[str]]:
    """Send what the timer finds due at ``now`` (and what that unlocks)."""
    types: list[str] = []
    for _ in range(6):
        due = due_commands(state, now, LIFE)
        if not due:
            break
        state, more = on(state, *due)
        types += more
    return state, types


def test_a_trial_asks_for_a_card_check_not_a_charge() -> None:
    state, types = on(None, trial())
    assert types == ["PaymentRequested"]
    rec = state.payments[pid("t1")]
    req = rec.request
    assert req is not None and req.kind == "trial" and req.trial_days == TRIAL_DAYS
    assert (req.amount, req.capture, req.save_payment_method) == (VERIFY, False, True)
    assert req.plan_amount == PRICE and state.status == "pending"


def test_the_held_card_check_starts_the_trial_saves_the_card_and_is_released() -> None:
    state, types = on(None, trial(), held("t1", "pm-t"))
    assert types == [
        "PaymentRequested",
        "PaymentPending",
        "PaymentMethodSaved",
        "TrialStarted",
        "PaymentSettleRequested",
    ]
    assert state.status == "active" and state.trial_end == T0 + 1_000 + TRIAL_DAYS * DAY
    assert state.period_end == state.trial_end and state.payment_method_id == "pm-t"
    assert state.payment_methods == ["pm-t"]
    assert (state.renew_amount, state.renew_plan_id) == (PRICE, "monthly")
    rec = state.payments[pid("t1")]
    assert rec.settle_action == "cancel"  # released, never captured
    state, types = on(state, released("t1"))
    assert types == ["PaymentCanceled"] and state.status == "active"
    assert state.payments[pid("t1")].kept_minor == 0  # nothing taken


def test_the_first_charge_is_at_the_trials_end_with_the_saved_card() -> None:
    state = trialing()
    end = state.period_end or 0
    assert next_due(state, LIFE) == ("renew", end)  # not a day early: a cancel before is free
    state, types = tick_until(state, end - 1)
    assert "PaymentRequested" not in types
    state, types = tick_until(state, end)
    assert types == ["PaymentRequested"]
    renewal = next(p for p in state.payments.values() if p.kind == "renewal")
    assert renewal.request is not None and renewal.request.payment_method_id == "pm-t"
    assert renewal.amount == PRICE and renewal.request.capture
    # Access waits for the first charge's outcome a little (no revoke-and-grant) …
    assert next_due(state, LIFE) == ("lapse", end + LIFE.renew_margin_ms)
    key = "renewal"
    ok = observed("succeeded", key, at=end + 5_000, payment_id=renewal.payment_id)
    state, types = on(state, ok)
    assert types == ["PaymentSucceeded", "SubscriptionActivated"] and state.status == "active"
    assert state.payment_method_id == "pm-t" and state.payment_methods == ["pm-t"]


def test_a_trial_canceled_before_its_end_is_never_charged() -> None:
    state = trialing()
    end = state.period_end or 0
    state, _ = on(
        state,
        SetAutoRenew(
            command_id=command_id_for(USER, "off"),
            subscription_id=SUB,
            issued_at=end - 60_000,
            user_id=USER,
            enabled=False,
        ),
    )
    state, types = tick_until(state, end + 30 * DAY)
    assert types == ["SubscriptionExpired"] and state.status == "expired"
    assert all(p.kind == "trial" for p in state.payments.values())


def test_a_declined_first_charge_goes_to_dunning() -> None:
    state = trialing()
    end = state.period_end or 0
    state, _ = tick_until(state, end)
    renewal = next(p for p in state.payments.values() if p.kind == "renewal")
    no = observed(
        "canceled",
        "renewal",
        at=end + 5_000,
        payment_id=renewal.payment_id,
        cancellation_reason="insufficient_funds",
    )
    state, types = on(state, no)
    assert types == ["PaymentCanceled", "RenewalFailed"]
    assert state.dunning_attempt == 1 and state.next_retry_at == end + 5_000 + DAY


# (name, inputs before the trial request, refusal)
TRIAL_REFUSALS: list[tuple[str, list[LedgerInput], str]] = [
    ("a second trial", [trial(), held("t1", "pm-t"), released("t1")], "trial_already_used"),
    ("after a paid subscription", [pay(), saved_success()], "not_first_subscription"),
    (
        "after a trial that converted and was refunded in full",
        [
            trial(),
            held("t1", "pm-t"),
            released("t1"),
            pay("k1", at=T0 + 3_000),
            observed("succeeded", "k1", at=T0 + 4_000),
            RefundPayment(
                command_id=command_id_for(USER, "r"),
                subscription_id=SUB,
                issued_at=T0 + 5_000,
                user_id=USER,
                refund_id=derived_id(SUB, "refund-r"),
                payment_id=pid("k1"),
            ),
            refund_seen("r", at=T0 + 6_000),
        ],
        "trial_already_used",
    ),
]


@pytest.mark.parametrize(
    ("name", "before", "reason"), TRIAL_REFUSALS, ids=[c[0] for c in TRIAL_REFUSALS]
)
def test_one_trial_per_user_ever(name: str, before: list[LedgerInput], reason: str) -> None:
    state, _ = on(None, *before)
    state, types = on(state, trial("t2", at=T0 + 40 * DAY))
    assert types == ["PaymentRejected"], name
    assert state.recent[command_id_for(USER, "t2")][0].reason == reason  # type: ignore[union-attr]


def test_a_failed_card_check_does_not_use_up_the_trial() -> None:
    declined = observed("canceled", "t1", amount=VERIFY, cancellation_reason="insufficient_funds")
    state, types = on(None, trial(), declined)
    assert types[-1] == "PaymentCanceled" and state.status == "inactive"
    assert state.trial_end is None
    state, types = on(state, trial("t2", at=T0 + 5_000))
    assert types == ["PaymentRequested"]


def test_a_card_check_that_saved_no_card_starts_no_trial_and_is_released() -> None:
    state, types = on(None, trial(), held("t1", None))
    assert types[1:] == ["PaymentPending", "PaymentSettleRequested"]
    assert state.trial_end is None and state.payment_method_id is None


def test_a_card_check_is_never_captured_nor_retried() -> None:
    state, _ = on(None, trial(), observed("canceled", "t1", amount=VERIFY))
    retry = RetryPayment(
        command_id=command_id_for(USER, "rt"),
        subscription_id=SUB,
        issued_at=T0 + 5_000,
        user_id=USER,
        retry_of=pid("t1"),
        payment_id=pid("rt"),
        price=quote(),
        return_url="x",
        description="x",
    )
    state, types = on(state, retry)
    assert types == ["PaymentRejected"]
    state, _ = on(None, trial(), held("t1", "pm-t"))
    # Even asked by an admin before the release is answered.
    rec = state.payments[pid("t1")]
    assert rec.settle_action == "cancel"
    capture = SettlePayment(
        command_id=command_id_for(USER, "cap"),
        subscription_id=SUB,
        issued_at=T0 + 1_500,
        user_id=USER,
        payment_id=pid("t1"),
        action="capture",
        actor="admin:ops",
    )
    state, types = on(state, capture)
    assert types == ["PaymentSettleRejected"]


def test_an_admin_grant_while_the_card_is_checked_starts_no_trial() -> None:
    grant = AdminAdjust(
        command_id=command_id_for(USER, "g"),
        subscription_id=SUB,
        issued_at=T0 + 500,
        user_id=USER,
        action="grant",
        actor="admin:ops",
        reason="gift",
        plan_id="monthly",
        period_months=1,
    )
    state, types = on(None, trial(), grant, held("t1", "pm-t"))
    assert "TrialStarted" not in types and state.trial_end is None
    assert state.payment_method_id == "pm-t"  # the card is saved all the same


# --------------------------------------------------------------------------- the wallet
def test_a_card_added_to_the_wallet_is_checked_saved_as_default_and_released() -> None:
    state, _ = on(None, pay(), saved_success())
    assert state.payment_methods == [METHOD]
    state, types = on(state, add_card(at=T0 + DAY))
    assert types == ["PaymentRequested"] and state.status == "active"
    req = state.payments[pid("w1")].request
    assert req is not None and (req.kind, req.amount, req.capture) == ("verify", VERIFY, False)
    state, types = on(state, held("w1", "pm-w", T0 + DAY + 1_000))
    assert types == ["PaymentPending", "PaymentMethodSaved", "PaymentSettleRequested"]
    assert state.payment_methods == [METHOD, "pm-w"] and state.payment_method_id == "pm-w"
    state, types = on(state, released("w1", T0 + DAY + 2_000))
    assert types == ["PaymentCanceled"] and state.status == "active"


def wallet_of_two() -> SubscriptionState:
    state, _ = on(
        None,
        pay(),
        saved_success(),
        add_card(at=T0 + DAY),
        held("w1", "pm-w", T0 + DAY + 1_000),
        released("w1", T0 + DAY + 2_000),
    )
    return state


def test_the_renewal_charges_the_default_chosen_between_renewals() -> None:
    state, types = on(wallet_of_two(), manage(METHOD, "default", "d", T0 + 2 * DAY))
    assert types == ["PaymentMethodChanged"] and state.payment_method_id == METHOD
    state, _ = tick_until(state, (state.period_end or 0) - 1)
    renewal = next(p for p in state.payments.values() if p.kind == "renewal")
    assert renewal.request is not None and renewal.request.payment_method_id == METHOD


def test_a_deleted_card_is_never_charged_and_an_empty_wallet_goes_to_dunning() -> None:
    state, types = on(wallet_of_two(), manage("pm-w", "delete", "x1", T0 + 2 * DAY))
    assert types == ["PaymentMethodChanged"]
    assert state.payment_methods == [METHOD] and state.payment_method_id == METHOD
    state, types = on(state, manage(METHOD, "delete", "x2", T0 + 2 * DAY + 1))
    assert state.payment_methods == [] and state.payment_method_id is None
    end = state.period_end or 0
    state, types = tick_until(state, end - 1)
    assert types == ["RenewalFailed"] and state.next_retry_at is not None
    assert not [p for p in state.payments.values() if p.kind == "renewal"]  # nothing charged
    # A card added during dunning is what the next retry charges.
    state, _ = on(
        state,
        add_card("w2", at=end + 1_000),
        held("w2", "pm-new", end + 2_000),
        released("w2", end + 3_000),
    )
    state, types = tick_until(state, state.next_retry_at or 0)
    renewal = next(p for p in state.payments.values() if p.kind == "renewal")
    assert renewal.request is not None and renewal.request.payment_method_id == "pm-new"


def test_a_renewal_success_never_brings_back_a_method() -> None:
    state = wallet_of_two()
    state, _ = tick_until(state, (state.period_end or 0) - 1)
    renewal = next(p for p in state.payments.values() if p.kind == "renewal")
    assert renewal.request is not None and renewal.request.payment_method_id == "pm-w"
    state, types = on(state, manage(METHOD, "default", "d", T0 + 30 * DAY))
    assert types == ["PaymentMethodChanged"]
    ok = observed(
        "succeeded",
        "renewal",
        at=T0 + 30 * DAY + 5,
        payment_id=renewal.payment_id,
        payment_method_id="pm-w",
        payment_method_saved=True,
    )
    state, types = on(state, ok)
    assert types == ["PaymentSucceeded", "SubscriptionActivated"]
    assert state.payment_method_id == METHOD


def test_wallet_refusals() -> None:
    state = wallet_of_two()
    state, types = on(state, manage("pm-unknown", "delete", "u", T0 + 2 * DAY))
    assert types == ["PaymentMethodRejected"]
    state, _ = tick_until(state, (state.period_end or 0) - 1)  # renewal with pm-w in flight
    state, types = on(state, manage("pm-w", "delete", "busy", T0 + 30 * DAY))
    assert types == ["PaymentMethodRejected"]
    state, types = on(state, add_card("w3", at=T0 + 30 * DAY))
    assert types == ["PaymentRejected"]  # one payment at a time
    full, _ = on(None, pay(), saved_success())
    small = dataclasses.replace(LIFE, max_methods=1)
    _, types = apply_lifecycle(full, [add_card("w4", at=T0 + DAY)], small)
    assert types == ["PaymentRejected"]


def test_a_state_from_before_the_wallet_has_its_one_method_in_it() -> None:
    state, _ = on(None, pay(), saved_success())
    old = msgspec.structs.replace(state, payment_methods=[])
    again = decode_state(encode_state(old))
    assert again.payment_methods == [METHOD] and again == state
