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

from schemas.errors import BillingError
from schemas.ids import derived_id, event_id_for
from schemas.messages import (
    KEY_WINDOW_EXPIRED,
    TERMINAL_PAYMENT_STATUSES,
    AccessShortened,
    AdminActionRejected,
    AdminAdjust,
    AnyCommand,
    AnyEvent,
    AnyProviderEvent,
    AutoRenewChanged,
    ChangePlan,
    Command,
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
    PaymentSettleRejected,
    PaymentSettleRequested,
    PaymentSucceeded,
    PaySubscription,
    PeriodAdjusted,
    PlanChangeRejected,
    PlanChangeScheduled,
    PriceQuote,
    RefundCallFailed,
    RefundFailed,
    RefundObserved,
    RefundOutcomeUnknown,
    RefundPayment,
    RefundRedriven,
    RefundRejected,
    RefundRequest,
    RefundRequested,
    RefundSucceeded,
    RenewalFailed,
    RenewalUpcoming,
    RetryPayment,
    SetAutoRenew,
    SettlePayment,
    SubscriptionActivated,
    SubscriptionCanceled,
    SubscriptionDue,
    SubscriptionExpired,
    SubscriptionPastDue,
    SweepPayment,
    SweepRefund,
)
from schemas.money import Money
from schemas.periods import period_end_ms
from schemas.state import PaymentRecord, RefundRecord, SubscriptionState

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


DAY_MS = 86_400_000

# YooKassa ``cancellation_details.reason`` values after which retrying the same saved method
# cannot succeed: dunning stops. Everything else (insufficient_funds, internal_timeout,
# general_decline, issuer_unavailable, …) is soft and retried on the schedule.
HARD_DECLINES: frozenset[str] = frozenset(
    {
        "permission_revoked",
        "card_expired",
        "payment_method_restricted",
        "fraud_suspected",
        "invalid_card_number",
        "invalid_csc",
        "country_forbidden",
        "identification_required",
        "deal_expired",
        "canceled_by_merchant",
        "3d_secure_failed",
    }
)


@dataclass(frozen=True)
class Policy:
    """Tunables of the machine. Deadlines are relative to the message's own time."""

    payment_deadline_ms: int = 15_000
    redrive_max_backoff_ms: int = 3_600_000
    recent_sources: int = 16
    answered_commands: int = 32  # user/admin command ids remembered beyond ``recent``
    renew_lead_ms: int = DAY_MS  # charge a renewal this long before the period ends
    # Waits after each declined renewal charge before the next try: 4 retries over 14 days.
    dunning_schedule_ms: tuple[int, ...] = (DAY_MS, 3 * DAY_MS, 5 * DAY_MS, 5 * DAY_MS)
    hard_declines: frozenset[str] = HARD_DECLINES
    remind_ms: int = 3 * DAY_MS  # "renewal upcoming" this long before the period ends; 0: off
    # Two-stage payments (capture=false): capture this long after the hold starts (None: an
    # admin decides), and release (cancel) a hold still open this long after it started,
    # before the provider's own expiry (7 days for cards at YooKassa).
    capture_delay_ms: int | None = 0
    hold_ms: int = 6 * DAY_MS

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
    if isinstance(msg, Command):
        return msg.command_id
    return msg.observation_id


def time_of(msg: LedgerInput) -> int:
    if isinstance(msg, Command):
        return msg.issued_at
    return msg.observed_at


# Commands a person sent (through the outbox): each is answered once, however often the relay
# or a replay delivers it.
_PERSON_COMMANDS = (
    PaySubscription,
    RefundPayment,
    SetAutoRenew,
    RetryPayment,
    ChangePlan,
    AdminAdjust,
    SettlePayment,
)


def decide(state: SubscriptionState | None, msg: LedgerInput, policy: Policy) -> Decision:
    """Apply one input to one subscription's state."""
    source_id = source_id_of(msg)
    if state is not None and source_id in state.recent:
        return Decision(state, list(state.recent[source_id]), duplicate=True)
    if state is not None and isinstance(msg, _PERSON_COMMANDS) and source_id in state.answered:
        return Decision(state, duplicate=True)  # answered long ago: its events are in the log
    if state is None:
        if not isinstance(
            msg,
            PaySubscription | RefundPayment | SetAutoRenew | RetryPayment | ChangePlan,
        ) and not isinstance(msg, AdminAdjust | SettlePayment):
            # Nothing to apply to: an outcome for a subscription we never billed is the
            # reconciler's to classify, not the ledger's to invent.
            return Decision(None, duplicate=True)
        # A user's command always gets an answer (an event that closes its outbox row), even
        # when it finds no subscription: it is then refused or recorded on an empty state.
        state = SubscriptionState(subscription_id=msg.subscription_id, user_id=msg.user_id)

    emitter = _Emitter(state, source_id, time_of(msg))
    if isinstance(msg, PaySubscription):
        _pay(emitter, msg, policy)
    elif isinstance(msg, SweepPayment):
        _sweep(emitter, msg, policy)
    elif isinstance(msg, PaymentObserved):
        _observed(emitter, msg, policy)
    elif isinstance(msg, PaymentCallFailed):
        _call_failed(emitter, msg, policy)
    elif isinstance(msg, RefundPayment):
        _refund(emitter, msg, policy)
    elif isinstance(msg, SweepRefund):
        _sweep_refund(emitter, msg, policy)
    elif isinstance(msg, RefundObserved):
        _refund_observed(emitter, msg)
    elif isinstance(msg, RefundCallFailed):
        _refund_call_failed(emitter, msg)
    elif isinstance(msg, SetAutoRenew):
        emitter.emit(
            AutoRenewChanged,
            command_id=msg.command_id,
            enabled=msg.enabled,
            actor=msg.actor,
            reason=msg.reason,
        )
    elif isinstance(msg, RetryPayment):
        _retry(emitter, msg, policy)
    elif isinstance(msg, ChangePlan):
        _change_plan(emitter, msg, policy)
    elif isinstance(msg, AdminAdjust):
        _admin(emitter, msg)
    elif isinstance(msg, SettlePayment):
        _settle(emitter, msg, policy)
    else:
        _due(emitter, msg, policy)

    if not emitter.events:
        return Decision(state, duplicate=True)
    recent = dict(emitter.state.recent)
    recent[source_id] = emitter.events
    while len(recent) > policy.recent_sources:
        del recent[next(iter(recent))]
    answered = emitter.state.answered
    if isinstance(msg, _PERSON_COMMANDS):
        answered = [*answered[-(policy.answered_commands - 1) :], source_id]
    return Decision(
        msgspec.structs.replace(emitter.state, recent=recent, answered=answered), emitter.events
    )


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
        price_version=cmd.price_version,
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


