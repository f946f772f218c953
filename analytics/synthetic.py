"""A reproducible synthetic billing history: the events the ledger emits, plus the facts behind
them, so tests can compute what the analytics must answer without SQL, and benchmarks and demo
dashboards have data.

Each user buys a plan; a payment may be declined (the user retries a day later or gives up) or
go through an unknown outcome and a re-drive first. Periods renew just before they end (kind
``renewal``) until the user churns; a declined renewal starts dunning (``RenewalFailed``,
retried daily, ``SubscriptionExpired`` when abandoned). Some users switch plan at a renewal
(MRR expansion/contraction) and some refund a payment, in part or in full (a full refund of the
current period ends access: ``SubscriptionCanceled``). Events carry derived ids
(schemas/ids.py) and per-subscription versions, as the ledger's do.
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
    RefundRequest,
    RefundRequested,
    RefundSucceeded,
    RenewalFailed,
    SubscriptionActivated,
    SubscriptionCanceled,
    SubscriptionExpired,
    encode,
)
from schemas.money import Money
from schemas.periods import period_end_ms

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


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
class RefundFact:
    refund_id: str
    amount_minor: int
    at: int
    full: bool


@dataclass(frozen=True)
class PaymentFact:
    payment_id: str
    subscription_id: str
    plan: Plan
    kind: str  # purchase | renewal
    requested_at: int
    outcome: str  # succeeded | canceled | pending (no outcome by the end of the history)
    outcome_at: int | None = None
    reason: str = ""
    party: str = ""
    period_start: int | None = None
    period_end: int | None = None
    refund: RefundFact | None = None


@dataclass(frozen=True)
class DunningFact:
    subscription_id: str
    started_at: int  # the first decline of the renewal
    outcome: str  # recovered | lost | open
    ended_at: int | None = None


@dataclass(frozen=True)
class AccessFact:
    """A change of a subscription's access window (in the order they happened)."""

    subscription_id: str
    at: int
    access_from: int
    access_until: int
    plan_id: str
    monthly_minor: int
    currency: str


@dataclass
class History:
    start_ms: int
    end_ms: int
    events: list[bytes] = field(default_factory=list)
    payments: list[PaymentFact] = field(default_factory=list)
    dunning: list[DunningFact] = field(default_factory=list)
    access: list[AccessFact] = field(default_factory=list)


@dataclass(frozen=True)
class _Rates:
    decline: float
    unknown: float
    churn: float
    switch: float
    refund: float


@dataclass
class _Sub:
    user_id: str
    subscription_id: str
    version: int = 0
    events: list[tuple[int, bytes]] = field(default_factory=list)

    def emit(self, source_id: str, n: int, event: type[Event], at: int, **kw: object) -> None:
        self.version += 1
        msg = event(
            event_id=event_id_for(source_id, n),
            subscription_id=self.subscription_id,
            user_id=self.user_id,
            version=self.version,
            occurred_at=at,
            causation_id=source_id,
            **kw,
        )
        self.events.append((at, encode(msg)))


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
    refund_rate: float = 0.05,
    sort: bool = True,
) -> History:
    """A history of ``users`` subscriptions over ``days`` days from ``start_ms``."""
    rng = random.Random(seed)
    rates = _Rates(decline_rate, unknown_rate, churn_rate, switch_rate, refund_rate)
    end_ms = start_ms + days * DAY_MS
    history = History(start_ms, end_ms)
    timed: list[tuple[int, bytes]] = []
    for i in range(users):
        user_id = f"user-{seed}-{i}"
        sub = _Sub(user_id, subscription_id_for(user_id))
        first_at = start_ms + rng.randrange(days * DAY_MS)
        _Life(rng, rates, sub, history, end_ms).run(first_at)
        timed.extend(sub.events)
    if sort:
        # Kafka orders per subscription only; a time order interleaves subscriptions like a
        # real topic (the sort is stable: one subscription's events keep their order).
        timed.sort(key=lambda pair: pair[0])
    history.events = [raw for _, raw in timed]
    return history


