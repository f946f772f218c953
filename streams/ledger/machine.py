"""The subscription/payment state machine: pure ``decide`` and ``evolve``.

No Faust, no database, no clock: time comes from the message itself (``issued_at`` /
``observed_at``), so a replay of the same input on the same state yields byte-identical events.
Idempotency lives here, not in the transport:
- a source (command or provider observation) already seen re-emits the events it produced;
- an older source evicted from that window, or a provider status not newer than what we hold,
  applies nothing (transitions are monotonic, succeeded/canceled are terminal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.ids import event_id_for
from schemas.messages import (
    TERMINAL_PAYMENT_STATUSES,
    AnyCommand,
    AnyEvent,
    AnyProviderEvent,
    Event,
    PaymentCallFailed,
    PaymentCanceled,
    PaymentObserved,
    PaymentOutcomeUnknown,
    PaymentPending,
    PaymentRedriven,
    PaymentRejected,
    PaymentRequest,
    PaymentRequested,
    PaymentSucceeded,
    PaySubscription,
    SubscriptionActivated,
    SweepPayment,
)
from schemas.periods import period_end_ms
from schemas.state import PaymentRecord, SubscriptionState

LedgerInput = AnyCommand | AnyProviderEvent

# Order of payment statuses: an observation applies only if it moves a payment forward.
_RANK: dict[str, int] = {
    "requested": 0,
    "unknown": 0,
    "pending": 1,
    "waiting_for_capture": 2,
    "succeeded": 3,
    "canceled": 3,
}


@dataclass(frozen=True)
class Policy:
    """Tunables of the machine. Deadlines are relative to the message's own time."""

    payment_deadline_ms: int = 15_000
    redrive_max_backoff_ms: int = 3_600_000
    recent_sources: int = 16

    def redrive_deadline(self, now: int, attempt: int) -> int:
        """Exponential backoff between re-drives of one payment, capped."""
        backoff: int = self.payment_deadline_ms * 2 ** min(attempt, 30)
        return now + min(backoff, self.redrive_max_backoff_ms)


@dataclass
class Decision:
    state: SubscriptionState | None
    events: list[AnyEvent] = field(default_factory=list)
    duplicate: bool = False  # nothing new: state unchanged, events are a re-emission


class _Emitter:
    """Stamps events of one source with deterministic ids and consecutive versions."""

    def __init__(self, state: SubscriptionState, source_id: str, now: int) -> None:
        self.state = state
        self.source_id = source_id
        self.now = now
        self.events: list[AnyEvent] = []

    def emit(self, cls: Callable[..., AnyEvent], **fields: Any) -> None:
        n = len(self.events)
        event = cls(
            event_id=event_id_for(self.source_id, n),
            subscription_id=self.state.subscription_id,
            user_id=self.state.user_id,
            version=self.state.version + 1,
            occurred_at=self.now,
            causation_id=self.source_id,
            **fields,
        )
        self.events.append(event)
        self.state = evolve(self.state, event)


def source_id_of(msg: LedgerInput) -> str:
    if isinstance(msg, PaymentObserved | PaymentCallFailed):
        return msg.observation_id
    return msg.command_id


def time_of(msg: LedgerInput) -> int:
    if isinstance(msg, PaymentObserved | PaymentCallFailed):
        return msg.observed_at
    return msg.issued_at


def decide(state: SubscriptionState | None, msg: LedgerInput, policy: Policy) -> Decision:
    """Apply one input to one subscription's state."""
    source_id = source_id_of(msg)
    if state is not None and source_id in state.recent:
        return Decision(state, list(state.recent[source_id]), duplicate=True)
    if state is None:
        if not isinstance(msg, PaySubscription):
            # Nothing to apply to: an outcome for a subscription we never billed is the
            # reconciler's to classify, not the ledger's to invent.
            return Decision(None, duplicate=True)
        state = SubscriptionState(subscription_id=msg.subscription_id, user_id=msg.user_id)

    emitter = _Emitter(state, source_id, time_of(msg))
    if isinstance(msg, PaySubscription):
        _pay(emitter, msg, policy)
    elif isinstance(msg, SweepPayment):
        _sweep(emitter, msg, policy)
    elif isinstance(msg, PaymentObserved):
        _observed(emitter, msg)
    else:
        _call_failed(emitter, msg)

    if not emitter.events:
        return Decision(state, duplicate=True)
    recent = dict(emitter.state.recent)
    recent[source_id] = emitter.events
    while len(recent) > policy.recent_sources:
        del recent[next(iter(recent))]
    return Decision(msgspec.structs.replace(emitter.state, recent=recent), emitter.events)