def _observed(em: _Emitter, obs: PaymentObserved, policy: Policy) -> None:
    rec = em.state.payments.get(obs.payment_id)
    if rec is None:
        return
    if rec.status in TERMINAL_PAYMENT_STATUSES:
        if obs.source == "reconciliation" and obs.status in TERMINAL_PAYMENT_STATUSES:
            _correct_terminal(em, rec, obs)
        return
    if rec.escalated and obs.source != "reconciliation":
        return  # only reconciliation (an operator's decision) settles an escalated payment
    if (
        obs.status in ("succeeded", "waiting_for_capture")
        and obs.amount != rec.amount
        and obs.source != "reconciliation"
    ):
        # The provider took (or holds) another sum than we asked: granting the period would
        # sell it at the wrong price, refusing it would ignore money taken. Neither: escalate.
        em.emit(
            PaymentOutcomeUnknown,
            payment_id=rec.payment_id,
            attempt=rec.attempts,
            error=f"amount_mismatch: provider {obs.status} {obs.amount}, requested {rec.amount}",
            escalated=True,
            provider_payment_id=obs.provider_payment_id,
        )
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
        _succeed(em, rec, obs)
    else:
        em.emit(
            PaymentCanceled,
            payment_id=rec.payment_id,
            command_id=rec.command_id,
            provider_payment_id=obs.provider_payment_id,
            reason=obs.cancellation_reason or "canceled",
            party=obs.cancellation_party,
        )
        _after_renewal_failure(em, rec, obs.cancellation_reason or "canceled", policy)


def _succeed(em: _Emitter, rec: PaymentRecord, obs: PaymentObserved) -> None:
    """The payment succeeded: record it and grant its period. Stacking: a period bought
    while one is running starts where that one ends; an upgrade replaces the running period
    (its unused part was credited in the price)."""
    em.emit(
        PaymentSucceeded,
        payment_id=rec.payment_id,
        command_id=rec.command_id,
        provider_payment_id=obs.provider_payment_id,
        amount=obs.amount,
        payment_method_id=obs.payment_method_id if obs.payment_method_saved else None,
    )
    state = em.state
    extended = (
        rec.kind != "upgrade"
        and state.period_end is not None
        and state.period_end > obs.observed_at
        and state.status in ("active", "past_due")
    )
    start = state.period_end if extended and state.period_end is not None else obs.observed_at
    supersedes: dict[str, int] = {}
    for source_id in rec.request.credits:
        source = state.payments.get(source_id)
        if source is not None and source.period_start is not None and source.period_end:
            cut = max(source.period_start, min(source.period_end, start))
            if cut != source.period_end:
                supersedes[source_id] = cut
    em.emit(
        SubscriptionActivated,
        payment_id=rec.payment_id,
        plan_id=rec.plan_id,
        period_start=start,
        period_end=period_end_ms(start, rec.period_months),
        extended=extended,
        supersedes=supersedes,
    )


def _correct_terminal(em: _Emitter, rec: PaymentRecord, obs: PaymentObserved) -> None:
    """Reconciliation found the provider's terminal status differs from ours: the provider
    holds the money, so its status wins (ARCHITECTURE.md, status_mismatch: apply it)."""
    if obs.status == rec.status:
        return
    if obs.status == "succeeded":
        _succeed(em, rec, obs)
        return
    em.emit(
        PaymentCanceled,
        payment_id=rec.payment_id,
        command_id=rec.command_id,
        provider_payment_id=obs.provider_payment_id,
        reason=f"reconciliation: {obs.cancellation_reason or 'canceled at the provider'}",
        party=obs.cancellation_party,
    )
    _period_returned(em, em.state.payments[rec.payment_id], "payment canceled at the provider")


def _cut_at(state: SubscriptionState, until: int) -> dict[str, int]:
    """Payments whose periods reach past ``until``, with ``until`` as their new end (never
    before their start): access canceled at ``until`` takes those days from them."""
    return {
        p.payment_id: max(p.period_start, until)
        for p in state.payments.values()
        if p.period_start is not None and p.period_end is not None and p.period_end > until
    }


