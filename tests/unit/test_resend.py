"""What the ledger re-emits for a duplicate input (streams.ledger.resend): every stored event
goes to the log again, but the gateway acts on a request event only while its record still
waits for its first answer. The states come from the pure machine itself, so the test
follows what ``decide`` really stores."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest

from schemas.ids import command_id_for, derived_id, observation_id_for, payment_id_for
from schemas.messages import (
    AnyEvent,
    PaymentCallFailed,
    PaymentObserved,
    PaymentSettleRequested,
    PaySubscription,
    RefundCallFailed,
    RefundObserved,
    RefundPayment,
    SweepPayment,
    SweepRefund,
)
from schemas.money import Money
from schemas.state import SubscriptionState
from streams.ledger.machine import LedgerInput, Policy, decide
from streams.ledger.resend import (
    OUTCOME_KNOWN,
    InputLag,
    gateway_skips,
    resend_plan,
    still_awaited,
    to_resend,
)

POLICY = Policy(payment_deadline_ms=10_000, redrive_max_backoff_ms=80_000, capture_delay_ms=None)
T0 = 1_800_000_000_000
SUB = "33333333-3333-5333-8333-333333333333"
USER = "user-r"
PRICE = Money(29900, "RUB")
CID = command_id_for(USER, "k1")
PID = payment_id_for(CID)
RID = derived_id(SUB, "refund-1")


def pay(capture: bool = True) -> PaySubscription:
    return PaySubscription(
        command_id=CID,
        subscription_id=SUB,
        issued_at=T0,
        user_id=USER,
        payment_id=PID,
        plan_id="monthly",
        amount=PRICE,
        period_months=1,
        return_url="https://cinema.example/return",
        description="Cinema monthly",
        capture=capture,
    )


def seen(status: str, at: int = T0 + 1_000) -> PaymentObserved:
    return PaymentObserved(
        observation_id=observation_id_for("prov-1", status),
        subscription_id=SUB,
        observed_at=at,
        source="webhook",
        payment_id=PID,
        provider_payment_id="prov-1",
        status=status,  # type: ignore[arg-type]
        amount=PRICE,
        paid=status == "succeeded",
    )


def lost(attempt: int = 0) -> PaymentCallFailed:
    return PaymentCallFailed(
        observation_id=derived_id(PID, f"callfail-{attempt}-unknown"),
        subscription_id=SUB,
        observed_at=T0 + 500,
        source="gateway",
        payment_id=PID,
        outcome="unknown",
        error_code="timeout",
        error="no answer",
        attempt=attempt,
    )


def sweep(attempt: int, at: int) -> SweepPayment:
    return SweepPayment(
        command_id=derived_id(PID, f"sweep-{attempt}"),
        subscription_id=SUB,
        issued_at=at,
        payment_id=PID,
        attempt=attempt,
    )


def refund() -> RefundPayment:
    return RefundPayment(
        command_id=derived_id(SUB, "refund-command-1"),
        subscription_id=SUB,
        issued_at=T0 + 5_000,
        user_id=USER,
        refund_id=RID,
        payment_id=PID,
        reason="test",
    )


def refund_seen(status: str = "succeeded") -> RefundObserved:
    return RefundObserved(
        observation_id=observation_id_for("r-1", status),
        subscription_id=SUB,
        observed_at=T0 + 6_000,
        source="gateway",
        refund_id=RID,
        payment_id=PID,
        provider_refund_id="r-1",
        status=status,  # type: ignore[arg-type]
        amount=PRICE,
    )


def refund_lost() -> RefundCallFailed:
    return RefundCallFailed(
        observation_id=derived_id(RID, "callfail-0-unknown"),
        subscription_id=SUB,
        observed_at=T0 + 5_500,
        source="gateway",
        refund_id=RID,
        payment_id=PID,
        outcome="unknown",
        error_code="timeout",
        error="no answer",
        attempt=0,
    )


def sweep_refund(attempt: int, at: int) -> SweepRefund:
    return SweepRefund(
        command_id=derived_id(RID, f"sweep-{attempt}"),
        subscription_id=SUB,
        issued_at=at,
        refund_id=RID,
        attempt=attempt,
    )


def apply(inputs: Sequence[LedgerInput]) -> SubscriptionState:
    state: SubscriptionState | None = None
    for msg in inputs:
        state = decide(state, msg, POLICY).state
    assert state is not None
    return state


def resent(inputs: Sequence[LedgerInput], again: LedgerInput) -> list[str]:
    """Apply ``inputs``, then ``again`` as a duplicate: the types the gateway may act on.
    Every stored event is re-emitted, in order, whatever the gateway may do with it."""
    state = apply(inputs)
    d = decide(state, again, POLICY)
    assert d.duplicate and d.state is not None, "the input must be a duplicate"
    plan = resend_plan(d.state, d.events)
    assert [e for e, _ in plan] == d.events  # the log is healed whatever happens
    return [type(e).__name__ for e in to_resend(d.state, d.events)]


PAID: list[LedgerInput] = [pay(), seen("succeeded")]
# (name, inputs before, the duplicate, what is sent again)
CASES: list[tuple[str, list[LedgerInput], LedgerInput, list[str]]] = [
    ("pay, no answer yet", [pay()], pay(), ["PaymentRequested"]),
    ("pay, pending at the provider", [pay(), seen("pending")], pay(), []),
    ("pay, outcome unknown (the sweeper re-drives it)", [pay(), lost()], pay(), []),
    ("pay, succeeded", PAID, pay(), []),
    ("pay, canceled", [pay(), seen("canceled")], pay(), []),
    ("pay, re-driven since", [pay(), sweep(1, T0 + 10_000)], pay(), []),
    (
        "re-drive, no answer yet",
        [pay(), sweep(1, T0 + 10_000)],
        sweep(1, T0 + 10_000),
        ["PaymentRedriven"],
    ),
    (
        "re-drive, answered since",
        [pay(), sweep(1, T0 + 10_000), seen("pending", T0 + 11_000)],
        sweep(1, T0 + 10_000),
        [],
    ),
    (
        "outcome events are facts: always sent again",
        PAID,
        seen("succeeded"),
        ["PaymentSucceeded", "SubscriptionActivated"],
    ),
    ("refund, no answer yet", [*PAID, refund()], refund(), ["RefundRequested"]),
    ("refund, unknown", [*PAID, refund(), refund_lost()], refund(), []),
    ("refund, succeeded", [*PAID, refund(), refund_seen()], refund(), []),
    ("refund, failed", [*PAID, refund(), refund_seen("canceled")], refund(), []),
    (
        "refund re-drive, no answer yet",
        [*PAID, refund(), sweep_refund(1, T0 + 20_000)],
        sweep_refund(1, T0 + 20_000),
        ["RefundRedriven"],
    ),
    (
        "refund re-drive, answered since",
        [*PAID, refund(), sweep_refund(1, T0 + 20_000), refund_seen()],
        sweep_refund(1, T0 + 20_000),
        [],
    ),
]


@pytest.mark.parametrize(
    ("inputs", "again", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_what_a_duplicate_sends_again(
    inputs: list[LedgerInput], again: LedgerInput, expected: list[str]
) -> None:
    assert resent(inputs, again) == expected


def test_the_gateway_skips_only_the_flag() -> None:
    assert gateway_skips({OUTCOME_KNOWN: b"1"})
    for headers in (None, {}, {OUTCOME_KNOWN: b"0"}, {"other": b"1"}):
        assert not gateway_skips(headers)


def test_order_and_non_request_events_are_kept() -> None:
    state = apply([pay(), seen("pending")])
    stored: list[AnyEvent] = list(decide(None, pay(), POLICY).events)
    facts = list(decide(state, seen("succeeded"), POLICY).events)
    mixed = [facts[0], *stored, facts[1]]
    assert [type(e).__name__ for e in to_resend(state, mixed)] == [
        "PaymentSucceeded",
        "SubscriptionActivated",
    ]


def _settle(action: str, attempt: int) -> PaymentSettleRequested:
    return PaymentSettleRequested(
        event_id=derived_id(PID, f"settle-event-{attempt}"),
        subscription_id=SUB,
        user_id=USER,
        version=3,
        occurred_at=T0 + 2_000,
        causation_id="c",
        payment_id=PID,
        command_id="cmd",
        provider_payment_id="prov-1",
        action=action,  # type: ignore[arg-type]
        amount=PRICE,
        attempt=attempt,
        deadline_at=T0 + 12_000,
        actor="admin:ops",
    )


@pytest.mark.parametrize(
    ("status", "action", "attempts", "event", "kept"),
    [
        ("waiting_for_capture", "capture", 1, _settle("capture", 1), True),
        ("waiting_for_capture", "capture", 2, _settle("capture", 1), False),  # asked again since
        ("waiting_for_capture", "cancel", 1, _settle("capture", 1), False),
        ("succeeded", "capture", 1, _settle("capture", 1), False),  # captured
        ("canceled", "cancel", 1, _settle("cancel", 1), False),  # released
    ],
)
def test_settle_requests(
    status: str, action: str, attempts: int, event: PaymentSettleRequested, kept: bool
) -> None:
    state = apply([pay(capture=False), seen("waiting_for_capture")])
    rec = msgspec.structs.replace(
        state.payments[PID],
        status=status,  # type: ignore[arg-type]
        settle_action=action,
        settle_attempts=attempts,
    )
    state = msgspec.structs.replace(state, payments={PID: rec})
    assert still_awaited(state, event) is kept


def test_a_request_for_a_record_the_state_does_not_hold_is_dropped() -> None:
    stored = decide(None, pay(), POLICY).events
    empty = SubscriptionState(subscription_id=SUB, user_id=USER)
    assert to_resend(empty, stored) == []


@pytest.mark.parametrize(
    ("inputs", "again", "now", "expected"),
    [
        # Within the deadline the first emission is still being answered: not sent again.
        ([pay()], pay(), T0 + 9_999, []),
        ([pay()], pay(), T0 + 10_000, ["PaymentRequested"]),
        # A re-drive's own deadline (now + the backed-off deadline) counts, not the first one.
        ([pay(), sweep(1, T0 + 10_000)], sweep(1, T0 + 10_000), T0 + 15_000, []),
        (
            [pay(), sweep(1, T0 + 10_000)],
            sweep(1, T0 + 10_000),
            T0 + 10_000 + 10 * POLICY.payment_deadline_ms,
            ["PaymentRedriven"],
        ),
        ([*PAID, refund()], refund(), T0 + 6_000, []),
        (
            [*PAID, refund()],
            refund(),
            T0 + 5_000 + 10 * POLICY.payment_deadline_ms,
            ["RefundRequested"],
        ),
    ],
    ids=[
        "pay in flight",
        "pay past its deadline",
        "re-drive in flight",
        "re-drive past it",
        "refund in flight",
        "refund past it",
    ],
)
def test_a_request_in_flight_is_not_sent_again(
    inputs: list[LedgerInput], again: LedgerInput, now: int, expected: list[str]
) -> None:
    state = apply(inputs)
    d = decide(state, again, POLICY)
    assert d.duplicate and d.state is not None
    assert [e for e, _ in resend_plan(d.state, d.events, now)] == d.events
    assert [type(e).__name__ for e in to_resend(d.state, d.events, now)] == expected


def test_input_lag_is_the_age_of_the_last_input_until_idle() -> None:
    lag = InputLag(stale_s=5.0)
    assert lag.current(100.0) == 0.0
    lag.took(record_ts_s=70.0, now_s=100.0)
    assert lag.current(101.0) == 30.0
    lag.took(record_ts_s=102.0, now_s=101.0)  # clocks disagree: never negative
    assert lag.current(101.0) == 0.0
    lag.took(record_ts_s=90.0, now_s=101.0)
    assert lag.current(106.5) == 0.0  # nothing taken for 5 s: not behind
