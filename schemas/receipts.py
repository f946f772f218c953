"""54-FZ receipts (issue 16): what YooKassa's ``receipt`` says for a payment or a refund,
built from the request alone (pure), so every retry under one Idempotence-Key sends the same
body.

Rules chosen where the issue is silent:
- One item per payment: a payment pays for one period of its plan (``period_months``), so
  the receipt has one item, quantity 1, priced at what is charged. The unit price is the
  charge itself, never a per-month division, so the sum is exact whatever the amount.
- Discounts and upgrade credits are not items (a receipt item cannot be negative): the item
  is priced at the charge, which is the plan's price less them, and its description says so.
- A refund receipt has one item: the refunded plan period at the amount refunded now (a
  partial refund is that part; the last refund the rest), with the payment's payment mode.
- The card checks of a trial and of the wallet (``kind`` trial/verify) are held and released,
  never captured: no money changes hands, so no receipt (YooKassa takes a two-stage payment's
  receipt at create or at capture; a released hold has none).
- ``payment_mode`` full_prepayment: a subscription is paid before the period it buys;
  ``payment_subject`` service.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from schemas.messages import PaymentRequest, ReceiptCustomer, RefundRequest
from schemas.money import Money

VAT_CODES = range(1, 11)  # YooKassa's vat_code 1..10 (YOOKASSA-API.md §7)
TAX_SYSTEM_CODES = range(1, 7)  # tax_system_code 1..6
NO_RECEIPT_KINDS = frozenset({"trial", "verify"})
MAX_DESCRIPTION = 128
# Printable ASCII but "@" (an internationalised domain in its punycode form). Spelled with
# ranges, not ``\s`` or ``.``: JSON Schema's (ECMA) and Python's regexes then agree on every
# string, where ``[^@\s]`` let NUL through to PostgreSQL and refused U+0085 that a client's
# validator passes (both found by schemathesis).
EMAIL_PATTERN = r"^[!-?A-~]{1,64}@[!-?A-~]{1,190}\.[!-?A-~]{1,63}$"
PHONE_PATTERN = r"^[1-9][0-9]{9,14}$"  # E.164 digits without the plus
_EMAIL = re.compile(EMAIL_PATTERN)
_PHONE = re.compile(PHONE_PATTERN)

PaymentMode = Literal["full_prepayment", "full_payment"]


class ReceiptPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """The shop's receipt settings (BILLING_RECEIPTS_ENABLED, ..._TAX_SYSTEM_CODE,
    ..._VAT_CODE). ``tax_system_code`` 0: not sent."""

    enabled: bool = False
    tax_system_code: int = 0
    vat_code: int = 1
    payment_mode: PaymentMode = "full_prepayment"

    def __post_init__(self) -> None:
        if self.vat_code not in VAT_CODES:
            raise ValueError(f"vat_code must be within 1..10, not {self.vat_code}")
        if self.tax_system_code and self.tax_system_code not in TAX_SYSTEM_CODES:
            raise ValueError(f"tax_system_code must be within 1..6, not {self.tax_system_code}")


class ReceiptItem(msgspec.Struct, frozen=True, kw_only=True):
    description: str
    amount: Money  # the unit price; with quantity 1 also the item's sum
    vat_code: int
    payment_mode: str
    payment_subject: str = "service"
    quantity: int = 1


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    customer: ReceiptCustomer
    items: list[ReceiptItem]
    tax_system_code: int = 0

    def total_minor(self) -> int:
        return sum(i.amount.amount_minor * i.quantity for i in self.items)

    def to_provider(self) -> dict[str, Any]:
        """YooKassa's ``receipt`` object."""
        customer: dict[str, str] = {}
        if self.customer.email:
            customer["email"] = self.customer.email
        if self.customer.phone:
            customer["phone"] = self.customer.phone
        body: dict[str, Any] = {
            "customer": customer,
            "items": [
                {
                    "description": i.description,
                    "quantity": i.quantity,
                    "amount": i.amount.to_provider(),
                    "vat_code": i.vat_code,
                    "payment_mode": i.payment_mode,
                    "payment_subject": i.payment_subject,
                }
                for i in self.items
            ],
        }
        if self.tax_system_code:
            body["tax_system_code"] = self.tax_system_code
        return body


class ReceiptError(ValueError):
    """No valid receipt can be made (no contact; a sum that would not add up)."""


def valid_customer(customer: ReceiptCustomer | None) -> bool:
    """An email or a phone in the shape YooKassa takes."""
    if customer is None:
        return False
    return bool(
        (customer.email and _EMAIL.fullmatch(customer.email))
        or (customer.phone and _PHONE.fullmatch(customer.phone))
    )


def period_text(plan_id: str, period_months: int) -> str:
    months = max(1, period_months)
    return f"Subscription {plan_id}, {months} month{'s' if months != 1 else ''}"


def _describe(text: str) -> str:
    return text[:MAX_DESCRIPTION]


def _checked(receipt: Receipt, amount: Money) -> Receipt:
    if receipt.total_minor() != amount.amount_minor or any(
        i.amount.currency != amount.currency or i.amount.amount_minor <= 0 for i in receipt.items
    ):
        raise ReceiptError(f"receipt items sum to {receipt.total_minor()}, not {amount}")
    return receipt


def payment_receipt(request: PaymentRequest, policy: ReceiptPolicy) -> Receipt | None:
    """The receipt of a payment, or None (receipts off, or a card check that takes no
    money). Raises ReceiptError without a valid contact: the caller must not send it."""
    if not policy.enabled or request.kind in NO_RECEIPT_KINDS:
        return None
    if request.customer is None or not valid_customer(request.customer):
        raise ReceiptError("no valid receipt contact (email or phone)")
    text = f"{period_text(request.plan_id, request.period_months)}"
    full = request.plan_amount
    if full is not None and full.amount_minor > request.amount.amount_minor:
        off = Money(full.amount_minor - request.amount.amount_minor, full.currency)
        why = "credit" if request.credits else "discount"
        text = f"{text} (price {full.to_decimal()} less {why} {off.to_decimal()})"
    item = ReceiptItem(
        description=_describe(text),
        amount=request.amount,
        vat_code=policy.vat_code,
        payment_mode=policy.payment_mode,
    )
    receipt = Receipt(
        customer=request.customer, items=[item], tax_system_code=policy.tax_system_code
    )
    return _checked(receipt, request.amount)


def refund_receipt(request: RefundRequest, policy: ReceiptPolicy) -> Receipt | None:
    """The receipt of a refund (of the amount refunded now), or None with receipts off."""
    if not policy.enabled:
        return None
    if request.customer is None or not valid_customer(request.customer):
        raise ReceiptError("no valid receipt contact (email or phone)")
    plan = request.plan_id or "plan"
    item = ReceiptItem(
        description=_describe(f"Refund: {period_text(plan, request.period_months)}"),
        amount=request.amount,
        vat_code=policy.vat_code,
        payment_mode=policy.payment_mode,
    )
    receipt = Receipt(
        customer=request.customer, items=[item], tax_system_code=policy.tax_system_code
    )
    return _checked(receipt, request.amount)