def _period_returned(em: _Emitter, rec: PaymentRecord, reason: str) -> None:
    """``rec`` no longer pays for its period (fully refunded, or canceled at the provider):
    the part of it still ahead leaves the access window, and the periods paid after it move
    up (evolve shifts them). Access ends now only when nothing paid is left ahead."""
    state = em.state
    now = em.now
    if (
        rec.period_start is None
        or rec.period_end is None
        or state.period_end is None
        or state.status not in ("active", "past_due")
    ):
        return
    ahead = rec.period_end - max(rec.period_start, now)
    if ahead <= 0 or state.period_end <= now:
        return  # its period is over: nothing of today's access rests on it
    new_end = state.period_end - ahead
    if new_end <= now:
        em.emit(
            SubscriptionCanceled,
            payment_id=rec.payment_id,
            reason=reason,
            access_until=now,
            supersedes=_cut_at(state, now),
        )
        return
    later = [
        p.payment_id
        for p in state.payments.values()
        if p.payment_id != rec.payment_id
        and p.period_start is not None
        and p.period_start >= rec.period_end
    ]
    em.emit(
        AccessShortened,
        payment_id=rec.payment_id,
        plan_id=state.plan_id,
        period_start=state.period_start or now,
        period_end=new_end,
        reason=reason,
        moved=sorted(later),
        moved_by_ms=ahead if later else 0,
    )


def _after_renewal_failure(em: _Emitter, rec: PaymentRecord, reason: str, policy: Policy) -> None:
    """Dunning: a declined renewal is retried on the schedule unless the decline is hard."""
    if rec.kind != "renewal":
        return
    state = em.state
    attempt = state.dunning_attempt + 1
    hard = reason in policy.hard_declines or reason.startswith("provider_rejected")
    exhausted = attempt > len(policy.dunning_schedule_ms)
    next_retry = None if hard or exhausted else em.now + policy.dunning_schedule_ms[attempt - 1]
    em.emit(
        RenewalFailed,
        payment_id=rec.payment_id,
        reason=reason,
        hard=hard,
        attempt=attempt,
        next_retry_at=next_retry,
    )
    if next_retry is None and em.state.status == "past_due":
        em.emit(
            SubscriptionExpired, reason="renewal_failed", period_end=em.state.period_end or em.now
        )


def _call_failed(em: _Emitter, failed: PaymentCallFailed, policy: Policy) -> None:
    rec = em.state.payments.get(failed.payment_id)
    if rec is None or rec.status in TERMINAL_PAYMENT_STATUSES:
        return
    if failed.outcome == "unknown":
        if (
            failed.error_code == KEY_WINDOW_EXPIRED
            and rec.deadline_at is not None
            and rec.provider_payment_id is None
        ):
            # Past the key window with nothing found: stop re-driving (each re-drive would
            # only search again) and leave it to reconciliation, with the reason.
            em.emit(
                PaymentOutcomeUnknown,
                payment_id=rec.payment_id,
                attempt=failed.attempt,
                error=f"{failed.error_code}: {failed.error}"[:500],
                final=True,
            )
        elif rec.status == "requested":
            em.emit(
                PaymentOutcomeUnknown,
                payment_id=rec.payment_id,
                attempt=failed.attempt,
                error=f"{failed.error_code}: {failed.error}"[:500],
            )
        return
    if rec.status in ("requested", "unknown") and rec.provider_payment_id is None:
        reason = f"provider_rejected:{failed.error_code}"
        em.emit(
            PaymentCanceled,
            payment_id=rec.payment_id,
            command_id=rec.command_id,
            provider_payment_id=None,
            reason=reason,
            party="merchant",
        )
        _after_renewal_failure(em, rec, reason, policy)


def _refund(em: _Emitter, cmd: RefundPayment, policy: Policy) -> None:
    state = em.state
    if cmd.refund_id in state.refunds:
        return  # applied long ago (evicted from the replay window)
    rec = state.payments.get(cmd.payment_id)

    def reject(reason: str, detail: str = "") -> None:
        em.emit(
            RefundRejected,
            command_id=cmd.command_id,
            refund_id=cmd.refund_id,
            payment_id=cmd.payment_id,
            reason=reason,
            detail=detail,
        )

    if rec is None:
        return reject("payment_not_found")
    dup = cmd.duplicate_of_provider_id
    if dup is not None:
        # Never the charge the ledger recorded: that one is the payment's, not a duplicate.
        if dup == rec.provider_payment_id or cmd.amount is None:
            return reject("not_a_duplicate", dup)
        if any(r.request.provider_payment_id == dup for r in state.refunds.values()):
            return  # already asked (the repair re-ran): nothing new
        em.emit(
            RefundRequested,
            request=RefundRequest(
                refund_id=cmd.refund_id,
                command_id=cmd.command_id,
                payment_id=rec.payment_id,
                provider_payment_id=dup,
                amount=cmd.amount,
                reason=cmd.reason or "duplicate charge",
                actor=cmd.actor,
                duplicate=True,
            ),
            deadline_at=cmd.issued_at + policy.payment_deadline_ms,
        )
        return
    if rec.status != "succeeded" or rec.provider_payment_id is None:
        return reject("payment_not_refundable", f"payment is {rec.status}")
    upgrading = _upgrade_in_flight(state)
    if upgrading is not None:
        # The upgrade's charge was priced with this subscription's credit: refunding while it
        # is open could pay the same unused days back twice.
        return reject("plan_change_in_progress", upgrading.payment_id)
    refundable = rec.refundable_minor
    amount = cmd.amount or Money(refundable, rec.amount.currency)
    if amount.currency != rec.amount.currency:
        return reject("currency_mismatch", f"payment is in {rec.amount.currency}")
    if amount.amount_minor <= 0 or refundable <= 0:
        return reject("nothing_to_refund", f"refundable {refundable}")
    if amount.amount_minor > refundable:
        return reject("amount_exceeds_refundable", f"refundable {refundable}")
    em.emit(
        RefundRequested,
        request=RefundRequest(
            refund_id=cmd.refund_id,
            command_id=cmd.command_id,
            payment_id=rec.payment_id,
            provider_payment_id=rec.provider_payment_id,
            amount=amount,
            reason=cmd.reason,
            actor=cmd.actor,
        ),
        deadline_at=cmd.issued_at + policy.payment_deadline_ms,
    )


