"""The subscription/payment state machine: pure ``decide`` and ``evolve``.

No Faust, no database, no clock: time comes from the message itself (``issued_at`` /
``observed_at``), so a replay of the same input on the same state yields byte-identical events.
Idempotency lives here, not in the transport:
- a source (command or provider observation) already seen re-emits the events it produced;
- an older source evicted from that window, or a provider status not newer than what we hold,
  applies nothing (transitions are monotonic, succeeded/canceled are terminal).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.errors import BillingError
from schemas.ids import derived_id, event_id_for
from schemas.messages import (
    CARD_CHECK_RELEASED,
    KEY_WINDOW_EXPIRED,
    TERMINAL_PAYMENT_STATUSES,
    AccessShortened,
    AddPaymentMethod,
    AdminActionRejected,
    AdminAdjust,
    AnyCommand,
    AnyEvent,
    AnyProviderEvent,
    AutoRenewChanged,
    ChangePlan,
    Command,
    Event,
    ManagePaymentMethod,
    PaymentCallFailed,
    PaymentCanceled,
    PaymentMethodChanged,
    PaymentMethodRejected,
    PaymentMethodSaved,
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
    TrialStarted,
)
from schemas.money import Money
from schemas.periods import period_end_ms
from schemas.promo import Discount, after_period, applies_to, charge_for
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
HOUR_MS = 3_600_000
WALLET_SIZE = 10  # evolve keeps the newest this many saved methods
VERIFYING = ("trial", "verify")  # payment kinds that are card verifications, never captured

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
    # Replay memory (see ``_remember``): 16 source ids, the events of the last 4 of them,
    # 32 person command ids: about 4 KB whatever the subscription's age.
    recent_sources: int = 16
    recent_events: int = 4
    answered_commands: int = 32  # user/admin command ids remembered beyond ``recent``
    renew_lead_ms: int = DAY_MS  # charge a renewal this long before the period ends
    # A cohort renewing at one period end (a promotion, midnight) is spread over the lead
    # window: each subscription at its own fixed offset (``renewal_at``), up to this long
    # after ``end - renew_lead_ms`` and never later than ``end - renew_margin_ms``.
    renew_spread_ms: int = 12 * HOUR_MS
    renew_margin_ms: int = HOUR_MS
    # Waits after each declined renewal charge before the next try: 4 retries over 14 days.
    dunning_schedule_ms: tuple[int, ...] = (DAY_MS, 3 * DAY_MS, 5 * DAY_MS, 5 * DAY_MS)
    hard_declines: frozenset[str] = HARD_DECLINES
    remind_ms: int = 3 * DAY_MS  # "renewal upcoming" this long before the period ends; 0: off
    # Two-stage payments (capture=false): capture this long after the hold starts (None: an
    # admin decides), and release (cancel) a hold still open this long after it started,
    # before the provider's own expiry (7 days for cards at YooKassa).
    capture_delay_ms: int | None = 0
    hold_ms: int = 6 * DAY_MS
    # Bounded state: a closed payment (and its refunds) is kept this long after the last of
    # its request, success and period end, while it can still be refunded or reconciled;
    # then dropped (its history is in the event log, PostgreSQL and ClickHouse). A refund
    # asked for later is refused (``refund_window_closed``).
    closed_retention_ms: int = 180 * DAY_MS
    # A person cannot grow their own state without limit (abandoned payments, one-kopeck
    # refunds): past these many kept records a new payment or refund is refused
    # (``too_many_payments`` / ``too_many_refunds``). Renewals and duplicate-charge refunds
    # are the system's own and never refused; they are bounded by time.
    max_payments: int = 50
    max_refunds: int = 50
    # A card is verified (a trial's, or one added to the wallet) by a two-stage hold of this
    # many minor units, released as soon as it is held and the method saved: YooKassa's
    # documented way to save a method without taking money (the minimum amount is 1 RUB).
    verify_amount_minor: int = 100
    max_methods: int = WALLET_SIZE  # saved methods kept in the wallet

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
PERSON_COMMANDS = (
    PaySubscription,
    RefundPayment,
    SetAutoRenew,
    RetryPayment,
    ChangePlan,
    AdminAdjust,
    SettlePayment,
    AddPaymentMethod,
    ManagePaymentMethod,
)


def decide(state: SubscriptionState | None, msg: LedgerInput, policy: Policy) -> Decision:
    """Apply one input to one subscription's state."""
    source_id = source_id_of(msg)
    if state is not None and source_id in state.recent:
        return Decision(state, list(state.recent[source_id]), duplicate=True)
    if state is not None and isinstance(msg, PERSON_COMMANDS) and source_id in state.answered:
        return Decision(state, duplicate=True)  # answered long ago: its events are in the log
    if state is None:
        if not isinstance(
            msg,
            PaySubscription | RefundPayment | SetAutoRenew | RetryPayment | ChangePlan,
        ) and not isinstance(msg, AdminAdjust | SettlePayment | AddPaymentMethod):
            # Nothing to apply to: an outcome for a subscription we never billed is the
            # reconciler's to classify, not the ledger's to invent.
            return Decision(None, duplicate=True)
        # A user's command always gets an answer (an event that closes its outbox row), even
        # when it finds no subscription: it is then refused or recorded on an empty state.
        state = SubscriptionState(subscription_id=msg.subscription_id, user_id=msg.user_id)

    # Closed records past the window go before the input is judged: a limit, a refund's
    # window and the horizon then all see the state as it is kept.
    emitter = _Emitter(compact(state, time_of(msg), policy), source_id, time_of(msg))
    if isinstance(msg, PERSON_COMMANDS) and msg.issued_at < emitter.state.horizon:
        _expired_command(emitter, msg)
    elif isinstance(msg, PaySubscription):
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
    elif isinstance(msg, AddPaymentMethod):
        _add_method(emitter, msg, policy)
    elif isinstance(msg, ManagePaymentMethod):
        _manage_method(emitter, msg)
    else:
        _due(emitter, msg, policy)

    if not emitter.events:
        return Decision(state, duplicate=True)
    return Decision(_remember(emitter, msg, policy), emitter.events)


