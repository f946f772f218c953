"""Promo codes in the pure ledger machine (issue 16): the first charge and each renewal are
charged ``charge_for(plan price, discount)`` while the discount's periods remain, then the
full price; dunning retries of one period keep its discount; another plan ends it."""

from __future__ import annotations

import msgspec
import pytest

from reconciler.matcher import match_line
from schemas.ids import command_id_for
from schemas.messages import PaySubscription, RetryPayment
from schemas.money import Money
from schemas.promo import Discount, charge_for
from schemas.recon import PaymentLine
from schemas.recon_match import MatchConfig
from schemas.state import PaymentRecord, SubscriptionState, decode_state, encode_state
from streams.ledger.machine import due_commands
from tests.factories import (
    DAY,
    METHOD,
    POLICY,
    PRICE,
    SUB,
    T0,
    USER,
    apply,
    change,
    observed,
    pay,
    pid,
    quote,
    report_payment_line,
)

TWENTY = Discount(code="SPRING20", kind="percent", value=20, plan_id="monthly", periods=3)
CHARGED = charge_for(PRICE, TWENTY)  # 239.20


def promo_pay(promo: Discount = TWENTY, key: str = "k1", at: int = T0) -> PaySubscription:
    return msgspec.structs.replace(pay(key, at=at), promo=promo)


def paid(promo: Discount = TWENTY) -> SubscriptionState:
    amount = charge_for(PRICE, promo)
    ok = observed("succeeded", amount=amount, payment_method_id=METHOD, payment_method_saved=True)
    state, types = apply(None, [promo_pay(promo), ok])
    assert types == ["PaymentRequested", "PaymentSucceeded", "SubscriptionActivated"]
    return state


def renewals(state: SubscriptionState) -> list[PaymentRecord]:
    return sorted(
        (p for p in state.payments.values() if p.kind == "renewal"), key=lambda p: p.requested_at
    )


def renew_once(state: SubscriptionState, *, ok: bool = True) -> tuple[SubscriptionState, Money]:
    """Run the timer to the next renewal charge and answer it; the amount it asked."""
    now = (state.period_end or 0) - 1
    state, _ = apply(state, due_commands(state, now, POLICY))
    open_ = [p for p in renewals(state) if p.status == "requested"]
    assert len(open_) == 1, open_
    rec = open_[0]
    status = "succeeded" if ok else "canceled"
    seen = observed(
        status,
        f"r{rec.payment_id[:6]}",
        at=now + 1_000,
        payment_id=rec.payment_id,
        amount=rec.amount,
        cancellation_reason=None if ok else "insufficient_funds",
    )
    state, _ = apply(state, [seen])
    return state, rec.amount


def test_the_first_charge_is_discounted_and_names_the_full_price_and_the_code() -> None:
    state, types = apply(None, [promo_pay()])
    assert types == ["PaymentRequested"]
    req = state.payments[pid()].request
    assert req is not None
    assert (req.amount, req.plan_amount, req.promo) == (CHARGED, PRICE, TWENTY)
    assert Money(23920, "RUB") == CHARGED


def test_three_discounted_periods_then_the_full_price() -> None:
    state = paid()
    assert state.promo is not None and state.promo.periods == 2
    assert state.renew_amount == PRICE  # the plan's price; the discount is applied per charge
    charged = []
    for _ in range(4):
        state, amount = renew_once(state)
        charged.append(amount)
    assert charged == [CHARGED, CHARGED, PRICE, PRICE]
    assert state.promo is None and state.status == "active"
    discounted = [p for p in state.payments.values() if p.promo is not None]
    assert len(discounted) == 3  # the purchase and two renewals


def test_a_once_code_discounts_only_the_first_period() -> None:
    once = msgspec.structs.replace(TWENTY, periods=1)
    state = paid(once)
    assert state.promo is None
    state, amount = renew_once(state)
    assert amount == PRICE


def test_a_forever_code_discounts_every_renewal() -> None:
    forever = msgspec.structs.replace(TWENTY, periods=None)
    state = paid(forever)
    for _ in range(3):
        state, amount = renew_once(state)
        assert amount == CHARGED
    assert state.promo == forever


