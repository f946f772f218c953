"""The payment-provider port. The gateway agent and the webhook endpoint depend on this
Protocol only; the YooKassa adapter (official SDK) and test fakes implement it.

Errors follow stripe-python's discipline: one root, and a flag that says whether the outcome
is unknown (retry with the same Idempotence-Key, or re-read) or definitely failed.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from schemas.messages import PaymentRequest
from schemas.money import Money


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
    created_at: str | None = None

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


class ProviderError(Exception):
    """Root of provider failures. ``unknown`` means the operation may or may not have
    happened: never create a new operation, retry with the same key or re-read."""

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


class ProviderRejected(ProviderError):
    """A definite 4xx: the request was refused, nothing was created."""

    code = "provider_rejected"


class ProviderNotFound(ProviderRejected):
    code = "not_found"


class PaymentProvider(Protocol):
    async def create_payment(
        self, request: PaymentRequest, subscription_id: str
    ) -> ProviderPayment:
        """Create (or, under the same Idempotence-Key = payment_id, re-obtain) the payment."""
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
    ) -> ProviderRefund:
        """Refund (part of) a payment under Idempotence-Key = refund_id."""
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