def _sweep_refund(em: _Emitter, cmd: SweepRefund, policy: Policy) -> None:
    ref = em.state.refunds.get(cmd.refund_id)
    if ref is None or ref.status in TERMINAL_PAYMENT_STATUSES or cmd.attempt != ref.attempts + 1:
        return
    em.emit(
        RefundRedriven,
        request=ref.request,
        attempt=cmd.attempt,
        requested_at=ref.requested_at,
        deadline_at=policy.redrive_deadline(cmd.issued_at, cmd.attempt),
        provider_refund_id=ref.provider_refund_id,
    )


def _refund_observed(em: _Emitter, obs: RefundObserved) -> None:
    ref = em.state.refunds.get(obs.refund_id)
    if ref is None:
        return
    # Only reconciliation may correct a terminal refund (the provider holds the money).
    if ref.status in TERMINAL_PAYMENT_STATUSES and (
        obs.source != "reconciliation" or obs.status in (ref.status, "pending")
    ):
        return
    if obs.status == "pending":
        return  # YooKassa refunds are normally final at once; a pending one is swept
    if obs.status == "canceled":
        em.emit(
            RefundFailed,
            refund_id=ref.refund_id,
            command_id=ref.command_id,
            payment_id=ref.payment_id,
            provider_refund_id=obs.provider_refund_id,
            reason=obs.cancellation_reason or "canceled",
        )
        return
    pay = em.state.payments[ref.payment_id]
    fully = not ref.request.duplicate and pay.kept_minor - ref.amount.amount_minor <= 0
    em.emit(
        RefundSucceeded,
        refund_id=ref.refund_id,
        command_id=ref.command_id,
        payment_id=ref.payment_id,
        provider_refund_id=obs.provider_refund_id,
        amount=ref.amount,
        fully_refunded=fully,
    )
    if fully:
        # Whether access ends is decided by what still pays for the days ahead, not by this
        # payment's own period: after an upgrade, the upgrade's payment does.
        _period_returned(em, em.state.payments[pay.payment_id], "refunded")


def _refund_call_failed(em: _Emitter, failed: RefundCallFailed) -> None:
    ref = em.state.refunds.get(failed.refund_id)
    if ref is None or ref.status in TERMINAL_PAYMENT_STATUSES:
        return
    if failed.outcome == "unknown":
        final = failed.error_code == KEY_WINDOW_EXPIRED and ref.deadline_at is not None
        if final or ref.status == "requested":
            em.emit(
                RefundOutcomeUnknown,
                refund_id=ref.refund_id,
                attempt=failed.attempt,
                error=f"{failed.error_code}: {failed.error}"[:500],
                final=final,
            )
        return
    if ref.provider_refund_id is None:
        em.emit(
            RefundFailed,
            refund_id=ref.refund_id,
            command_id=ref.command_id,
            payment_id=ref.payment_id,
            provider_refund_id=None,
            reason=f"provider_rejected:{failed.error_code}",
        )


# ------------------------------------------------------------------------ time-driven work
_DUE_ORDER = {"capture": 0, "release": 1, "remind": 2, "renew": 3, "retry": 4, "lapse": 5}


def _held(state: SubscriptionState) -> PaymentRecord | None:
    for rec in state.payments.values():
        if rec.status == "waiting_for_capture":
            return rec
    return None


def _held_due(state: SubscriptionState, policy: Policy) -> tuple[str, int] | None:
    """A payment held for capture: capture it (auto mode), release it before the hold ends,
    or re-drive a capture/cancel whose outcome is late."""
    rec = _held(state)
    if rec is None or rec.held_at is None:
        return None
    if rec.settle_action is not None:
        kind = "capture" if rec.settle_action == "capture" else "release"
        return (kind, rec.settle_deadline or rec.held_at)
    release = ("release", rec.held_at + policy.hold_ms)
    if policy.capture_delay_ms is None:
        return release
    return min(("capture", rec.held_at + policy.capture_delay_ms), release, key=lambda c: c[1])


def next_due(state: SubscriptionState, policy: Policy) -> tuple[str, int] | None:
    """What the subscription waits for next (renewal reminder, renewal charge, dunning retry,
    lapse at period end) and when.

    Pure: the ledger's timer sends a SubscriptionDue for it once the time has come, and
    ``decide`` recomputes it, so a stale or repeated tick applies nothing.
    """
    held = _held_due(state, policy)
    if state.status not in ("active", "past_due") or state.period_end is None:
        return held
    end = state.period_end
    in_flight = _in_flight(state) is not None
    can_charge = (
        state.auto_renew
        and state.payment_method_id is not None
        and state.renew_amount is not None
        and not state.dunning_stopped
    )
    first_charge_pending = (
        can_charge and state.dunning_attempt == 0 and not _renewal_requested(state)
    )
    candidates: list[tuple[str, int]] = []
    if state.status == "active":
        candidates.append(("lapse", end))  # access must never outlive its payment
        if first_charge_pending and policy.remind_ms > 0 and state.reminded_for != end:
            candidates.append(("remind", end - policy.remind_ms))
    if not in_flight and first_charge_pending:
        candidates.append(("renew", end - policy.renew_lead_ms))
    elif not in_flight and can_charge and state.next_retry_at is not None:
        candidates.append(("retry", state.next_retry_at))
    elif state.status == "past_due" and not in_flight:
        candidates.append(("lapse", end))  # nothing left to try: it expires
    if held is not None:
        candidates.append(held)
    if not candidates:
        return None
    return min(candidates, key=lambda c: (c[1], _DUE_ORDER[c[0]]))


