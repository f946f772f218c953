"""State records of the ledger's table (one per subscription). Stored as msgspec JSON in the
Faust table and its changelog; the reconciler reads them too."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.codec import JsonCodec
from schemas.messages import AnyEvent, PaymentRequest, PaymentStatus, RefundRequest
from schemas.money import Money

SubscriptionStatus = Literal[
    "none", "pending", "inactive", "active", "past_due", "expired", "canceled"
]


class PaymentRecord(msgspec.Struct, frozen=True, kw_only=True):
    payment_id: str
    command_id: str
    plan_id: str
    amount: Money
    period_months: int
    status: PaymentStatus
    request: PaymentRequest
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


class RefundRecord(msgspec.Struct, frozen=True, kw_only=True):
    refund_id: str
    command_id: str
    payment_id: str
    amount: Money
    status: RefundStatus
    request: RefundRequest
    requested_at: int
    deadline_at: int | None
    attempts: int = 0
    provider_refund_id: str | None = None
    status_reason: str | None = None


class SubscriptionState(msgspec.Struct, frozen=True, kw_only=True):
    subscription_id: str
    user_id: str
    status: SubscriptionStatus = "none"
    plan_id: str | None = None
    period_start: int | None = None
    period_end: int | None = None
    version: int = 0
    payment_method_id: str | None = None
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


_codec: JsonCodec[SubscriptionState] = JsonCodec(SubscriptionState)
encode_state = _codec.encode
decode_state = _codec.decode