def _remember(em: _Emitter, msg: LedgerInput, policy: Policy) -> SubscriptionState:
    """The replay memory, bounded: the ids of the last ``recent_sources`` sources, with
    their events for the last ``recent_events`` of them (a replay after a crash re-emits
    what may not have reached the log; it only concerns the inputs not yet committed), and
    the ids of the last ``answered_commands`` person commands."""
    recent = dict(em.state.recent)
    recent[em.source_id] = em.events
    while len(recent) > policy.recent_sources:
        del recent[next(iter(recent))]
    for old in list(recent)[: -policy.recent_events or None]:
        if recent[old]:
            recent[old] = []  # still deduplicated by its id; its events are in the log
    answered = em.state.answered
    if isinstance(msg, PERSON_COMMANDS):
        answered = [*answered, em.source_id][-policy.answered_commands :]
    return msgspec.structs.replace(em.state, recent=recent, answered=answered)


# ------------------------------------------------------------------------- bounded state
def closed_at(rec: PaymentRecord) -> int:
    """When a payment stopped mattering to today: the last of its request, its success and
    the end of the period it paid for."""
    return max(rec.requested_at, rec.succeeded_at or 0, rec.period_end or 0)


def past_window(rec: PaymentRecord, now: int, policy: Policy) -> bool:
    """Closed, and closed longer ago than the retention window: neither refunded nor kept."""
    return (
        rec.status in TERMINAL_PAYMENT_STATUSES
        and not rec.escalated
        and closed_at(rec) + policy.closed_retention_ms <= now
    )