def _renewal_requested(state: SubscriptionState) -> bool:
    return renewal_payment_id(state, 0) in state.payments


def renewal_payment_id(state: SubscriptionState, attempt: int) -> str:
    """Deterministic per (subscription, period, attempt): a timer firing twice, or two
    workers, ask for the same payment and the provider key collapses them."""
    return derived_id(state.subscription_id, f"renew-{state.period_end}-{attempt}")


def _due(em: _Emitter, cmd: SubscriptionDue, policy: Policy) -> None:
    state = em.state
    due = next_due(state, policy)
    if due is None or due != (cmd.kind, cmd.due_at) or cmd.issued_at < cmd.due_at:
        return  # stale or early: the state moved on since the timer looked
    if cmd.kind in ("capture", "release"):
        rec = _held(state)
        assert rec is not None
        _request_settle(
            em,
            rec,
            "capture" if cmd.kind == "capture" else "cancel",
            cmd.command_id,
            "system",
            "hold_expiring" if cmd.kind == "release" else "auto_capture",
            policy,
        )
        return
    assert state.renew_amount is not None or cmd.kind == "lapse"
    price = _renewal_price(state, cmd.price)
    if cmd.kind == "remind":
        em.emit(
            RenewalUpcoming,
            period_end=state.period_end or cmd.due_at,
            plan_id=price.plan_id,
            amount=price.amount,
        )
        return
    if cmd.kind in ("renew", "retry"):
        payment_id = renewal_payment_id(state, state.dunning_attempt)
        em.emit(
            PaymentRequested,
            request=PaymentRequest(
                payment_id=payment_id,
                command_id=cmd.command_id,
                user_id=state.user_id,
                plan_id=price.plan_id,
                amount=price.amount,
                period_months=price.period_months,
                price_version=price.price_version,
                return_url="",
                description=f"Renewal: {price.plan_id}",
                save_payment_method=False,
                capture=True,
                payment_method_id=state.payment_method_id,
                kind="renewal",
            ),
            deadline_at=cmd.issued_at + policy.payment_deadline_ms,
        )
        return
    period_end = state.period_end or cmd.due_at
    if not state.auto_renew:
        em.emit(SubscriptionExpired, reason="auto_renew_off", period_end=period_end)
    elif state.payment_method_id is None or state.renew_amount is None:
        em.emit(SubscriptionExpired, reason="no_payment_method", period_end=period_end)
    elif state.status == "past_due" or state.dunning_stopped:
        em.emit(SubscriptionExpired, reason="renewal_failed", period_end=period_end)
    else:
        em.emit(SubscriptionPastDue, period_end=period_end, next_retry_at=state.next_retry_at)


def _renewal_price(state: SubscriptionState, quote: PriceQuote | None) -> PriceQuote:
    """The price in force (looked up by the timer) for the plan the subscription renews to;
    without a quote, what the current period was sold at."""
    if quote is not None and quote.plan_id == state.renew_plan_id:
        return quote
    return PriceQuote(
        plan_id=state.renew_plan_id or state.plan_id or "",
        amount=state.renew_amount or Money(0, "RUB"),
        period_months=state.renew_period_months,
    )


def _retry(em: _Emitter, cmd: RetryPayment, policy: Policy) -> None:
    state = em.state
    if cmd.payment_id in state.payments:
        return

    def reject(reason: str, detail: str = "") -> None:
        em.emit(
            PaymentRejected,
            command_id=cmd.command_id,
            payment_id=cmd.payment_id,
            reason=reason,
            detail=detail,
        )

    orig = state.payments.get(cmd.retry_of)
    if orig is None:
        return reject("payment_not_found")
    if orig.status != "canceled":
        return reject("payment_not_retryable", f"payment is {orig.status}")
    busy = _in_flight(state)
    if busy is not None:
        return reject("payment_in_progress", busy.payment_id)
    if state.status == "active" and (state.period_end or 0) > cmd.issued_at:
        # Whatever the failed payment was for is paid by now (a late success, a renewal
        # retry or another purchase): a retry must not charge for the same period again.
        return reject("period_already_paid", str(state.period_end))
    em.emit(
        PaymentRequested,
        request=PaymentRequest(
            payment_id=cmd.payment_id,
            command_id=cmd.command_id,
            user_id=cmd.user_id,
            plan_id=cmd.price.plan_id,
            amount=cmd.price.amount,
            period_months=cmd.price.period_months,
            price_version=cmd.price.price_version,
            return_url=cmd.return_url,
            description=cmd.description,
            kind="retry",
        ),
        deadline_at=cmd.issued_at + policy.payment_deadline_ms,
    )


def _request_settle(
    em: _Emitter,
    rec: PaymentRecord,
    action: str,
    command_id: str,
    actor: str,
    reason: str,
    policy: Policy,
) -> None:
    assert rec.provider_payment_id is not None
    attempt = rec.settle_attempts + 1
    em.emit(
        PaymentSettleRequested,
        payment_id=rec.payment_id,
        command_id=command_id,
        provider_payment_id=rec.provider_payment_id,
        action=action,
        amount=rec.amount,
        attempt=attempt,
        deadline_at=policy.redrive_deadline(em.now, attempt - 1),
        actor=actor,
        reason=reason,
    )


