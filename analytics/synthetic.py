"""A reproducible synthetic billing history: the events the ledger emits, plus the facts behind
them, so tests can compute what the analytics must answer without SQL, and benchmarks and demo
dashboards have data.

Each user buys a plan, may be declined (and retry), renews at each period's end until they
churn, and sometimes switches plan at a renewal (expansion or contraction of MRR). Events carry
derived ids (schemas/ids.py) and per-subscription versions, as the ledger's do.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

from schemas.ids import event_id_for, payment_id_for, subscription_id_for
from schemas.messages import (
    Event,
    PaymentCanceled,
    PaymentOutcomeUnknown,
    PaymentPending,
    PaymentRedriven,
    PaymentRequest,
    PaymentRequested,
    PaymentSucceeded,
    SubscriptionActivated,
    encode,
)
from schemas.money import Money
from schemas.periods import period_end_ms

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Plan:
    plan_id: str
    amount_minor: int
    currency: str
    months: int


PLANS: tuple[Plan, ...] = (
    Plan("basic", 29_900, "RUB", 1),
    Plan("premium", 59_900, "RUB", 1),
    Plan("annual", 299_000, "RUB", 12),
    Plan("intl", 999, "USD", 1),
)

DECLINES: tuple[tuple[str, str], ...] = (
    ("insufficient_funds", "payment_network"),
    ("card_expired", "payment_network"),
    ("3d_secure_failed", "payment_network"),
    ("expired_on_confirmation", "yoo_money"),
    ("fraud_suspected", "yoo_money"),
    ("general_decline", "payment_network"),
)


@dataclass(frozen=True)
class PaymentFact:
    payment_id: str
    subscription_id: str
    plan: Plan
    requested_at: int
    outcome: str  # succeeded | canceled | pending (no outcome by the end of the history)
    outcome_at: int | None = None
    reason: str = ""
    party: str = ""
    period_start: int | None = None
    period_end: int | None = None


@dataclass
class History:
    start_ms: int
    end_ms: int
    events: list[bytes] = field(default_factory=list)
    payments: list[PaymentFact] = field(default_factory=list)


@dataclass(frozen=True)
class _Rates:
    decline: float
    unknown: float
    churn: float
    switch: float


@dataclass
class _Sub:
    user_id: str
    subscription_id: str
    version: int = 0
    events: list[tuple[int, bytes]] = field(default_factory=list)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def synthetic_history(
    users: int,
    *,
    start_ms: int,
    days: int,
    seed: int = 0,
    decline_rate: float = 0.15,
    unknown_rate: float = 0.05,
    churn_rate: float = 0.2,
    switch_rate: float = 0.1,
    sort: bool = True,
) -> History:
    """A history of ``users`` subscriptions over ``days`` days from ``start_ms``."""
    rng = random.Random(seed)
    rates = _Rates(decline_rate, unknown_rate, churn_rate, switch_rate)
    end_ms = start_ms + days * DAY_MS
    history = History(start_ms, end_ms)
    timed: list[tuple[int, bytes]] = []
    for i in range(users):
        user_id = f"user-{seed}-{i}"
        sub = _Sub(user_id, subscription_id_for(user_id))
        first_at = start_ms + rng.randrange(days * DAY_MS)
        _one_subscription(rng, rates, sub, history, end_ms, first_at)
        timed.extend(sub.events)
    if sort:
        # Kafka orders per subscription only; a time order interleaves subscriptions like a
        # real topic (the sort is stable: one subscription's events keep their order).
        timed.sort(key=lambda pair: pair[0])
    history.events = [raw for _, raw in timed]
    return history


def _emit(sub: _Sub, source_id: str, n: int, event: type[Event], at: int, **kw: object) -> None:
    sub.version += 1
    msg = event(
        event_id=event_id_for(source_id, n),
        subscription_id=sub.subscription_id,
        user_id=sub.user_id,
        version=sub.version,
        occurred_at=at,
        causation_id=source_id,
        **kw,
    )
    sub.events.append((at, encode(msg)))


def _one_subscription(
    rng: random.Random, rates: _Rates, sub: _Sub, history: History, end_ms: int, first_at: int
) -> None:
    plan = rng.choice(PLANS)
    at = first_at
    period_end: int | None = None
    while at < end_ms:
        command_id = _uuid(rng)
        payment_id = payment_id_for(command_id)
        request = PaymentRequest(
            payment_id=payment_id,
            command_id=command_id,
            user_id=sub.user_id,
            plan_id=plan.plan_id,
            amount=Money(plan.amount_minor, plan.currency),
            period_months=plan.months,
            return_url="https://cinema.example/return",
            description=f"{plan.plan_id} subscription",
        )
        _emit(sub, command_id, 0, PaymentRequested, at, request=request, deadline_at=at + 15_000)
        provider_id = _uuid(rng)
        obs = _uuid(rng)
        pending_at = at + rng.randrange(200, 3_000)
        if rng.random() < rates.unknown:
            _emit(
                sub,
                obs,
                0,
                PaymentOutcomeUnknown,
                pending_at,
                payment_id=payment_id,
                attempt=1,
                error="timeout",
            )
            pending_at += 15_000
            _emit(
                sub,
                _uuid(rng),
                0,
                PaymentRedriven,
                pending_at,
                request=request,
                attempt=1,
                requested_at=at,
                deadline_at=pending_at + 15_000,
            )
        _emit(
            sub,
            _uuid(rng),
            0,
            PaymentPending,
            pending_at,
            payment_id=payment_id,
            provider_payment_id=provider_id,
            status="pending",
        )
        done_at = pending_at + rng.randrange(5_000, 1_800_000)
        if done_at >= end_ms:
            history.payments.append(
                PaymentFact(payment_id, sub.subscription_id, plan, at, "pending")
            )
            return
        source = _uuid(rng)
        if rng.random() < rates.decline:
            reason, party = rng.choice(DECLINES)
            _emit(
                sub,
                source,
                0,
                PaymentCanceled,
                done_at,
                payment_id=payment_id,
                command_id=command_id,
                provider_payment_id=provider_id,
                reason=reason,
                party=party,
            )
            history.payments.append(
                PaymentFact(
                    payment_id, sub.subscription_id, plan, at, "canceled", done_at, reason, party
                )
            )
            if rng.random() < 0.5:
                return  # gives up (a lapsed renewal: churn at the period's end)
            at = done_at + DAY_MS  # retries a day later
            continue
        _emit(
            sub,
            source,
            0,
            PaymentSucceeded,
            done_at,
            payment_id=payment_id,
            command_id=command_id,
            provider_payment_id=provider_id,
            amount=Money(plan.amount_minor, plan.currency),
        )
        extended = period_end is not None and period_end > done_at
        start = period_end if period_end is not None and extended else done_at
        end = period_end_ms(start, plan.months)
        _emit(
            sub,
            source,
            1,
            SubscriptionActivated,
            done_at,
            payment_id=payment_id,
            plan_id=plan.plan_id,
            period_start=start,
            period_end=end,
            extended=extended,
        )
        history.payments.append(
            PaymentFact(
                payment_id,
                sub.subscription_id,
                plan,
                at,
                "succeeded",
                done_at,
                period_start=start,
                period_end=end,
            )
        )
        period_end = end
        if rng.random() < rates.churn:
            return
        if rng.random() < rates.switch:
            plan = rng.choice([p for p in PLANS if p.currency == plan.currency] or [plan])
        at = end - rng.randrange(0, 3_600_000)  # the renewal charge, just before the end