def compact(state: SubscriptionState, now: int, policy: Policy) -> SubscriptionState:
    """Drop the closed records past the retention window (a payment only with its refunds:
    an open refund keeps its payment). Pure and deterministic in (state, now), so a replay
    yields the same state; ``horizon`` moves up so a command as old as what was dropped is
    refused rather than applied again."""
    cutoff = now - policy.closed_retention_ms
    if not any(past_window(p, now, policy) for p in state.payments.values()) and not any(
        r.status in TERMINAL_PAYMENT_STATUSES and r.requested_at <= cutoff
        for r in state.refunds.values()
    ):
        return state
    refunds = {
        rid: r
        for rid, r in state.refunds.items()
        if r.status not in TERMINAL_PAYMENT_STATUSES
        or r.requested_at > cutoff
        or (
            r.payment_id in state.payments
            and not past_window(state.payments[r.payment_id], now, policy)
        )
    }
    kept_for = {r.payment_id for r in refunds.values()}
    payments = {
        pid: p
        for pid, p in state.payments.items()
        if pid in kept_for or not past_window(p, now, policy)
    }
    if len(payments) == len(state.payments) and len(refunds) == len(state.refunds):
        return state
    return msgspec.structs.replace(
        state, payments=payments, refunds=refunds, horizon=max(state.horizon, cutoff + 1)
    )


def _expired_command(em: _Emitter, cmd: Command) -> None:
    """A person's command issued before the horizon: it may be one whose records were dropped
    (a replay from long ago), so it is refused, never applied again."""
    reason, detail = "command_expired", f"issued before {em.state.horizon}"
    if isinstance(cmd, PaySubscription | RetryPayment | AddPaymentMethod):
        em.emit(
            PaymentRejected,
            command_id=cmd.command_id,
            payment_id=cmd.payment_id,
            reason=reason,
            detail=detail,
        )
    elif isinstance(cmd, RefundPayment):
        em.emit(
            RefundRejected,
            command_id=cmd.command_id,
            refund_id=cmd.refund_id,
            payment_id=cmd.payment_id,
            reason=reason,
            detail=detail,
        )
    elif isinstance(cmd, ChangePlan):
        em.emit(PlanChangeRejected, command_id=cmd.command_id, reason=reason, detail=detail)
    elif isinstance(cmd, AdminAdjust):
        em.emit(
            AdminActionRejected,
            command_id=cmd.command_id,
            action=cmd.action,
            actor=cmd.actor,
            reason=reason,
        )
    elif isinstance(cmd, SettlePayment):
        em.emit(
            PaymentSettleRejected,
            command_id=cmd.command_id,
            payment_id=cmd.payment_id,
            reason=reason,
        )
    elif isinstance(cmd, ManagePaymentMethod):
        em.emit(
            PaymentMethodRejected,
            command_id=cmd.command_id,
            method_id=cmd.method_id,
            reason=reason,
        )
    # SetAutoRenew: nothing (a replay from that long ago must not flip today's setting).


def _user_payments(state: SubscriptionState) -> int:
    return sum(1 for p in state.payments.values() if p.kind != "renewal")


def _user_refunds(state: SubscriptionState) -> int:
    return sum(1 for r in state.refunds.values() if not r.duplicate)


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
    if _user_payments(state) >= policy.max_payments:
        em.emit(
            PaymentRejected,
            command_id=cmd.command_id,
            payment_id=cmd.payment_id,
            reason="too_many_payments",
            detail=f"{policy.max_payments} kept",
        )
        return
    if cmd.trial_days > 0:
        _request_trial(em, cmd, policy)  # a trial takes no promo (intake refuses both)
        return
    request = PaymentRequest(
        payment_id=cmd.payment_id,
        command_id=cmd.command_id,
        user_id=cmd.user_id,
        plan_id=cmd.plan_id,
        period_months=cmd.period_months,
        return_url=cmd.return_url,
        description=cmd.description,
        save_payment_method=cmd.save_payment_method,
        capture=cmd.capture,
        price_version=cmd.price_version,
        customer=cmd.customer or state.customer,
        **_discounted(cmd.amount, cmd.plan_id, cmd.promo),
    )
    em.emit(
        PaymentRequested,
        request=request,
        deadline_at=cmd.issued_at + policy.payment_deadline_ms,
    )


def _discounted(price: Money, plan_id: str, promo: Discount | None) -> dict[str, Any]:
    """A request's amounts at ``price`` with a promo discount if it applies to ``plan_id``:
    the charge (``schemas.promo.charge_for``, the quote's function), the full price beside it
    and the discount, so the books can tell the two apart (issue 16)."""
    if not applies_to(promo, plan_id):
        return {"amount": price}
    return {"amount": charge_for(price, promo), "plan_amount": price, "promo": promo}