# ------------------------------------------------------------------------------- handlers
def _in_flight(state: SubscriptionState) -> PaymentRecord | None:
    for rec in state.payments.values():
        if rec.status not in TERMINAL_PAYMENT_STATUSES:
            return rec
    return None


def _pay(em: _Emitter, cmd: PaySubscription, policy: Policy) -> None:
    state = em.state
    if cmd.payment_id in state.payments:
        return  # applied long ago (evicted from the replay window): nothing new
    busy = _in_flight(state)
    if busy is not None:
        # One payment at a time per subscription: a second click must not become a second
        # charge for the same period. The client polls the first one.
        em.emit(
            PaymentRejected,
            command_id=cmd.command_id,
            payment_id=cmd.payment_id,
            reason="payment_in_progress",
            detail=busy.payment_id,
        )
        return
    request = PaymentRequest(
        payment_id=cmd.payment_id,
        command_id=cmd.command_id,
        user_id=cmd.user_id,
        plan_id=cmd.plan_id,
        amount=cmd.amount,
        period_months=cmd.period_months,
        return_url=cmd.return_url,
        description=cmd.description,
        save_payment_method=cmd.save_payment_method,
        capture=cmd.capture,
    )
    em.emit(
        PaymentRequested,
        request=request,
        deadline_at=cmd.issued_at + policy.payment_deadline_ms,
    )


def _sweep(em: _Emitter, cmd: SweepPayment, policy: Policy) -> None:
    rec = em.state.payments.get(cmd.payment_id)
    if rec is None or rec.status in TERMINAL_PAYMENT_STATUSES or cmd.attempt != rec.attempts + 1:
        return  # resolved meanwhile, or a stale/duplicate sweep
    em.emit(
        PaymentRedriven,
        request=rec.request,
        attempt=cmd.attempt,
        requested_at=rec.requested_at,
        deadline_at=policy.redrive_deadline(cmd.issued_at, cmd.attempt),
        provider_payment_id=rec.provider_payment_id,
    )


def _observed(em: _Emitter, obs: PaymentObserved) -> None:
    rec = em.state.payments.get(obs.payment_id)
    if rec is None or rec.status in TERMINAL_PAYMENT_STATUSES:
        return
    if _RANK[obs.status] <= _RANK[rec.status]:
        return
    if obs.status in ("pending", "waiting_for_capture"):
        em.emit(
            PaymentPending,
            payment_id=rec.payment_id,
            provider_payment_id=obs.provider_payment_id,
            status=obs.status,
            confirmation_url=obs.confirmation_url,
        )
    elif obs.status == "succeeded":
        em.emit(
            PaymentSucceeded,
            payment_id=rec.payment_id,
            command_id=rec.command_id,
            provider_payment_id=obs.provider_payment_id,
            amount=obs.amount,
            payment_method_id=obs.payment_method_id if obs.payment_method_saved else None,
        )
        state = em.state
        # Stacking: a period bought while one is running starts where that one ends.
        extended = state.period_end is not None and state.period_end > obs.observed_at
        start = state.period_end if extended and state.period_end is not None else obs.observed_at
        em.emit(
            SubscriptionActivated,
            payment_id=rec.payment_id,
            plan_id=rec.plan_id,
            period_start=start,
            period_end=period_end_ms(start, rec.period_months),
            extended=extended,
        )
    else:
        em.emit(
            PaymentCanceled,
            payment_id=rec.payment_id,
            command_id=rec.command_id,
            provider_payment_id=obs.provider_payment_id,
            reason=obs.cancellation_reason or "canceled",
            party=obs.cancellation_party,
        )


