"""State records of the ledger's table (one per subscription). Stored as msgspec JSON in the
Faust table and its changelog; the reconciler reads them too."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.messages import AnyEvent, PaymentRequest, PaymentStatus
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


class SubscriptionState(msgspec.Struct, frozen=True, kw_only=True):
    subscription_id: str
    user_id: str
    status: SubscriptionStatus = "none"
    plan_id: str | None = None
    period_start: int | None = None
    period_end: int | None = None
    version: int = 0
    payment_method_id: str | None = None
    payments: dict[str, PaymentRecord] = {}
    # Source message id -> the events it produced, for the last few sources: a replayed
    # command or provider event re-emits exactly these (same ids, same versions).
    recent: dict[str, list[AnyEvent]] = {}


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SubscriptionState)


def encode_state(state: SubscriptionState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> SubscriptionState:
    return _decoder.decode(data)  # type: ignore[no-any-return]
