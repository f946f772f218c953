"""Pure builders shared by the tests: the ledger's commands and the provider's observations for
one fixed subscription, states reached through the pure machine, ledger records and provider
report lines. No I/O, no clock, no randomness: ids are derived from the arguments, so a
builder called twice gives the same message (what the replay tests rely on).

Fixtures (services, apps, stacks) live in the ``conftest.py`` of each tier and in
``tests/fixtures/``; the HTTP helpers of the whole-stack tests in ``tests/e2e/client.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from schemas.ids import command_id_for, derived_id, observation_id_for, payment_id_for
from schemas.messages import (
    AdminAdjust,
    ChangePlan,
    PaymentCallFailed,
    PaymentObserved,
    PaymentRequest,
    PaymentStatus,
    PaySubscription,
    PriceQuote,
    RefundCallFailed,
    RefundObserved,
    RefundPayment,
    RefundRequest,
    SweepPayment,
)
from schemas.money import Money
from schemas.periods import dt_to_ms
from schemas.recon import PaymentLine, RefundLine
from schemas.state import PaymentRecord, RefundRecord, RefundStatus, SubscriptionState
from streams.ledger.machine import LedgerInput, Policy, decide

# ------------------------------------------------------------ the one subscription of the machine
T0 = dt_to_ms(datetime(2026, 1, 31, 12, 0, tzinfo=UTC))  # the first payment's request
SUB = "11111111-1111-5111-8111-111111111111"
USER = "user-1"
PRICE = Money(29900, "RUB")  # the monthly price
METHOD = "pm-1"  # the payment method saved by ``saved_success``
DAY = 86_400_000
RETURN_URL = "https://cinema.example/return"

# The lifecycle rules' policy: renewals a day ahead, dunning after one and three days, no
# reminders (they have their own test). tests/unit/test_machine.py runs under its own.
POLICY = Policy(
    payment_deadline_ms=10_000,
    redrive_max_backoff_ms=80_000,
    renew_lead_ms=DAY,
    dunning_schedule_ms=(DAY, 3 * DAY),
    remind_ms=0,
)


# --------------------------------------------------------------------------------- commands
def pid(key: str = "k1") -> str:
    """The payment id of ``pay(key)``."""
    return payment_id_for(command_id_for(USER, key))


def pay(key: str = "k1", at: int = T0, months: int = 1) -> PaySubscription:
    """The user buys the monthly plan (``months=12``: the yearly one) under Idempotency-Key
    ``key``."""
    cid = command_id_for(USER, key)
    return PaySubscription(
        command_id=cid,
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        payment_id=payment_id_for(cid),
        plan_id="monthly" if months == 1 else "yearly",
        amount=PRICE,
        period_months=months,
        return_url=RETURN_URL,
        description="Cinema monthly",
    )


def sweep(attempt: int, at: int, key: str = "k1") -> SweepPayment:
    """The timer's re-drive of ``pay(key)``'s payment."""
    return SweepPayment(
        command_id=derived_id(pid(key), f"sweep-{attempt}"),
        subscription_id=SUB,
        issued_at=at,
        payment_id=pid(key),
        attempt=attempt,
    )


def refund(
    key: str, amount: int | None = None, at: int = T0 + 5_000, payment_id: str | None = None
) -> RefundPayment:
    """The user asks to refund ``amount`` minor units (all that is left if None) of
    ``payment_id`` (the first payment, ``pid()``, by default)."""
    return RefundPayment(
        command_id=derived_id(SUB, f"refund-command-{key}"),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        refund_id=derived_id(SUB, f"refund-{key}"),
        payment_id=pid() if payment_id is None else payment_id,
        amount=None if amount is None else Money(amount, "RUB"),
        reason="test",
    )


def quote(plan: str = "monthly", amount: int = 29900, months: int = 1, v: int = 0) -> PriceQuote:
    return PriceQuote(
        plan_id=plan, amount=Money(amount, "RUB"), period_months=months, price_version=v
    )


def change(plan: str, amount: int, months: int, at: int, key: str = "c") -> ChangePlan:
    """The user changes to ``plan`` priced ``amount`` minor units for ``months``."""
    return ChangePlan(
        command_id=derived_id(SUB, f"change-{key}"),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        payment_id=derived_id(SUB, f"change-payment-{key}"),
        price=quote(plan, amount, months),
        return_url=RETURN_URL,
        description="change",
    )


def admin(action: str, at: int, **kw: object) -> AdminAdjust:
    """An operator's ``action`` (extend, grant, cancel) with its fields in ``kw``."""
    return AdminAdjust(
        command_id=derived_id(SUB, f"admin-{action}-{at}"),
        subscription_id=SUB,
        issued_at=at,
        user_id=USER,
        action=action,  # type: ignore[arg-type]
        actor="admin:ops-1",
        reason="goodwill",
        **kw,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------- provider observations
def observed(status: str, key: str = "k1", at: int = T0 + 1_000, **kw: object) -> PaymentObserved:
    """A webhook saying ``pay(key)``'s payment is ``status``; ``kw`` overrides any field."""
    provider_id = f"prov-{key}"
    fields: dict[str, object] = {
        "observation_id": observation_id_for(provider_id, status),
        "subscription_id": SUB,
        "observed_at": at,
        "source": "webhook",
        "payment_id": pid(key),
        "provider_payment_id": provider_id,
        "status": status,
        "amount": PRICE,
        "paid": status == "succeeded",
        "confirmation_url": "http://emu/confirm" if status == "pending" else None,
    }
    fields.update(kw)
    return PaymentObserved(**fields)  # type: ignore[arg-type]


def saved_success(at: int = T0 + 1_000) -> PaymentObserved:
    """The first payment succeeded and its method (``METHOD``) was saved for renewals."""
    return observed("succeeded", at=at, payment_method_id=METHOD, payment_method_saved=True)


def call_failed(outcome: str, attempt: int = 1, key: str = "k1") -> PaymentCallFailed:
    """The gateway's create call for ``pay(key)`` failed: ``unknown`` (timeout) or ``rejected``."""
    return PaymentCallFailed(
        observation_id=derived_id(pid(key), f"callfail-{attempt}-{outcome}"),
        subscription_id=SUB,
        observed_at=T0 + 500,
        source="gateway",
        payment_id=pid(key),
        outcome=outcome,  # type: ignore[arg-type]
        error_code="timeout" if outcome == "unknown" else "invalid_request",
        error="boom",
        attempt=attempt,
    )


def refund_seen(key: str, status: str = "succeeded", at: int = T0 + 6_000) -> RefundObserved:
    """The provider's answer to ``refund(key)`` (for the full ``PRICE``)."""
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
    """The gateway's refund call for ``refund(key)`` timed out."""
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


# ------------------------------------------------------------ states through the machine
def apply(
    state: SubscriptionState | None, inputs: Sequence[LedgerInput], policy: Policy = POLICY
) -> tuple[SubscriptionState, list[str]]:
    """Decide ``inputs`` in order from ``state``: the final state and the types of the events
    emitted (a duplicate emits none)."""
    types: list[str] = []
    for msg in inputs:
        d = decide(state, msg, policy)
        state = d.state
        if not d.duplicate:
            types += [type(e).__name__ for e in d.events]
    assert state is not None
    return state, types


def active() -> SubscriptionState:
    """Paid at T0 with a saved method: active for one month."""
    state, _ = apply(None, [pay(), saved_success()])
    assert state.status == "active" and state.payment_method_id == METHOD
    return state


# ------------------------------------------------------------------ ledger records, built
def payment_record(
    payment_id: str,
    status: PaymentStatus,
    at: int,
    provider_id: str | None = None,
    *,
    amount: Money = PRICE,
    user_id: str = "user-1",
    description: str = "Cinema monthly",
    succeeded_at: int | None = None,
) -> PaymentRecord:
    """A ledger payment requested at ``at``, as the machine keeps it (no history behind it)."""
    request = PaymentRequest(
        payment_id=payment_id,
        command_id=f"cmd-{payment_id}",
        user_id=user_id,
        plan_id="monthly",
        amount=amount,
        period_months=1,
        return_url=RETURN_URL,
        description=description,
    )
    return PaymentRecord(
        payment_id=payment_id,
        command_id=f"cmd-{payment_id}",
        plan_id="monthly",
        amount=amount,
        period_months=1,
        status=status,
        request=request,
        requested_at=at,
        deadline_at=None,
        provider_payment_id=provider_id,
        succeeded_at=succeeded_at,
    )


def refund_record(
    refund_id: str,
    payment_id: str,
    provider_payment_id: str,
    status: RefundStatus,
    at: int,
    provider_id: str | None,
    *,
    amount: Money = PRICE,
) -> RefundRecord:
    """A ledger refund of ``payment_id`` requested at ``at``."""
    request = RefundRequest(
        refund_id=refund_id,
        command_id=f"cmd-{refund_id}",
        payment_id=payment_id,
        provider_payment_id=provider_payment_id,
        amount=amount,
    )
    return RefundRecord(
        refund_id=refund_id,
        command_id=f"cmd-{refund_id}",
        payment_id=payment_id,
        amount=amount,
        status=status,
        request=request,
        requested_at=at,
        deadline_at=None,
        provider_refund_id=provider_id,
    )


def subscription_state(
    subscription_id: str,
    *records: PaymentRecord,
    refunds: Sequence[RefundRecord] = (),
    user_id: str = "user-1",
) -> SubscriptionState:
    """A ledger state holding ``records`` and ``refunds`` (nothing else set)."""
    return SubscriptionState(
        subscription_id=subscription_id,
        user_id=user_id,
        payments={r.payment_id: r for r in records},
        refunds={r.refund_id: r for r in refunds},
    )


# ------------------------------------------------------------------- provider report lines
def report_payment_line(
    subscription_id: str | None,
    payment_id: str | None,
    provider_id: str,
    status: str,
    created: int | None,
    amount: Money = PRICE,
) -> PaymentLine:
    """A payment line of the provider's report; ``paid`` follows ``status``."""
    return PaymentLine(
        provider_payment_id=provider_id,
        status=status,  # type: ignore[arg-type]
        amount=amount,
        paid=status == "succeeded",
        created_at=created,
        subscription_id=subscription_id,
        payment_id=payment_id,
    )


def report_refund_line(
    subscription_id: str | None,
    payment_id: str | None,
    provider_payment_id: str,
    refund_id: str | None,
    provider_id: str,
    status: str,
    created: int | None,
    amount: Money = PRICE,
) -> RefundLine:
    """A refund line of the provider's report."""
    return RefundLine(
        provider_refund_id=provider_id,
        provider_payment_id=provider_payment_id,
        status=status,  # type: ignore[arg-type]
        amount=amount,
        created_at=created,
        subscription_id=subscription_id,
        payment_id=payment_id,
        refund_id=refund_id,
    )
