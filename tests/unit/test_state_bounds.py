"""The ledger's state stays bounded (issue 13): closed records are reduced and, past the
retention window, dropped; the replay memory has a fixed size; a person cannot grow their
state without limit; and money stays safe across all of it (a refund past the window is
refused, never a crash or a second refund; a replay of a dropped command is refused, never a
second charge). States written by the previous code still decode and go on as before.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec
import pytest

from schemas.ids import derived_id, observation_id_for
from schemas.messages import (
    PaymentObserved,
    PaymentRejected,
    PaymentRequested,
    PaySubscription,
    RefundObserved,
    RefundPayment,
    RefundRejected,
    RefundRequested,
    SetAutoRenew,
)
from schemas.money import Money
from schemas.periods import period_end_ms
from schemas.state import SubscriptionState, decode_state, encode_state, upgrade_state
from streams.ledger.machine import (
    LedgerInput,
    Policy,
    compact,
    decide,
    due_commands,
    next_wakeup,
)
from tests.factories import (
    DAY,
    POLICY,
    SUB,
    T0,
    USER,
    active,
    apply,
    change,
    observed,
    pay,
    pid,
    refund,
    refund_seen,
    saved_success,
)

OLD_STATE = Path(__file__).parent / "data" / "ledger_state_before_issue13.json"
UPGRADE = derived_id(SUB, "change-payment-c")
RETENTION = POLICY.closed_retention_ms
PERIOD_END = period_end_ms(T0 + 1_000, 1)


def upgrade_succeeded(state: SubscriptionState, at: int) -> PaymentObserved:
    rec = state.payments[UPGRADE]
    return PaymentObserved(
        observation_id=observation_id_for("prov-up", "succeeded"),
        subscription_id=SUB,
        observed_at=at,
        source="webhook",
        payment_id=UPGRADE,
        provider_payment_id="prov-up",
        status="succeeded",
        amount=rec.amount,
        paid=True,
    )


def history() -> tuple[SubscriptionState, list[LedgerInput]]:
    """Closed and open records of every kind: a paid and partly refunded payment, an
    abandoned one, a succeeded upgrade (credit taken), a refund and a purchase in flight.
    The fixture ``OLD_STATE`` is this state as the code before issue 13 wrote it."""
    inputs: list[LedgerInput] = [
        pay(),
        saved_success(),
        refund("part", 1000, at=T0 + 2 * DAY),
        refund_seen("part", at=T0 + 2 * DAY + 1),
        pay("k2", at=T0 + 3 * DAY),
        observed("canceled", key="k2", at=T0 + 3 * DAY + 5),
        change("yearly", 299000, 12, T0 + 5 * DAY),
    ]
    state, _ = apply(None, inputs)
    inputs.append(upgrade_succeeded(state, T0 + 5 * DAY + 9))
    inputs += [refund("open", 500, at=T0 + 6 * DAY), pay("k3", at=T0 + 7 * DAY)]
    state, _ = apply(None, inputs)
    return state, inputs


# ----------------------------------------------------------------- states of the old shape
def test_a_state_written_before_issue_13_decodes_to_the_current_shape() -> None:
    raw = OLD_STATE.read_bytes()
    old = decode_state(raw)
    now, _ = history()
    # Equal but for the replay memory, which now keeps the events of fewer sources.
    assert list(old.recent) == list(now.recent)
    assert msgspec.structs.replace(old, recent={}) == msgspec.structs.replace(now, recent={})
    closed = [p for p in old.payments.values() if p.status in ("succeeded", "canceled")]
    assert len(closed) == 3 and all(p.request is None for p in closed)
    assert old.payments[pid("k3")].request is not None  # open: a re-drive sends it again
    upgrade = old.payments[UPGRADE]
    assert upgrade.plan_amount == Money(299000, "RUB") and upgrade.credits == {
        pid(): old.payments[pid()].credited_minor
    }
    refunds = {r.refund_id: r for r in old.refunds.values()}
    open_ref = refunds[derived_id(SUB, "refund-open")]
    assert open_ref.request is not None and open_ref.provider_payment_id == "prov-k1"
    assert refunds[derived_id(SUB, "refund-part")].request is None
    records = msgspec.json.decode(raw)["payments"]
    assert len(msgspec.json.encode(old.payments)) < 0.6 * len(msgspec.json.encode(records))
    assert upgrade_state(old) is old  # the current shape: nothing to move


def test_an_old_state_goes_on_exactly_like_a_new_one() -> None:
    old = decode_state(OLD_STATE.read_bytes())
    now, _ = history()
    later: list[LedgerInput] = [
        refund_seen("open", at=T0 + 8 * DAY),
        observed("succeeded", key="k3", at=T0 + 8 * DAY + 1),
        refund("all", None, at=T0 + 9 * DAY),
    ]
    for msg in later:
        a, b = decide(old, msg, POLICY), decide(now, msg, POLICY)
        assert a.events == b.events
        assert a.state is not None and b.state is not None
        # Equal but for the replay memory, which keeps events as they were emitted (an old
        # refund request has no plan for its receipt: upgrade_state fills the record's).
        assert msgspec.structs.replace(a.state, recent={}) == msgspec.structs.replace(
            b.state, recent={}
        )
        old, now = a.state, b.state


# ------------------------------------------------------------------------------ the window
def quiet(at: int, key: str = "q") -> SetAutoRenew:
    """Any input at ``at`` (the state is compacted on every write)."""
    return SetAutoRenew(
        command_id=derived_id(SUB, f"quiet-{key}-{at}"),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        enabled=False,
    )


def test_a_refund_within_the_window_works_as_before() -> None:
    state = active()
    last = PERIOD_END + RETENTION - 1
    state, types = apply(state, [quiet(last - 10), refund("late", at=last)])
    assert types == ["AutoRenewChanged", "RefundRequested"]
    assert pid() in state.payments


def test_a_refund_past_the_window_is_refused_whether_or_not_the_record_is_gone() -> None:
    state = active()
    at = PERIOD_END + RETENTION
    d = decide(state, refund("late", at=at), POLICY)  # still in the state: refused by age
    assert [type(e).__name__ for e in d.events] == ["RefundRejected"]
    (rej,) = d.events
    assert isinstance(rej, RefundRejected) and rej.reason == "refund_window_closed"
    gone, _ = apply(state, [quiet(at + 1)])
    assert gone.payments == {} and gone.horizon == at + 1 - RETENTION + 1
    d = decide(gone, refund("later", at=at + 2), POLICY)  # dropped: refused, not "not found"
    (rej,) = d.events
    assert isinstance(rej, RefundRejected) and rej.reason == "refund_window_closed"
    assert not any(isinstance(e, RefundRequested) for e in d.events)


def test_a_replay_of_a_dropped_command_is_refused_never_applied_again() -> None:
    state, inputs = history()
    state, _ = apply(
        state,
        [refund_seen("open", at=T0 + 8 * DAY), observed("succeeded", key="k3", at=T0 + 8 * DAY)],
    )
    far = T0 + 2 * 365 * DAY + RETENTION  # the yearly upgrade's period ended long ago
    # Enough commands since that the replayed ones are out of every replay memory too.
    quiets = [quiet(far + k, key=str(k)) for k in range(POLICY.answered_commands)]
    state, _ = apply(state, quiets)
    assert state.payments == {} and state.refunds == {}
    for msg in [*inputs, refund("open", 500, at=T0 + 6 * DAY)]:
        d = decide(state, msg, POLICY)
        moved = [e for e in d.events if isinstance(e, PaymentRequested | RefundRequested)]
        assert not moved, f"replayed {type(msg).__name__} moved money"
        if isinstance(msg, PaySubscription | RefundPayment):
            (rej,) = d.events
            assert isinstance(rej, PaymentRejected | RefundRejected)
            assert rej.reason == "command_expired"


def test_open_and_escalated_records_are_never_dropped() -> None:
    state = active()
    state, _ = apply(state, [refund("open", 100, at=T0 + 2 * DAY)])  # never answered
    escalated_pay = observed(
        "succeeded", key="k2", at=T0 + 3 * DAY + 1, amount=Money(1, "RUB")
    )  # the provider took another sum: escalated, kept open for an operator
    state, types = apply(state, [pay("k2", at=T0 + 3 * DAY), escalated_pay])
    assert types[-1] == "PaymentOutcomeUnknown" and state.payments[pid("k2")].escalated
    far = T0 + 10 * RETENTION
    kept = compact(state, far, POLICY)
    assert set(kept.payments) == {pid(), pid("k2")}  # the open refund keeps its payment
    assert len(kept.refunds) == 1


def test_compaction_is_deterministic_and_idempotent() -> None:
    state, _ = history()
    far = T0 + 3 * RETENTION
    once = compact(state, far, POLICY)
    assert compact(once, far, POLICY) == once == compact(state, far, POLICY)
    assert compact(state, T0 + 8 * DAY, POLICY) is state  # nothing past the window


# ---------------------------------------------------------------------------- the limits
def test_a_person_cannot_grow_the_state_with_abandoned_payments() -> None:
    small = dataclasses.replace(POLICY, max_payments=3)
    state: SubscriptionState | None = None
    for k in range(3):
        at = T0 + k * DAY
        state, _ = apply(
            state, [pay(f"a{k}", at=at), observed("canceled", key=f"a{k}", at=at + 5)], small
        )
    assert state is not None
    d = decide(state, pay("a3", at=T0 + 4 * DAY), small)
    (rej,) = d.events
    assert isinstance(rej, PaymentRejected) and rej.reason == "too_many_payments"
    # Once the abandoned ones age out of the window, paying works again.
    later = T0 + 4 * DAY + RETENTION
    state, types = apply(state, [pay("a4", at=later)], small)
    assert types == ["PaymentRequested"] and len(state.payments) == 1


def test_a_person_cannot_grow_the_state_with_one_kopeck_refunds() -> None:
    small = dataclasses.replace(POLICY, max_refunds=2)
    state = active()
    for k in range(2):
        at = T0 + (2 + k) * DAY
        rid = derived_id(SUB, f"refund-r{k}")
        seen = RefundObserved(
            observation_id=observation_id_for(f"r-r{k}", "succeeded"),
            subscription_id=SUB,
            observed_at=at + 1,
            source="gateway",
            refund_id=rid,
            payment_id=pid(),
            provider_refund_id=f"r-r{k}",
            status="succeeded",
            amount=Money(1, "RUB"),
        )
        state, types = apply(state, [refund(f"r{k}", 1, at=at), seen], small)
        assert types == ["RefundRequested", "RefundSucceeded"]
    d = decide(state, refund("r2", 1, at=T0 + 5 * DAY), small)
    (rej,) = d.events
    assert isinstance(rej, RefundRejected) and rej.reason == "too_many_refunds"


def test_the_replay_memory_is_bounded() -> None:
    state = active()
    for k in range(200):
        state, _ = apply(state, [quiet(T0 + 2 * DAY + k, key=str(k))])
    assert len(state.recent) == POLICY.recent_sources
    assert len(state.answered) == POLICY.answered_commands


# ------------------------------------------------------------------- years of renewals
def renew_for(state: SubscriptionState, until: int, policy: Policy) -> SubscriptionState:
    """Drive the timer and answer every renewal charge with a success, up to ``until``."""
    while (at := next_wakeup(state, policy)) is not None and at <= until:
        for cmd in due_commands(state, at, policy):
            state, _ = apply(state, [cmd], policy)
            for rec in list(state.payments.values()):
                if rec.status == "requested" and rec.kind == "renewal":
                    seen = PaymentObserved(
                        observation_id=observation_id_for(f"prov-{rec.payment_id}", "succeeded"),
                        subscription_id=SUB,
                        observed_at=at + 5,
                        source="gateway",
                        payment_id=rec.payment_id,
                        provider_payment_id=f"prov-{rec.payment_id}",
                        status="succeeded",
                        amount=rec.amount,
                        paid=True,
                    )
                    state, _ = apply(state, [seen], policy)
    return state


@pytest.mark.parametrize("years", [1, 5])
def test_years_of_renewals_keep_the_state_flat(years: int) -> None:
    state = renew_for(active(), T0 + years * 365 * DAY, POLICY)
    assert state.status == "active" and state.period_end is not None
    assert state.period_end > T0 + years * 365 * DAY
    window_months = RETENTION // (28 * DAY) + 2
    assert len(state.payments) <= window_months
    assert all(p.request is None for p in state.payments.values() if p.status == "succeeded")
    if years > 1:
        assert state.horizon > 0
    size = len(encode_state(state))
    assert size < 10_000, size
