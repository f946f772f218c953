"""The gateway and 54-FZ receipts (issue 16): with receipts on, a payment or refund goes to
the provider with the receipt built from its request (the same on every retry), a card check
without one, and a request with no contact is refused before any provider call."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from yookassa.domain.exceptions import BadRequestError

from billing.clock import now_ms
from providers.port import ProviderPayment, ProviderRefund
from providers.yookassa_adapter import classify
from schemas.messages import (
    PaymentCallFailed,
    PaymentObserved,
    PaymentRequest,
    PaymentRequested,
    ReceiptCustomer,
    RefundCallFailed,
    RefundObserved,
    RefundRequest,
    RefundRequested,
)
from schemas.money import Money
from schemas.receipts import Receipt, ReceiptPolicy
from streams.gateway.agent import RECEIPT_CONTACT_MISSING, execute, execute_refund

ON = ReceiptPolicy(enabled=True, tax_system_code=2, vat_code=1)
SUB = "11111111-1111-5111-8111-111111111111"
WINDOW_MS = 20 * 3600 * 1000
MAIL = ReceiptCustomer(email="viewer@example.com")
PAYMENT = "22222222-2222-5222-8222-222222222222"
REFUND = "33333333-3333-5333-8333-333333333333"


class Provider:
    """Records the receipt of each create; answers succeeded with a registered receipt."""

    def __init__(self) -> None:
        self.receipts: list[Receipt | None] = []

    async def create_payment(
        self, request: PaymentRequest, subscription_id: str, *, receipt: Receipt | None = None
    ) -> ProviderPayment:
        self.receipts.append(receipt)
        return ProviderPayment(
            provider_payment_id="prov-1",
            status="succeeded",
            amount=request.amount,
            paid=True,
            metadata={"payment_id": request.payment_id, "subscription_id": subscription_id},
            receipt_registration="succeeded" if receipt is not None else None,
        )

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
        self.receipts.append(receipt)
        return ProviderRefund(
            provider_refund_id="r-1",
            provider_payment_id=provider_payment_id,
            status="succeeded",
            amount=amount,
            receipt_registration="succeeded" if receipt is not None else None,
        )

    async def get_payment(self, provider_payment_id: str) -> ProviderPayment:
        raise AssertionError("not used")

    async def get_refund(self, provider_refund_id: str) -> ProviderRefund:
        raise AssertionError("not used")

    async def capture_payment(
        self, provider_payment_id: str, *, key: str, amount: Money | None = None
    ) -> ProviderPayment:
        raise AssertionError("not used")

    async def cancel_payment(self, provider_payment_id: str, *, key: str) -> ProviderPayment:
        raise AssertionError("not used")

    async def find_payment(
        self, payment_id: str, created_gte: datetime, created_lt: datetime
    ) -> ProviderPayment | None:
        raise AssertionError("not used")

    async def find_refund(
        self, refund_id: str, provider_payment_id: str, created_gte: datetime, created_lt: datetime
    ) -> ProviderRefund | None:
        raise AssertionError("not used")

    async def close(self) -> None:
        return None


def payment_event(kind: str = "purchase", customer: ReceiptCustomer | None = MAIL) -> Any:
    request = PaymentRequest(
        payment_id=PAYMENT,
        command_id="c-1",
        user_id="user-1",
        plan_id="monthly",
        amount=Money(29900, "RUB"),
        period_months=1,
        return_url="https://cinema.example/return",
        description="Cinema monthly",
        kind=kind,  # type: ignore[arg-type]
        customer=customer,
    )
    return PaymentRequested(
        event_id="e-1",
        subscription_id=SUB,
        user_id="user-1",
        version=1,
        occurred_at=now_ms(),
        causation_id="c-1",
        request=request,
        deadline_at=now_ms() + 60_000,
    )


def refund_event(customer: ReceiptCustomer | None = MAIL) -> RefundRequested:
    return RefundRequested(
        event_id="e-2",
        subscription_id=SUB,
        user_id="user-1",
        version=2,
        occurred_at=now_ms(),
        causation_id="c-2",
        request=RefundRequest(
            refund_id=REFUND,
            command_id="c-2",
            payment_id=PAYMENT,
            provider_payment_id="prov-1",
            amount=Money(10000, "RUB"),
            customer=customer,
            plan_id="monthly",
            period_months=1,
        ),
        deadline_at=now_ms() + 60_000,
    )


def test_a_payment_goes_with_its_receipt_and_the_registration_comes_back() -> None:
    provider = Provider()
    out = asyncio.run(execute(provider, payment_event(), window_ms=WINDOW_MS, receipts=ON))
    assert isinstance(out, PaymentObserved) and out.receipt_registration == "succeeded"
    (receipt,) = provider.receipts
    assert receipt is not None and receipt.total_minor() == 29900
    assert receipt.to_provider()["customer"] == {"email": "viewer@example.com"}
    # Built from the request alone: a retry sends the same receipt (same body, same key).
    asyncio.run(execute(provider, payment_event(), window_ms=WINDOW_MS, receipts=ON))
    assert provider.receipts[0] == provider.receipts[1]


def test_receipts_off_or_a_card_check_sends_none() -> None:
    provider = Provider()
    asyncio.run(execute(provider, payment_event(), window_ms=WINDOW_MS))
    asyncio.run(execute(provider, payment_event("trial"), window_ms=WINDOW_MS, receipts=ON))
    assert provider.receipts == [None, None]


def test_no_contact_is_refused_before_any_provider_call() -> None:
    provider = Provider()
    out = asyncio.run(
        execute(provider, payment_event(customer=None), window_ms=WINDOW_MS, receipts=ON)
    )
    assert isinstance(out, PaymentCallFailed)
    assert (out.outcome, out.error_code) == ("rejected", RECEIPT_CONTACT_MISSING)
    refund = asyncio.run(
        execute_refund(provider, refund_event(customer=None), window_ms=WINDOW_MS, receipts=ON)
    )
    assert isinstance(refund, RefundCallFailed) and refund.error_code == RECEIPT_CONTACT_MISSING
    assert provider.receipts == []


def test_a_partial_refund_goes_with_a_receipt_of_its_own_amount() -> None:
    provider = Provider()
    out = asyncio.run(execute_refund(provider, refund_event(), window_ms=WINDOW_MS, receipts=ON))
    assert isinstance(out, RefundObserved) and out.receipt_registration == "succeeded"
    (receipt,) = provider.receipts
    assert receipt is not None and receipt.total_minor() == 10000
    assert receipt.to_provider()["tax_system_code"] == 2


def test_a_changed_body_under_a_used_key_is_unknown_never_nothing_created() -> None:
    """If a request's body changed between attempts (receipt settings changed in flight), the
    provider answers 400 "Idempotence key duplicated": a payment may exist under that key, so
    the outcome stays unknown (re-driven, found by reading), never a rejection."""
    body = {
        "type": "error",
        "id": "e",
        "code": "invalid_request",
        "description": "Idempotence key duplicated",
        "parameter": "Idempotence-Key",
    }
    error = classify(BadRequestError(body))
    assert error.unknown and error.code == "idempotence_key_reused"
    other = classify(BadRequestError({**body, "description": "bad", "parameter": "amount"}))
    assert not other.unknown