def _call_failed(em: _Emitter, failed: PaymentCallFailed) -> None:
    rec = em.state.payments.get(failed.payment_id)
    if rec is None or rec.status in TERMINAL_PAYMENT_STATUSES:
        return
    if failed.outcome == "unknown":
        if rec.status == "requested":
            em.emit(
                PaymentOutcomeUnknown,
                payment_id=rec.payment_id,
                attempt=failed.attempt,
                error=f"{failed.error_code}: {failed.error}"[:500],
            )
        return
    if rec.status in ("requested", "unknown") and rec.provider_payment_id is None:
        em.emit(
            PaymentCanceled,
            payment_id=rec.payment_id,
            command_id=rec.command_id,
            provider_payment_id=None,
            reason=f"provider_rejected:{failed.error_code}",
            party="merchant",
        )


# -------------------------------------------------------------------------------- evolve
def evolve(state: SubscriptionState, event: Event) -> SubscriptionState:
    """Fold one event into the state. Total over AnyEvent; used by decide and by rebuilds."""
    replace = msgspec.structs.replace
    payments = state.payments
    new: dict[str, Any] = {"version": event.version}

    def put(rec: PaymentRecord) -> None:
        updated = dict(payments)
        updated[rec.payment_id] = rec
        new["payments"] = updated

    if isinstance(event, PaymentRequested):
        req = event.request
        put(
            PaymentRecord(
                payment_id=req.payment_id,
                command_id=req.command_id,
                plan_id=req.plan_id,
                amount=req.amount,
                period_months=req.period_months,
                status="requested",
                request=req,
                requested_at=event.occurred_at,
                deadline_at=event.deadline_at,
            )
        )
        if state.status in ("none", "inactive"):
            new["status"] = "pending"
    elif isinstance(event, PaymentRedriven):
        rec = payments[event.request.payment_id]
        put(replace(rec, attempts=event.attempt, deadline_at=event.deadline_at))
    elif isinstance(event, PaymentPending):
        rec = payments[event.payment_id]
        put(
            replace(
                rec,
                status=event.status,
                provider_payment_id=event.provider_payment_id,
                confirmation_url=event.confirmation_url,
                status_reason=None,
            )
        )
    elif isinstance(event, PaymentOutcomeUnknown):
        rec = payments[event.payment_id]
        put(replace(rec, status="unknown", status_reason=event.error))
    elif isinstance(event, PaymentSucceeded):
        rec = payments[event.payment_id]
        put(
            replace(
                rec,
                status="succeeded",
                provider_payment_id=event.provider_payment_id,
                succeeded_at=event.occurred_at,
                deadline_at=None,
                status_reason=None,
                confirmation_url=None,
            )
        )
        if event.payment_method_id is not None:
            new["payment_method_id"] = event.payment_method_id
    elif isinstance(event, PaymentCanceled):
        rec = payments[event.payment_id]
        put(
            replace(
                rec,
                status="canceled",
                provider_payment_id=event.provider_payment_id or rec.provider_payment_id,
                status_reason=event.reason,
                deadline_at=None,
                confirmation_url=None,
            )
        )
        if state.status == "pending":
            new["status"] = "inactive"
    elif isinstance(event, SubscriptionActivated):
        rec = payments[event.payment_id]
        put(replace(rec, period_start=event.period_start, period_end=event.period_end))
        new["status"] = "active"
        new["plan_id"] = event.plan_id
        new["period_end"] = event.period_end
        if not event.extended or state.period_start is None:
            new["period_start"] = event.period_start
    # PaymentRejected changes nothing but the version: the command is answered, not applied.
    return replace(state, **new)


def overdue_payments(state: SubscriptionState, now: int) -> list[PaymentRecord]:
    """Payments whose outcome is late: the sweeper turns each into a SweepPayment."""
    return [
        rec
        for rec in state.payments.values()
        if rec.status not in TERMINAL_PAYMENT_STATUSES
        and rec.deadline_at is not None
        and rec.deadline_at <= now
    ]