def _unused(state: SubscriptionState, promo: Discount | None) -> Discount | None:
    """``promo`` if no payment of this subscription has been charged with its code."""
    if promo is None:
        return None
    used = any(
        p.promo is not None and p.promo.code == promo.code and p.status == "succeeded"
        for p in state.payments.values()
    )
    return None if used else promo


# ------------------------------------------------------------------ trials and the wallet
def wallet(state: SubscriptionState) -> list[str]:
    """The saved method ids, oldest first; a state from before the wallet has only its
    ``payment_method_id``."""
    pm = state.payment_method_id
    if pm is None or pm in state.payment_methods:
        return state.payment_methods
    return [*state.payment_methods, pm]


def trial_refusal(state: SubscriptionState) -> str | None:
    """Why this user cannot start a free trial (None: they can). One trial per user, ever:
    the subscription id is derived from the user id and its state is never dropped, so the
    mark kept here (``trial_end``) is seen by every later request, on any plan, after a
    refund too. Only a first-time subscriber gets one: anyone who ever had access (paid or
    granted) pays."""
    if state.trial_end is not None:
        return "trial_already_used"
    if state.period_end is not None:
        return "not_first_subscription"
    return None


def _request_trial(em: _Emitter, cmd: PaySubscription, policy: Policy) -> None:
    """A free trial starts with a card verification: a hold of ``verify_amount_minor`` the
    user confirms, saved for the first charge, released at once (``_verified``)."""
    refusal = trial_refusal(em.state)
    if refusal is not None:
        em.emit(
            PaymentRejected,
            command_id=cmd.command_id,
            payment_id=cmd.payment_id,
            reason=refusal,
            detail=str(em.state.trial_end or em.state.period_end),
        )
        return
    em.emit(
        PaymentRequested,
        request=PaymentRequest(
            payment_id=cmd.payment_id,
            command_id=cmd.command_id,
            user_id=cmd.user_id,
            plan_id=cmd.plan_id,
            amount=Money(policy.verify_amount_minor, cmd.amount.currency),
            period_months=cmd.period_months,
            return_url=cmd.return_url,
            description=f"Card check, trial: {cmd.description}"[:128],
            save_payment_method=True,
            capture=False,
            price_version=cmd.price_version,
            kind="trial",
            customer=cmd.customer or em.state.customer,
            plan_amount=cmd.amount,
            trial_days=cmd.trial_days,
        ),
        deadline_at=cmd.issued_at + policy.payment_deadline_ms,
    )


def _add_method(em: _Emitter, cmd: AddPaymentMethod, policy: Policy) -> None:
    """A card added to the wallet: the same verification hold, released once saved."""
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

    busy = _in_flight(state)
    if busy is not None:
        return reject("payment_in_progress", busy.payment_id)
    if len(wallet(state)) >= policy.max_methods:
        return reject("too_many_payment_methods", f"{policy.max_methods} saved")
    if _user_payments(state) >= policy.max_payments:
        return reject("too_many_payments", f"{policy.max_payments} kept")
    currency = state.renew_amount.currency if state.renew_amount is not None else cmd.currency
    em.emit(
        PaymentRequested,
        request=PaymentRequest(
            payment_id=cmd.payment_id,
            command_id=cmd.command_id,
            user_id=cmd.user_id,
            plan_id=state.renew_plan_id or state.plan_id or "",
            amount=Money(policy.verify_amount_minor, currency),
            period_months=0,
            return_url=cmd.return_url,
            description="Card check (released at once)",
            save_payment_method=True,
            capture=False,
            kind="verify",
            customer=state.customer,
        ),
        deadline_at=cmd.issued_at + policy.payment_deadline_ms,
    )


