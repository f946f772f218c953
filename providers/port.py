"""The payment-provider port. The gateway agent and the webhook endpoint depend on this
Protocol only; the YooKassa adapter (official SDK) and test fakes implement it.

Errors follow stripe-python's discipline: one root, and a flag that says whether the outcome
is unknown (retry with the same Idempotence-Key, or re-read) or definitely failed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import msgspec

from schemas.errors import BillingError
from schemas.ids import observation_id_for
from schemas.messages import MethodDetails, PaymentObserved, PaymentRequest
from schemas.money import Money
from schemas.receipts import Receipt

PROVIDER_STATUSES = ("pending", "waiting_for_capture", "succeeded", "canceled")


class ProviderPayment(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a provider payment the billing engine uses (no card data)."""

    provider_payment_id: str
    status: str  # pending | waiting_for_capture | succeeded | canceled
    amount: Money
    paid: bool
    metadata: dict[str, str]
    confirmation_url: str | None = None
    cancellation_party: str | None = None
    cancellation_reason: str | None = None
    payment_method_id: str | None = None
    payment_method_saved: bool = False
    # A saved method's displayable details (first6/last4/expiry/type/issuer; never a number).
    payment_method: MethodDetails | None = None
    created_at: str | None = None
    receipt_registration: str | None = None  # 54-FZ: pending | succeeded | canceled

    @property
    def payment_id(self) -> str | None:
        """Our payment id, carried in the provider object's metadata."""
        return self.metadata.get("payment_id")

    @property
    def subscription_id(self) -> str | None:
        return self.metadata.get("subscription_id")


class ProviderRefund(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a provider refund the engine uses."""

    provider_refund_id: str
    provider_payment_id: str
    status: str  # pending | succeeded | canceled
    amount: Money
    created_at: str | None = None
    cancellation_reason: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    receipt_registration: str | None = None


class ProviderError(BillingError):
    """Root of provider failures (a ``BillingError``). ``unknown`` means the operation may or
    may not have happened: never create a new operation, retry with the same key or re-read."""

    code: str = "provider_error"
    unknown: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ProviderUnavailable(ProviderError):
    """Timeout, connection failure, 5xx, 202 processing, 429: outcome unknown."""

    code = "provider_unavailable"
    unknown = True


class ProviderThrottled(ProviderUnavailable):
    """A 429: the shop is over the provider's rate limit. Unknown like any unavailability (the
    same key is retried), and ``retry_after_s`` is how long the provider asked us to wait
    (None when it did not say): every call to the shop pauses, not only this one."""

    code = "too_many_requests"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class ProviderRejected(ProviderError):
    """A definite 4xx: the request was refused, nothing was created."""

    code = "provider_rejected"


class ProviderNotFound(ProviderRejected):
    code = "not_found"


class PaymentProvider(Protocol):
    async def create_payment(
        self, request: PaymentRequest, subscription_id: str, *, receipt: Receipt | None = None
    ) -> ProviderPayment:
        """Create (or, under the same Idempotence-Key = payment_id, re-obtain) the payment;
        with its 54-FZ ``receipt`` when the shop sends receipts (built from the request, so a
        retry sends the same body)."""
        ...

    async def get_payment(self, provider_payment_id: str) -> ProviderPayment:
        """Re-read a payment; the only way a webhook's claim is trusted."""
        ...

    async def create_refund(
        self,
        provider_payment_id: str,
        amount: Money,
        *,
        refund_id: str,
        description: str = "",
        metadata: dict[str, str] | None = None,
        receipt: Receipt | None = None,
    ) -> ProviderRefund:
        """Refund (part of) a payment under Idempotence-Key = refund_id (with its receipt)."""
        ...

    async def get_refund(self, provider_refund_id: str) -> ProviderRefund: ...

    async def capture_payment(
        self, provider_payment_id: str, *, key: str, amount: Money | None = None
    ) -> ProviderPayment:
        """Capture a held (waiting_for_capture) payment."""
        ...

    async def cancel_payment(self, provider_payment_id: str, *, key: str) -> ProviderPayment:
        """Release a held payment."""
        ...

    async def close(self) -> None: ...


class SearchingProvider(PaymentProvider, Protocol):
    """What the gateway needs beyond the port: finding an object by our id without creating
    it, for a request past the provider's key window (ARCHITECTURE.md invariant 7). A
    separate Protocol so that fakes serving only webhooks need not implement it."""

    async def find_payment(
        self, payment_id: str, created_gte: datetime, created_lt: datetime
    ) -> ProviderPayment | None:
        """The provider payment whose metadata carries our ``payment_id``, created in
        [gte, lt); the first created if several; None if there is none."""
        ...

    async def find_refund(
        self,
        refund_id: str,
        provider_payment_id: str,
        created_gte: datetime,
        created_lt: datetime,
    ) -> ProviderRefund | None:
        """The refund of ``provider_payment_id`` whose metadata carries our ``refund_id``."""
        ...


def normalise(payment: ProviderPayment, *, source: str, observed_at: int) -> PaymentObserved:
    """The provider's view of a payment as a provider event for the ledger.

    Our ids come from the metadata we sent at create; a payment without them is not ours.
    The observation id depends only on (provider id, status), so the same outcome seen by the
    gateway, a webhook, a poll and reconciliation deduplicates to one.
    """
    if payment.status not in PROVIDER_STATUSES:
        raise ValueError(f"unexpected provider status {payment.status!r}")
    if source not in ("gateway", "webhook", "poll", "reconciliation"):
        raise ValueError(f"unknown observation source {source!r}")
    payment_id, subscription_id = payment.payment_id, payment.subscription_id
    if not payment_id or not subscription_id:
        raise ValueError(f"payment {payment.provider_payment_id} carries no billing metadata")
    return PaymentObserved(
        observation_id=observation_id_for(payment.provider_payment_id, payment.status),
        subscription_id=subscription_id,
        observed_at=observed_at,
        source=source,  # type: ignore[arg-type]
        payment_id=payment_id,
        provider_payment_id=payment.provider_payment_id,
        status=payment.status,  # type: ignore[arg-type]
        amount=payment.amount,
        paid=payment.paid,
        confirmation_url=payment.confirmation_url,
        cancellation_party=payment.cancellation_party,
        cancellation_reason=payment.cancellation_reason,
        payment_method_id=payment.payment_method_id,
        payment_method_saved=payment.payment_method_saved,
        payment_method=payment.payment_method if payment.payment_method_saved else None,
        receipt_registration=payment.receipt_registration,
    )