def test_a_declined_renewal_is_retried_at_the_same_discount() -> None:
    state = paid()
    state, amount = renew_once(state, ok=False)
    assert amount == CHARGED and state.dunning_attempt == 1
    assert state.promo is not None and state.promo.periods == 2  # nothing counted down
    retry_at = state.next_retry_at or 0
    for _ in range(3):  # the lapse to past_due, then the retry
        state, _ = apply(state, due_commands(state, retry_at, POLICY))
    retry = [p for p in renewals(state) if p.status == "requested"]
    assert [p.amount for p in retry] == [CHARGED]


def test_a_downgrade_to_another_plan_is_charged_in_full_and_ends_the_discount() -> None:
    state = paid()
    state, types = apply(state, [change("cheap", 19900, 1, at=T0 + DAY)])
    assert types == ["PlanChangeScheduled"]
    state, amount = renew_once(state)
    assert amount == Money(19900, "RUB") and state.promo is None


def test_an_upgrade_is_not_discounted_and_ends_the_discount() -> None:
    state = paid()
    state, types = apply(state, [change("premium", 49900, 1, at=T0 + DAY)])
    assert types == ["PaymentRequested"]
    up = next(p for p in state.payments.values() if p.kind == "upgrade")
    assert up.promo is None and up.plan_amount == Money(49900, "RUB")
    ok = observed(
        "succeeded", "up", at=T0 + DAY + 1_000, payment_id=up.payment_id, amount=up.amount
    )
    state, _ = apply(state, [ok])
    assert state.promo is None


def test_retrying_a_declined_promo_purchase_keeps_its_discount() -> None:
    no = observed("canceled", amount=CHARGED, cancellation_reason="insufficient_funds")
    state, _ = apply(None, [promo_pay(), no])
    retry = RetryPayment(
        command_id=command_id_for(USER, "again"),
        subscription_id=SUB,
        issued_at=T0 + 5_000,
        user_id=USER,
        retry_of=pid(),
        payment_id=pid("again"),
        price=quote(),
        return_url="https://cinema.example/back",
        description="Cinema monthly",
    )
    state, types = apply(state, [retry])
    assert types == ["PaymentRequested"]
    assert state.payments[pid("again")].amount == CHARGED


@pytest.mark.parametrize("promo", [None, TWENTY])
def test_states_with_and_without_a_promo_round_trip(promo: Discount | None) -> None:
    state = paid() if promo else apply(None, [pay(), observed("succeeded")])[0]
    assert decode_state(encode_state(state)) == state


def test_a_state_written_before_promo_codes_still_decodes() -> None:
    state = apply(None, [pay(), observed("succeeded")])[0]
    raw = msgspec.json.decode(encode_state(state))
    assert "promo" not in raw  # defaults are not written: old states look the same
    assert decode_state(msgspec.json.encode(raw)).promo is None


def test_a_retry_never_reuses_a_redemption_that_paid_a_period() -> None:
    no = observed("canceled", amount=CHARGED, cancellation_reason="insufficient_funds")
    state, _ = apply(None, [promo_pay(), no])

    def retry(key: str, at: int) -> RetryPayment:
        return RetryPayment(
            command_id=command_id_for(USER, key),
            subscription_id=SUB,
            issued_at=at,
            user_id=USER,
            retry_of=pid(),
            payment_id=pid(key),
            price=quote(),
            return_url="https://cinema.example/back",
            description="Cinema monthly",
        )

    ok = observed("succeeded", "again", at=T0 + 6_000, payment_id=pid("again"), amount=CHARGED)
    state, _ = apply(state, [retry("again", T0 + 5_000), ok])
    later = (state.period_end or 0) + 40 * DAY
    state, _ = apply(state, due_commands(state, later, POLICY))
    state, types = apply(state, [retry("third", later + 1)])
    assert types == ["PaymentRequested"]
    assert state.payments[pid("third")].amount == PRICE


def test_reconciliation_matches_a_discounted_charge_and_flags_the_full_price() -> None:
    """The provider holds what was charged (the discount taken off): that matches; a report
    of the plan's full price for the same payment is an amount mismatch, escalated."""
    state = paid()
    rec = state.payments[pid()]
    cfg = MatchConfig(window_start=T0 - DAY, window_end=T0 + DAY, now=T0 + 2 * DAY)

    def line(amount: Money) -> PaymentLine:
        return report_payment_line(SUB, pid(), "prov-k1", "succeeded", T0 + 1_000, amount)

    ok, _ = match_line(state, line(rec.amount), cfg)
    assert ok is not None and ok.kind == "matched"
    wrong, _ = match_line(state, line(PRICE), cfg)
    assert wrong is not None and wrong.kind == "amount_mismatch"