def _manage_method(em: _Emitter, cmd: ManagePaymentMethod) -> None:
    """Make a saved method the default, or delete it. A method an open payment charges is
    not deleted (a re-drive re-sends that payment's create: it must stay the same request);
    deleting the default makes the newest other one the default, or none."""
    state = em.state
    methods = wallet(state)

    def reject(reason: str) -> None:
        em.emit(
            PaymentMethodRejected,
            command_id=cmd.command_id,
            method_id=cmd.method_id,
            reason=reason,
        )

    if cmd.method_id not in methods:
        return reject("payment_method_not_found")
    if cmd.action == "default":
        em.emit(
            PaymentMethodChanged,
            command_id=cmd.command_id,
            method_id=cmd.method_id,
            action="default",
            actor=cmd.actor,
            default_method=cmd.method_id,
        )
        return
    busy = _in_flight(state)
    charging = busy.request.payment_method_id if busy and busy.request else None
    if charging == cmd.method_id:
        return reject("payment_in_progress")
    rest = [m for m in methods if m != cmd.method_id]
    default = state.payment_method_id
    if default == cmd.method_id or default is None:
        default = rest[-1] if rest else None
    em.emit(
        PaymentMethodChanged,
        command_id=cmd.command_id,
        method_id=cmd.method_id,
        action="delete",
        actor=cmd.actor,
        default_method=default,
    )


def new_method(rec: PaymentRecord, obs: PaymentObserved) -> str | None:
    """The method a payment saved (None: it saved none, or charged one already saved: a
    renewal's autopayment names its method again, which must not bring back one the user
    deleted or made not the default meanwhile)."""
    method = obs.payment_method_id
    if not obs.payment_method_saved or method is None:
        return None
    if rec.kind == "renewal" or (rec.request is not None and rec.request.payment_method_id):
        return None
    return method


def _save_method(
    em: _Emitter, rec: PaymentRecord, obs: PaymentObserved, method: str | None
) -> None:
    """Add a newly saved method to the wallet, as the default."""
    if method is None:
        return
    if method not in em.state.payment_methods or em.state.payment_method_id != method:
        em.emit(
            PaymentMethodSaved,
            method_id=method,
            payment_id=rec.payment_id,
            default=True,
            details=obs.payment_method,
        )


def _verified(em: _Emitter, rec: PaymentRecord, obs: PaymentObserved, policy: Policy) -> None:
    """A verification hold is held: the card is saved (wallet), a trial starts if the user
    may still have one, and the hold is released at once. Nothing is ever captured."""
    method = new_method(rec, obs)
    _save_method(em, rec, obs, method)
    request = rec.request
    if (
        method is not None
        and rec.kind == "trial"
        and request is not None
        and trial_refusal(em.state) is None
    ):
        start = obs.observed_at
        em.emit(
            TrialStarted,
            payment_id=rec.payment_id,
            command_id=rec.command_id,
            plan_id=rec.plan_id,
            period_start=start,
            period_end=start + request.trial_days * DAY_MS,
            amount=rec.plan_amount or rec.amount,
            payment_method_id=method,
        )
    held = em.state.payments[rec.payment_id]
    if held.settle_action is None and held.provider_payment_id is not None:
        _request_settle(
            em,
            held,
            "cancel",
            rec.command_id,
            "system",
            "card_verified" if method is not None else "card_not_saved",
            policy,
        )


def _sweep(em: _Emitter, cmd: SweepPayment, policy: Policy) -> None:
    rec = em.state.payments.get(cmd.payment_id)
    if (
        rec is None
        or rec.request is None
        or rec.status in TERMINAL_PAYMENT_STATUSES
        or cmd.attempt != rec.attempts + 1
    ):
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
        if obs.status == "waiting_for_capture" and rec.kind in VERIFYING:
            _verified(em, rec, obs, policy)
    elif obs.status == "succeeded":
        _succeed(em, rec, obs)
    else:
        reason = obs.cancellation_reason or "canceled"
        if rec.kind in VERIFYING and rec.settle_action == "cancel":
            reason = CARD_CHECK_RELEASED  # our own release: not a failed payment to anyone
        em.emit(
            PaymentCanceled,
            payment_id=rec.payment_id,
            command_id=rec.command_id,
            provider_payment_id=obs.provider_payment_id,
            reason=reason,
            party=obs.cancellation_party,
        )
        _after_renewal_failure(em, rec, reason, policy)


