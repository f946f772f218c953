"""Table-driven tests of the pure ledger state machine (no Faust, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import pytest

from schemas.ids import command_id_for
from schemas.messages import (
    encode,
)
from schemas.periods import dt_to_ms
from schemas.state import SubscriptionState, decode_state, encode_state
from streams.ledger.machine import Decision, LedgerInput, Policy, decide, evolve

# Re-exported (``X as X``) only for test_money_edges and test_notify, which are being changed
# elsewhere and still import them from here; anything new imports tests.factories.
# tests/unit/test_test_layout.py lists them.
from tests.factories import SUB, T0, USER, call_failed, observed, pay, pid, sweep

POLICY = Policy(payment_deadline_ms=10_000, redrive_max_backoff_ms=80_000, recent_sources=16)


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