@dataclass
class _Life:
    rng: random.Random
    rates: _Rates
    sub: _Sub
    history: History
    end_ms: int
    period_end: int | None = None
    dunning_since: int | None = None
    dunning_attempt: int = 0

    def run(self, first_at: int) -> None:
        plan = self.rng.choice(PLANS)
        at = first_at
        kind = "purchase"
        while at < self.end_ms:
            fact = self._pay(plan, kind, at)
            if fact.outcome == "pending":
                self._dunning_end("open", None)
                return
            assert fact.outcome_at is not None
            if fact.outcome == "canceled":
                if kind == "renewal" and not self._declined_renewal(fact):
                    return
                if kind == "purchase" and self.rng.random() < 0.5:
                    return  # gives up
                at = fact.outcome_at + DAY_MS  # tries again a day later
                continue
            self._dunning_end("recovered", fact.outcome_at)
            assert fact.period_end is not None
            self.period_end = fact.period_end
            if fact.refund is not None and fact.refund.full:
                return  # access ended with the refund
            if self.rng.random() < self.rates.churn:
                return
            if self.rng.random() < self.rates.switch:
                plan = self.rng.choice([p for p in PLANS if p.currency == plan.currency])
            kind = "renewal"
            at = fact.period_end - self.rng.randrange(0, HOUR_MS)  # just before the end
        self._dunning_end("open", None)

    def _pay(self, plan: Plan, kind: str, at: int) -> PaymentFact:
        rng, sub = self.rng, self.sub
        command_id = _uuid(rng)
        payment_id = payment_id_for(command_id)
        amount = Money(plan.amount_minor, plan.currency)
        request = PaymentRequest(
            payment_id=payment_id,
            command_id=command_id,
            user_id=sub.user_id,
            plan_id=plan.plan_id,
            amount=amount,
            period_months=plan.months,
            return_url="https://cinema.example/return",
            description=f"{plan.plan_id} subscription",
            kind="renewal" if kind == "renewal" else "purchase",
        )
        sub.emit(command_id, 0, PaymentRequested, at, request=request, deadline_at=at + 15_000)
        provider_id = _uuid(rng)
        pending_at = at + rng.randrange(200, 3_000)
        if rng.random() < self.rates.unknown:
            sub.emit(
                _uuid(rng),
                0,
                PaymentOutcomeUnknown,
                pending_at,
                payment_id=payment_id,
                attempt=1,
                error="timeout",
            )
            pending_at += 15_000
            sub.emit(
                _uuid(rng),
                0,
                PaymentRedriven,
                pending_at,
                request=request,
                attempt=1,
                requested_at=at,
                deadline_at=pending_at + 15_000,
            )
        sub.emit(
            _uuid(rng),
            0,
            PaymentPending,
            pending_at,
            payment_id=payment_id,
            provider_payment_id=provider_id,
            status="pending",
        )
        done_at = pending_at + rng.randrange(5_000, 1_800_000)
        if done_at >= self.end_ms:
            fact = PaymentFact(payment_id, sub.subscription_id, plan, kind, at, "pending")
            self.history.payments.append(fact)
            return fact
        source = _uuid(rng)
        if rng.random() < self.rates.decline:
            reason, party = rng.choice(DECLINES)
            sub.emit(
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
            fact = PaymentFact(
                payment_id, sub.subscription_id, plan, kind, at, "canceled", done_at, reason, party
            )
            self.history.payments.append(fact)
            return fact
        sub.emit(
            source,
            0,
            PaymentSucceeded,
            done_at,
            payment_id=payment_id,
            command_id=command_id,
            provider_payment_id=provider_id,
            amount=amount,
        )
        extended = self.period_end is not None and self.period_end > done_at
        start = self.period_end if self.period_end is not None and extended else done_at
        end = period_end_ms(start, plan.months)
        sub.emit(
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
        self.history.access.append(
            AccessFact(
                sub.subscription_id,
                done_at,
                done_at if extended else start,
                end,
                plan.plan_id,
                round(plan.amount_minor / plan.months),
                plan.currency,
            )
        )
        refund = self._maybe_refund(request, provider_id, start, end)
        fact = PaymentFact(
            payment_id,
            sub.subscription_id,
            plan,
            kind,
            at,
            "succeeded",
            done_at,
            period_start=start,
            period_end=end,
            refund=refund,
        )
        self.history.payments.append(fact)
        return fact

    def _maybe_refund(
        self, request: PaymentRequest, provider_id: str, start: int, end: int
    ) -> RefundFact | None:
        """A refund once the period has begun: full (access ends) or half."""
        rng, sub = self.rng, self.sub
        if rng.random() >= self.rates.refund:
            return None
        at = start + rng.randrange(HOUR_MS, 3 * DAY_MS)
        if at >= min(end - 2 * HOUR_MS, self.end_ms):
            return None  # keeps each subscription's events in time order
        full = rng.random() < 0.5
        half = Money(request.amount.amount_minor // 2, request.amount.currency)
        amount = request.amount if full else half
        command_id = _uuid(rng)
        refund_id = str(uuid.uuid5(uuid.UUID(command_id), "refund"))
        sub.emit(
            command_id,
            0,
            RefundRequested,
            at,
            request=RefundRequest(
                refund_id=refund_id,
                command_id=command_id,
                payment_id=request.payment_id,
                provider_payment_id=provider_id,
                amount=amount,
                reason="user request",
            ),
            deadline_at=at + 15_000,
        )
        done = at + rng.randrange(500, 5_000)
        source = _uuid(rng)
        sub.emit(
            source,
            0,
            RefundSucceeded,
            done,
            refund_id=refund_id,
            command_id=command_id,
            payment_id=request.payment_id,
            provider_refund_id=_uuid(rng),
            amount=amount,
            fully_refunded=full,
        )
        if full:
            sub.emit(
                source,
                1,
                SubscriptionCanceled,
                done,
                payment_id=request.payment_id,
                reason="refunded",
                access_until=done,
            )
            self.history.access.append(AccessFact(sub.subscription_id, done, done, done, "", 0, ""))
        return RefundFact(refund_id, amount.amount_minor, done, full)

    def _declined_renewal(self, fact: PaymentFact) -> bool:
        """Dunning after a declined renewal; False when the user is lost."""
        assert fact.outcome_at is not None
        self.dunning_attempt += 1
        if self.dunning_since is None:
            self.dunning_since = fact.outcome_at
        give_up = self.rng.random() < 0.4 or self.dunning_attempt >= 4
        self.sub.emit(
            _uuid(self.rng),
            0,
            RenewalFailed,
            fact.outcome_at,
            payment_id=fact.payment_id,
            reason=fact.reason,
            hard=False,
            attempt=self.dunning_attempt,
            next_retry_at=None if give_up else fact.outcome_at + DAY_MS,
        )
        if give_up:
            at = max(fact.outcome_at, self.period_end or fact.outcome_at)
            if at >= self.end_ms:
                self._dunning_end("open", None)
                return False
            self.sub.emit(
                _uuid(self.rng),
                0,
                SubscriptionExpired,
                at,
                reason="renewal_failed",
                period_end=self.period_end or at,
            )
            self._dunning_end("lost", at)
            return False
        return True

    def _dunning_end(self, outcome: str, at: int | None) -> None:
        if self.dunning_since is not None:
            self.history.dunning.append(
                DunningFact(self.sub.subscription_id, self.dunning_since, outcome, at)
            )
        self.dunning_since = None
        self.dunning_attempt = 0