def _succeed(em: _Emitter, rec: PaymentRecord, obs: PaymentObserved) -> None:
    """The payment succeeded: record it and grant its period. Stacking: a period bought
    while one is running starts where that one ends; an upgrade replaces the running period
    (its unused part was credited in the price)."""
    # A card check saved its method when held (``_verified``): never again here, where it
    # could bring back one deleted since.
    method = new_method(rec, obs) if rec.kind not in VERIFYING else None
    em.emit(
        PaymentSucceeded,
        payment_id=rec.payment_id,
        command_id=rec.command_id,
        provider_payment_id=obs.provider_payment_id,
        amount=obs.amount,
        payment_method_id=method,
        payment_method=obs.payment_method if method is not None else None,
        receipt_registration=obs.receipt_registration,
    )
    if rec.kind in VERIFYING:
        # A verification hold captured after all (never asked by us): the money is kept on
        # the record, refundable, and grants nothing; the card is saved.
        return
    state = em.state
    extended = (
        rec.kind != "upgrade"
        and state.period_end is not None
        and state.period_end > obs.observed_at
        and state.status in ("active", "past_due")
    )
    start = state.period_end if extended and state.period_end is not None else obs.observed_at
    supersedes: dict[str, int] = {}
    for source_id in rec.credits:
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
        # A promo lasts while the periods it pays for follow one another: one charge fewer
        # now; a period paid without it (another plan, a new purchase) ends it.
        promo=after_period(rec.promo) if rec.promo is not None else None,
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
    _renewal_failed(em, rec.payment_id, reason, policy)


def _renewal_failed(em: _Emitter, payment_id: str, reason: str, policy: Policy) -> None:
    state = em.state
    attempt = state.dunning_attempt + 1
    hard = reason in policy.hard_declines or reason.startswith("provider_rejected")
    exhausted = attempt > len(policy.dunning_schedule_ms)
    next_retry = None if hard or exhausted else em.now + policy.dunning_schedule_ms[attempt - 1]
    em.emit(
        RenewalFailed,
        payment_id=payment_id,
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
        if state.horizon:  # the API found it in the read model: dropped past the window
            return reject("refund_window_closed", f"not kept: closed before {state.horizon}")
        return reject("payment_not_found")
    dup = cmd.duplicate_of_provider_id
    if dup is not None:
        # Never the charge the ledger recorded: that one is the payment's, not a duplicate.
        if dup == rec.provider_payment_id or cmd.amount is None:
            return reject("not_a_duplicate", dup)
        if any(r.provider_payment_id == dup for r in state.refunds.values()):
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
                customer=cmd.customer or state.customer,
                plan_id=rec.plan_id,
                period_months=rec.period_months,
            ),
            deadline_at=cmd.issued_at + policy.payment_deadline_ms,
        )
        return
    if rec.status != "succeeded" or rec.provider_payment_id is None:
        return reject("payment_not_refundable", f"payment is {rec.status}")
    if past_window(rec, cmd.issued_at, policy):
        days = policy.closed_retention_ms // DAY_MS
        return reject("refund_window_closed", f"closed at {closed_at(rec)}, kept {days} days")
    if _user_refunds(state) >= policy.max_refunds:
        return reject("too_many_refunds", f"{policy.max_refunds} kept")
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
            customer=cmd.customer or state.customer,
            plan_id=rec.plan_id,
            period_months=rec.period_months,
        ),
        deadline_at=cmd.issued_at + policy.payment_deadline_ms,
    )