def _settle(em: _Emitter, cmd: SettlePayment, policy: Policy) -> None:
    rec = em.state.payments.get(cmd.payment_id)
    problem = None
    if rec is None:
        problem = "payment_not_found"
    elif rec.status != "waiting_for_capture" or rec.provider_payment_id is None:
        problem = f"payment is {rec.status}, not waiting_for_capture"
    elif rec.settle_action is not None and rec.settle_action != cmd.action:
        problem = f"already asked to {rec.settle_action}"
    if problem is not None or rec is None:
        em.emit(
            PaymentSettleRejected,
            command_id=cmd.command_id,
            payment_id=cmd.payment_id,
            reason=problem or "payment_not_found",
        )
        return
    _request_settle(em, rec, cmd.action, cmd.command_id, cmd.actor, cmd.reason, policy)


def upgrade_credits(state: SubscriptionState, now: int) -> dict[str, int] | None:
    """The unused part of the period running at ``now``, in minor units, pro rata temporis
    of what was paid for it (net of refunds and earlier credits), rounded down, keyed by the
    payment it comes from. None while a later period is already paid for."""
    credits: dict[str, int] = {}
    for rec in state.payments.values():
        if rec.kept_minor <= 0 or rec.period_start is None or rec.period_end is None:
            continue
        if rec.period_start > now:
            return None
        if rec.period_start <= now < rec.period_end:
            paid = rec.kept_minor
            if rec.request.plan_amount is not None:
                paid = min(paid, rec.request.plan_amount.amount_minor)
            credit = paid * (rec.period_end - now) // (rec.period_end - rec.period_start)
            if credit > 0:
                credits[rec.payment_id] = credit
    return credits


def upgrade_credit(state: SubscriptionState, now: int) -> int:
    """The whole credit an upgrade at ``now`` would get (0 when it would be refused)."""
    return sum((upgrade_credits(state, now) or {}).values())


def _upgrade_in_flight(state: SubscriptionState) -> PaymentRecord | None:
    for rec in state.payments.values():
        if rec.kind == "upgrade" and rec.status not in TERMINAL_PAYMENT_STATUSES:
            return rec
    return None


def _change_plan(em: _Emitter, cmd: ChangePlan, policy: Policy) -> None:
    state = em.state
    if cmd.payment_id in state.payments:
        return

    def reject(reason: str, detail: str = "") -> None:
        em.emit(PlanChangeRejected, command_id=cmd.command_id, reason=reason, detail=detail)

    now = cmd.issued_at
    if state.status != "active" or (state.period_end or 0) <= now:
        return reject("not_active", "buy the plan instead")
    current = state.renew_plan_id or state.plan_id
    if cmd.price.plan_id == current:
        return reject("same_plan")
    busy = _in_flight(state)
    if busy is not None:
        return reject("payment_in_progress", busy.payment_id)
    refunding = next(
        (
            r
            for r in state.refunds.values()
            if r.status not in TERMINAL_PAYMENT_STATUSES and not r.request.duplicate
        ),
        None,
    )
    if refunding is not None:
        return reject("refund_in_progress", refunding.refund_id)
    current_amount = state.renew_amount
    new = cmd.price.amount
    if current_amount is None or new.currency != current_amount.currency:
        return reject("currency_mismatch")
    if new.amount_minor <= current_amount.amount_minor:
        em.emit(
            PlanChangeScheduled,
            command_id=cmd.command_id,
            plan_id=cmd.price.plan_id,
            amount=new,
            period_months=cmd.price.period_months,
            effective_at=state.period_end or now,
        )
        return
    credits = upgrade_credits(state, now)
    if credits is None:
        # An upgrade starts now and replaces the running period; periods already paid after
        # it would be lost. Refused rather than guessed: the user refunds them first.
        return reject("prepaid_period", "a later period is already paid for")
    charge = new.amount_minor - sum(credits.values())
    if charge < 1:
        return reject("credit_exceeds_price", f"credit {sum(credits.values())}")
    em.emit(
        PaymentRequested,
        request=PaymentRequest(
            payment_id=cmd.payment_id,
            command_id=cmd.command_id,
            user_id=cmd.user_id,
            plan_id=cmd.price.plan_id,
            amount=Money(charge, new.currency),
            period_months=cmd.price.period_months,
            price_version=cmd.price.price_version,
            return_url=cmd.return_url,
            description=cmd.description,
            payment_method_id=state.payment_method_id,
            save_payment_method=state.payment_method_id is None,
            kind="upgrade",
            plan_amount=new,
            credits=credits,
        ),
        deadline_at=now + policy.payment_deadline_ms,
    )


