"""State records of the ledger's table (one per subscription). Stored as msgspec JSON in the
Faust table and its changelog; the reconciler reads them too.

Bounded (issue 13): a record keeps its full request only while it is open (a re-drive sends
it again); a closed record keeps what refunds, credits and reconciliation read, and the
machine drops it once it is past the retention window (``Policy.closed_retention_ms``). Fields
at their defaults are not written. ``decode_state`` also reads states written before that
(every record with its request): ``upgrade_state`` moves them to the current shape."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.codec import JsonCodec
from schemas.messages import (
    TERMINAL_PAYMENT_STATUSES,
    AnyEvent,
    PaymentRequest,
    PaymentStatus,
    ReceiptCustomer,
    RefundRequest,
)
from schemas.money import Money
from schemas.promo import Discount

SubscriptionStatus = Literal[
    "none", "pending", "inactive", "active", "past_due", "expired", "canceled"
]


class PaymentRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    payment_id: str
    command_id: str
    plan_id: str
    amount: Money
    period_months: int
    status: PaymentStatus
    requested_at: int
    deadline_at: int | None
    attempts: int = 0
    provider_payment_id: str | None = None
    confirmation_url: str | None = None
    status_reason: str | None = None
    succeeded_at: int | None = None
    period_start: int | None = None
    period_end: int | None = None
    kind: str = "purchase"  # purchase | renewal | upgrade | retry
    refunded_minor: int = 0  # succeeded refunds
    refunding_minor: int = 0  # refunds in flight (count against the refundable amount)
    held_at: int | None = None  # two-stage: when it became waiting_for_capture
    settle_action: str | None = None  # "capture" | "cancel" once asked of the provider
    settle_attempts: int = 0
    settle_deadline: int | None = None
    # Credit an upgrade took from this payment (the unused part of its period): money the
    # user has already been given back in kind, so it is no longer refundable.
    credited_minor: int = 0
    # The provider's answer did not match the request (amount or currency): nothing granted,
    # kept open (status unknown, no deadline) for reconciliation and an operator.
    escalated: bool = False
    # From the request, kept after it is dropped: an upgrade's full price (what its renewal
    # charges) and the credit it took from earlier payments (given back if it is refunded).
    plan_amount: Money | None = None
    credits: dict[str, int] = {}
    # From the request: the promo discount this charge applied (issue 16), kept after it
    # closes so its period counts the discount down.
    promo: Discount | None = None
    # The provider request, while the payment is open (None once succeeded or canceled).
    request: PaymentRequest | None = None

    @property
    def refundable_minor(self) -> int:
        if self.status != "succeeded":
            return 0
        return (
            self.amount.amount_minor
            - self.refunded_minor
            - self.refunding_minor
            - self.credited_minor
        )

    @property
    def kept_minor(self) -> int:
        """Captured money still paying for the period: not refunded, not credited."""
        if self.status != "succeeded":
            return 0
        return self.amount.amount_minor - self.refunded_minor - self.credited_minor


RefundStatus = Literal["requested", "unknown", "pending", "succeeded", "canceled"]


class RefundRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    refund_id: str
    command_id: str
    payment_id: str
    amount: Money
    status: RefundStatus
    requested_at: int
    deadline_at: int | None
    attempts: int = 0
    provider_refund_id: str | None = None
    status_reason: str | None = None
    # From the request: the charge refunded, and whether it is a duplicate charge (then our
    # payment's books are untouched).
    provider_payment_id: str | None = None
    duplicate: bool = False
    # The provider request, while the refund is open (None once succeeded or canceled).
    request: RefundRequest | None = None


class SubscriptionState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    subscription_id: str
    user_id: str
    status: SubscriptionStatus = "none"
    plan_id: str | None = None
    period_start: int | None = None
    period_end: int | None = None
    version: int = 0
    payment_method_id: str | None = None  # the method renewals charge (the wallet's default)
    # The wallet: the saved method ids, oldest first (bounded by Policy.max_methods). A state
    # written before the wallet has only ``payment_method_id``, which counts as in it.
    payment_methods: list[str] = []
    # The end of the free trial this user had (None: never had one). Never cleared, never
    # compacted: one trial per user, ever.
    trial_end: int | None = None
    # A promo code's discount still to apply to renewals (schemas/promo.py: its plan, what it
    # takes off, the charges left; None: none, or used up).
    promo: Discount | None = None
    auto_renew: bool = True
    # What a renewal charges: the plan and price the current period was sold at.
    renew_plan_id: str | None = None
    renew_amount: Money | None = None
    renew_period_months: int = 1
    dunning_attempt: int = 0  # renewal charges declined for the current period
    next_retry_at: int | None = None
    dunning_stopped: bool = False  # a hard decline or the schedule is exhausted
    reminded_for: int | None = None  # the period end whose renewal reminder went out
    payments: dict[str, PaymentRecord] = {}
    refunds: dict[str, RefundRecord] = {}
    # Source message id -> the events it produced, for the last few sources: a replayed
    # command or provider event re-emits exactly these (same ids, same versions).
    recent: dict[str, list[AnyEvent]] = {}
    # Ids of the last user and admin commands answered (bounded): a command redelivered
    # after it left ``recent`` (the relay, a replay) is recognised and applies nothing.
    answered: list[str] = []
    # Closed records requested before this time (epoch ms) may have been dropped (retention):
    # a person's command issued before it is refused as expired, never applied again.
    horizon: int = 0
    # The 54-FZ receipt contact last given (issue 16): renewals and refunds send it.
    customer: ReceiptCustomer | None = None


def upgrade_state(state: SubscriptionState) -> SubscriptionState:
    """A state written before records were reduced: each record takes its credits and full
    price from its request, and a closed one drops the request. Unchanged (the same object)
    when there is nothing to move, which is every state written by the current code."""
    payments = state.payments
    refunds = state.refunds
    for pid, rec in state.payments.items():
        req = rec.request
        if req is None:
            continue
        closed = rec.status in TERMINAL_PAYMENT_STATUSES
        if closed or rec.credits != req.credits or rec.plan_amount != req.plan_amount:
            if payments is state.payments:
                payments = dict(payments)
            payments[pid] = msgspec.structs.replace(
                rec,
                credits=req.credits,
                plan_amount=req.plan_amount,
                request=None if closed else req,
            )
    for rid, ref in state.refunds.items():
        rreq = ref.request
        if rreq is None:
            continue
        paid = payments.get(rreq.payment_id)
        if not rreq.plan_id and paid is not None and paid.plan_id:
            # Written before receipts (issue 16): what the refund's receipt describes.
            rreq = msgspec.structs.replace(
                rreq, plan_id=paid.plan_id, period_months=paid.period_months
            )
            ref = msgspec.structs.replace(ref, request=rreq)
            if refunds is state.refunds:
                refunds = dict(refunds)
            refunds[rid] = ref
        closed = ref.status in TERMINAL_PAYMENT_STATUSES
        if closed or ref.provider_payment_id != rreq.provider_payment_id:
            if refunds is state.refunds:
                refunds = dict(refunds)
            refunds[rid] = msgspec.structs.replace(
                ref,
                provider_payment_id=rreq.provider_payment_id,
                duplicate=rreq.duplicate,
                request=None if closed else rreq,
            )
    methods = state.payment_methods
    if state.payment_method_id is not None and not methods:
        methods = [state.payment_method_id]  # written before the wallet: its one method
    if payments is state.payments and refunds is state.refunds and methods is state.payment_methods:
        return state
    return msgspec.structs.replace(
        state, payments=payments, refunds=refunds, payment_methods=methods
    )


_codec: JsonCodec[SubscriptionState] = JsonCodec(SubscriptionState)
encode_state = _codec.encode


def decode_state(data: bytes) -> SubscriptionState:
    """Decode a stored state, of the current shape or an older one (see ``upgrade_state``)."""
    return upgrade_state(_codec.decode(data))