def _sweep_refund(em: _Emitter, cmd: SweepRefund, policy: Policy) -> None:
    ref = em.state.refunds.get(cmd.refund_id)
    if (
        ref is None
        or ref.request is None
        or ref.status in TERMINAL_PAYMENT_STATUSES
        or cmd.attempt != ref.attempts + 1
    ):
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
    fully = not ref.duplicate and pay.kept_minor - ref.amount.amount_minor <= 0
    em.emit(
        RefundSucceeded,
        refund_id=ref.refund_id,
        command_id=ref.command_id,
        payment_id=ref.payment_id,
        provider_refund_id=obs.provider_refund_id,
        amount=ref.amount,
        fully_refunded=fully,
        receipt_registration=obs.receipt_registration,
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
    if rec.kind in VERIFYING:
        return ("release", rec.held_at)  # a card check is never captured
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
    busy = _in_flight(state)
    in_flight = busy is not None
    # No saved method is no reason to skip the charge: at its time the renewal fails
    # (``no_payment_method``), the user is told, and dunning retries whatever the wallet
    # then holds.
    can_charge = state.auto_renew and state.renew_amount is not None and not state.dunning_stopped
    first_charge_pending = (
        can_charge and state.dunning_attempt == 0 and not _renewal_requested(state)
    )
    candidates: list[tuple[str, int]] = []
    if state.status == "active":
        lapse = end  # access must never outlive its payment
        if on_trial(state) and busy is not None and busy.kind == "renewal":
            # The first charge is made at the trial's end: its outcome is awaited this long
            # before access lapses (no revoke and grant again for a charge that succeeds).
            lapse = end + policy.renew_margin_ms
        candidates.append(("lapse", lapse))
        if first_charge_pending and policy.remind_ms > 0 and state.reminded_for != end:
            candidates.append(("remind", end - policy.remind_ms))
    if not in_flight and first_charge_pending:
        # A trial's first charge waits for the trial's end: cancelled before it, never charged.
        at = end if on_trial(state) else renewal_at(state.subscription_id, end, policy)
        candidates.append(("renew", at))
    elif not in_flight and can_charge and state.next_retry_at is not None:
        candidates.append(("retry", state.next_retry_at))
    elif state.status == "past_due" and not in_flight:
        candidates.append(("lapse", end))  # nothing left to try: it expires
    if held is not None:
        candidates.append(held)
    if not candidates:
        return None
    return min(candidates, key=lambda c: (c[1], _DUE_ORDER[c[0]]))


def renewal_at(subscription_id: str, period_end: int, policy: Policy) -> int:
    """When the renewal for the period ending at ``period_end`` is charged: the lead before
    it, plus an offset fixed per subscription (a hash of its id, the same in every process
    and on every replay) within the spread, so that subscriptions sharing a period end do
    not all fire in one sweeper tick. Never later than ``period_end - renew_margin_ms``
    (time left for the outcome and a re-drive before access would lapse); no spread when
    the lead leaves no room for it."""
    earliest = period_end - policy.renew_lead_ms
    window = min(policy.renew_spread_ms, policy.renew_lead_ms - policy.renew_margin_ms)
    if window <= 0:
        return earliest
    digest = hashlib.blake2b(subscription_id.encode(), digest_size=8).digest()
    return earliest + int.from_bytes(digest, "big") % (window + 1)


def on_trial(state: SubscriptionState) -> bool:
    """The current period is the free trial (its end is the trial's)."""
    return state.trial_end is not None and state.period_end == state.trial_end


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
            amount=_discounted(price.amount, price.plan_id, state.promo)["amount"],
        )
        return
    if cmd.kind in ("renew", "retry"):
        payment_id = renewal_payment_id(state, state.dunning_attempt)
        if state.payment_method_id is None:
            _renewal_failed(em, "", "no_payment_method", policy)
            return
        em.emit(
            PaymentRequested,
            request=PaymentRequest(
                payment_id=payment_id,
                command_id=cmd.command_id,
                user_id=state.user_id,
                plan_id=price.plan_id,
                period_months=price.period_months,
                price_version=price.price_version,
                return_url="",
                description=f"Renewal: {price.plan_id}",
                **_discounted(price.amount, price.plan_id, state.promo),
                save_payment_method=False,
                capture=True,
                payment_method_id=state.payment_method_id,
                kind="renewal",
                customer=state.customer,
            ),
            deadline_at=cmd.issued_at + policy.payment_deadline_ms,
        )
        return
    period_end = state.period_end or cmd.due_at
    if not state.auto_renew:
        em.emit(SubscriptionExpired, reason="auto_renew_off", period_end=period_end)
    elif state.renew_amount is None:
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
    if orig.kind in VERIFYING:
        return reject("payment_not_retryable", "a card check: start again")
    busy = _in_flight(state)
    if busy is not None:
        return reject("payment_in_progress", busy.payment_id)
    if _user_payments(state) >= policy.max_payments:
        return reject("too_many_payments", f"{policy.max_payments} kept")
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
            period_months=cmd.price.period_months,
            price_version=cmd.price.price_version,
            return_url=cmd.return_url,
            description=cmd.description,
            kind="retry",
            customer=em.state.customer,
            # Paying again for what a canceled payment was for: with the discount it had (a
            # declined first charge does not cost the user the code they redeemed), unless
            # that redemption has paid for a period since.
            **_discounted(cmd.price.amount, cmd.price.plan_id, _unused(state, orig.promo)),
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
    elif rec.kind in VERIFYING and cmd.action == "capture":
        problem = "a card check is never captured"
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
            if rec.plan_amount is not None:
                paid = min(paid, rec.plan_amount.amount_minor)
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
            if r.status not in TERMINAL_PAYMENT_STATUSES and not r.duplicate
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
    if _user_payments(state) >= policy.max_payments:
        return reject("too_many_payments", f"{policy.max_payments} kept")
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
            customer=state.customer,
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
                plan_amount=req.plan_amount,
                credits=req.credits,
                promo=req.promo,
            )
        )
        credit(req.credits, +1)
        if req.customer is not None:  # the receipt contact renewals and refunds send
            new["customer"] = req.customer
        if req.kind != "verify" and state.status in ("none", "inactive", "expired", "canceled"):
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
            credit(rec.credits, +1)
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
                request=None,  # closed: what refunds and credits need is on the record
            )
        )
        if event.payment_method_id is not None:  # saved by this payment: the wallet's default
            kept = [m for m in wallet(state) if m != event.payment_method_id]
            new["payment_methods"] = [*kept, event.payment_method_id][-WALLET_SIZE:]
            new["payment_method_id"] = event.payment_method_id
    elif isinstance(event, PaymentCanceled):
        rec = payments[event.payment_id]
        if rec.status != "canceled":  # a failed upgrade gives its credit back
            credit(rec.credits, -1)
        put(
            replace(
                new.get("payments", payments)[rec.payment_id],
                status="canceled",
                provider_payment_id=event.provider_payment_id or rec.provider_payment_id,
                status_reason=event.reason,
                deadline_at=None,
                confirmation_url=None,
                request=None,
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
            renew_amount=rec.plan_amount or rec.amount,
            renew_period_months=rec.period_months,
            dunning_attempt=0,
            next_retry_at=None,
            dunning_stopped=False,
            promo=event.promo,
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
            provider_payment_id=req_r.provider_payment_id,
            duplicate=req_r.duplicate,
        )
        new["refunds"] = refunds
        if req_r.customer is not None:
            new["customer"] = req_r.customer
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
            request=None,
        )
        new["refunds"] = refunds
        if not ref.duplicate:
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
                credit(prec.credits, -1 if refunded >= whole else +1)
    elif isinstance(event, TrialStarted):
        rec = payments[event.payment_id]
        new.update(
            status="active",
            plan_id=event.plan_id,
            period_start=event.period_start,
            period_end=event.period_end,
            trial_end=event.period_end,
            payment_method_id=event.payment_method_id,
            renew_plan_id=event.plan_id,
            renew_amount=event.amount,
            renew_period_months=rec.period_months,
            dunning_attempt=0,
            next_retry_at=None,
            dunning_stopped=False,
        )
    elif isinstance(event, PaymentMethodSaved):
        kept = [m for m in wallet(state) if m != event.method_id]
        new["payment_methods"] = [*kept, event.method_id][-WALLET_SIZE:]
        if event.default or state.payment_method_id is None:
            new["payment_method_id"] = event.method_id
    elif isinstance(event, PaymentMethodChanged):
        if event.action == "delete":
            new["payment_methods"] = [m for m in wallet(state) if m != event.method_id]
        new["payment_method_id"] = event.default_method
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