def _admin(em: _Emitter, cmd: AdminAdjust) -> None:
    state = em.state
    now = cmd.issued_at
    covering = state.status == "active" and (state.period_end or 0) > now

    def reject(reason: str) -> None:
        em.emit(
            AdminActionRejected,
            command_id=cmd.command_id,
            action=cmd.action,
            actor=cmd.actor,
            reason=reason,
        )

    if cmd.action == "cancel":
        if state.status not in ("active", "past_due"):
            return reject(f"subscription is {state.status}")
        em.emit(
            SubscriptionCanceled,
            payment_id="",
            reason=cmd.reason,
            access_until=min(now, state.period_end or now),
            actor=cmd.actor,
            command_id=cmd.command_id,
            supersedes=_cut_at(state, min(now, state.period_end or now)),
        )
        return
    if cmd.action == "extend":
        if not covering or state.period_end is None or cmd.days <= 0:
            return reject("nothing to extend" if cmd.days > 0 else "days must be positive")
        start, end = state.period_start or now, state.period_end + cmd.days * DAY_MS
        plan_id = state.plan_id
    else:
        if cmd.period_months <= 0 or not cmd.plan_id:
            return reject("a grant needs a plan and a period")
        start = state.period_end if covering and state.period_end is not None else now
        end = period_end_ms(start, cmd.period_months)
        plan_id = cmd.plan_id
    em.emit(
        PeriodAdjusted,
        command_id=cmd.command_id,
        action=cmd.action,
        actor=cmd.actor,
        reason=cmd.reason,
        plan_id=plan_id,
        period_start=state.period_start if covering and state.period_start else start,
        period_end=end,
    )


PriceLookup = Callable[[str | None, int], PriceQuote | None]


def due_commands(
    state: SubscriptionState, now: int, policy: Policy, prices: PriceLookup | None = None
) -> list[AnyCommand]:
    """Everything the timer should send for this subscription at ``now`` (ids derived, so a
    repeat collapses): sweeps of overdue payments and refunds, and the due lifecycle step.
    A charge (or its reminder) carries the price in force when the new period starts."""
    out: list[AnyCommand] = []
    sub = state.subscription_id
    for rec in overdue_payments(state, now):
        attempt = rec.attempts + 1
        out.append(
            SweepPayment(
                command_id=derived_id(rec.payment_id, f"sweep-{attempt}"),
                subscription_id=sub,
                issued_at=now,
                payment_id=rec.payment_id,
                attempt=attempt,
            )
        )
    for ref in state.refunds.values():
        if ref.status in TERMINAL_PAYMENT_STATUSES or ref.deadline_at is None:
            continue
        if ref.deadline_at <= now:
            attempt = ref.attempts + 1
            out.append(
                SweepRefund(
                    command_id=derived_id(ref.refund_id, f"sweep-{attempt}"),
                    subscription_id=sub,
                    issued_at=now,
                    refund_id=ref.refund_id,
                    attempt=attempt,
                )
            )
    due = next_due(state, policy)
    if due is not None and due[1] <= now:
        kind, at = due
        price = None
        if prices is not None and kind != "lapse" and state.period_end is not None:
            price = prices(state.renew_plan_id, state.period_end)
        out.append(
            SubscriptionDue(
                command_id=derived_id(sub, f"due-{kind}-{at}"),
                subscription_id=sub,
                issued_at=now,
                kind=kind,  # type: ignore[arg-type]
                due_at=at,
                price=price,
            )
        )
    return out


def next_wakeup(state: SubscriptionState, policy: Policy) -> int | None:
    """The earliest time ``due_commands`` would return something (the timer's index)."""
    times = [
        p.deadline_at
        for p in state.payments.values()
        if p.deadline_at is not None and p.status not in TERMINAL_PAYMENT_STATUSES
    ]
    times += [
        r.deadline_at
        for r in state.refunds.values()
        if r.deadline_at is not None and r.status not in TERMINAL_PAYMENT_STATUSES
    ]
    due = next_due(state, policy)
    if due is not None:
        times.append(due[1])
    return min(times) if times else None


# -------------------------------------------------------------------------------- evolve
class VersionGap(BillingError, ValueError):
    """An event that does not follow the state's version: folding it would silently skip
    (or repeat) what happened between, so a rebuild stops instead."""


def evolve(state: SubscriptionState, event: Event) -> SubscriptionState:
    """Fold one event into the state. Total over AnyEvent; used by decide and by rebuilds.
    Events fold in version order, one after another: a gap or a repeat raises VersionGap."""
    if event.version != state.version + 1:
        raise VersionGap(
            f"subscription {state.subscription_id}: event {event.event_id} has version "
            f"{event.version}, the state is at {state.version}"
        )
    replace = msgspec.structs.replace
    payments = state.payments
    new: dict[str, Any] = {"version": event.version}

    def put(rec: PaymentRecord) -> None:
        updated = dict(new.get("payments", payments))
        updated[rec.payment_id] = rec
        new["payments"] = updated

    def credit(credits: dict[str, int], sign: int) -> None:
        """Take (+1) or give back (-1) an upgrade's credit on the payments it came from."""
        for source_id, minor in credits.items():
            source = new.get("payments", payments).get(source_id)
            if source is not None:
                taken = max(source.credited_minor + sign * minor, 0)
                put(replace(source, credited_minor=taken))

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
                kind=req.kind,
            )
        )
        credit(req.credits, +1)
        if state.status in ("none", "inactive", "expired", "canceled"):
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
                held_at=event.occurred_at if event.status == "waiting_for_capture" else None,
            )
        )
    elif isinstance(event, PaymentSettleRequested):
        rec = payments[event.payment_id]
        put(
            replace(
                rec,
                settle_action=event.action,
                settle_attempts=event.attempt,
                settle_deadline=event.deadline_at,
            )
        )
    elif isinstance(event, PaymentOutcomeUnknown):
        rec = payments[event.payment_id]
        if event.escalated:
            put(
                replace(
                    rec,
                    status="unknown",
                    status_reason=event.error,
                    escalated=True,
                    provider_payment_id=event.provider_payment_id or rec.provider_payment_id,
                    deadline_at=None,
                )
            )
        else:
            put(
                replace(
                    rec,
                    status="unknown",
                    status_reason=event.error,
                    deadline_at=None if event.final else rec.deadline_at,
                )
            )
    elif isinstance(event, PaymentSucceeded):
        rec = payments[event.payment_id]
        if rec.status == "canceled":  # reconciliation revived it: its credit is taken again
            credit(rec.request.credits, +1)
        put(
            replace(
                new.get("payments", payments)[rec.payment_id],
                status="succeeded",
                amount=event.amount,  # captured: differs only if an operator accepted it
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
        if rec.status != "canceled":  # a failed upgrade gives its credit back
            credit(rec.request.credits, -1)
        put(
            replace(
                new.get("payments", payments)[rec.payment_id],
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
        for source_id, cut in event.supersedes.items():  # an upgrade's credit sources
            put(replace(new["payments"][source_id], period_end=cut))
        new["status"] = "active"
        new["plan_id"] = event.plan_id
        new["period_end"] = event.period_end
        if not event.extended or state.period_start is None:
            new["period_start"] = event.period_start
        # The next renewal charges what this period was sold at; dunning starts afresh.
        new.update(
            renew_plan_id=rec.plan_id,
            renew_amount=rec.request.plan_amount or rec.amount,
            renew_period_months=rec.period_months,
            dunning_attempt=0,
            next_retry_at=None,
            dunning_stopped=False,
        )
    elif isinstance(event, RenewalFailed):
        new.update(
            dunning_attempt=event.attempt,
            next_retry_at=event.next_retry_at,
            dunning_stopped=event.next_retry_at is None,
        )
    elif isinstance(event, SubscriptionPastDue):
        new["status"] = "past_due"
    elif isinstance(event, SubscriptionExpired):
        new["status"] = "expired"
        new["next_retry_at"] = None
    elif isinstance(event, SubscriptionCanceled):
        new["status"] = "canceled"
        new["period_end"] = event.access_until
        for cut_id, cut in event.supersedes.items():
            put(replace(payments[cut_id], period_end=cut))
    elif isinstance(event, AutoRenewChanged):
        new["auto_renew"] = event.enabled
    elif isinstance(event, RenewalUpcoming):
        new["reminded_for"] = event.period_end
    elif isinstance(event, AccessShortened):
        new["period_end"] = event.period_end
        for moved_id in event.moved:  # the periods paid after the returned one move up
            rec = payments[moved_id]
            if rec.period_start is not None and rec.period_end is not None:
                put(
                    replace(
                        rec,
                        period_start=rec.period_start - event.moved_by_ms,
                        period_end=rec.period_end - event.moved_by_ms,
                    )
                )
    elif isinstance(event, PlanChangeScheduled):
        new.update(
            renew_plan_id=event.plan_id,
            renew_amount=event.amount,
            renew_period_months=event.period_months,
        )
    elif isinstance(event, PeriodAdjusted):
        new.update(
            status="active",
            period_start=event.period_start,
            period_end=event.period_end,
            plan_id=event.plan_id or state.plan_id,
            next_retry_at=None,
            dunning_attempt=0,
            dunning_stopped=False,
        )
    elif isinstance(event, RefundRequested):
        req_r = event.request
        if not req_r.duplicate:
            prec = payments[req_r.payment_id]
            put(replace(prec, refunding_minor=prec.refunding_minor + req_r.amount.amount_minor))
        refunds = dict(state.refunds)
        refunds[req_r.refund_id] = RefundRecord(
            refund_id=req_r.refund_id,
            command_id=req_r.command_id,
            payment_id=req_r.payment_id,
            amount=req_r.amount,
            status="requested",
            request=req_r,
            requested_at=event.occurred_at,
            deadline_at=event.deadline_at,
        )
        new["refunds"] = refunds
    elif isinstance(event, RefundRedriven):
        refunds = dict(state.refunds)
        ref = refunds[event.request.refund_id]
        refunds[ref.refund_id] = replace(ref, attempts=event.attempt, deadline_at=event.deadline_at)
        new["refunds"] = refunds
    elif isinstance(event, RefundOutcomeUnknown):
        refunds = dict(state.refunds)
        ref = refunds[event.refund_id]
        refunds[ref.refund_id] = replace(
            ref,
            status="unknown",
            status_reason=event.error,
            deadline_at=None if event.final else ref.deadline_at,
        )
        new["refunds"] = refunds
    elif isinstance(event, RefundSucceeded | RefundFailed):
        refunds = dict(state.refunds)
        ref = refunds[event.refund_id]
        ok = isinstance(event, RefundSucceeded)
        refunds[ref.refund_id] = replace(
            ref,
            status="succeeded" if ok else "canceled",
            provider_refund_id=event.provider_refund_id or ref.provider_refund_id,
            deadline_at=None,
            status_reason=None if isinstance(event, RefundSucceeded) else event.reason,
        )
        new["refunds"] = refunds
        if not ref.request.duplicate:
            prec = payments[ref.payment_id]
            amt = ref.amount.amount_minor
            was_open = ref.status not in TERMINAL_PAYMENT_STATUSES
            was_ok = ref.status == "succeeded"
            refunded = prec.refunded_minor + (amt if ok else 0) - (amt if was_ok else 0)
            put(
                replace(
                    prec,
                    refunding_minor=prec.refunding_minor - (amt if was_open else 0),
                    refunded_minor=refunded,
                )
            )
            whole = prec.amount.amount_minor
            if (prec.refunded_minor < whole) != (refunded < whole):
                # An upgrade refunded in full gives its credit back to the payment it came
                # from (which may then be refunded too); un-refunded by reconciliation, retaken.
                credit(prec.request.credits, -1 if refunded >= whole else +1)
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
