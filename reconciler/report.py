"""Reading provider reports into report lines (``schemas.recon.PaymentLine``/``RefundLine``):
from the list API's objects, or from a registry file. Pure: no I/O; the CSV reader takes an
iterable of text lines.

A report is the provider's payments and refunds created in a window. Each line carries our
ids from the metadata we sent at create. YooKassa refunds carry only ``metadata.refund_id``
and the provider payment id unless we add ours at create, so the feeder resolves a refund's
``subscription_id``/``payment_id`` from the payment it refunds (a payment line of the same
report, or a re-read) when the refund's metadata lacks them.

Registry file (CSV, UTF-8, comma-separated, header row required, column order free, extra
columns ignored, empty cell = absent):

==================== ======== ===========================================================
column               required meaning
==================== ======== ===========================================================
object               yes      ``payment`` or ``refund``
provider_id          yes      the provider's id of the payment or of the refund
provider_payment_id  refunds  for a refund: the provider id of the refunded payment
status               yes      payment: pending | waiting_for_capture | succeeded | canceled;
                              refund: pending | succeeded | canceled
amount               yes      decimal major units as the provider prints them: ``1490.00``
currency             yes      ISO-4217 code (one of ``schemas.money.CURRENCY_EXPONENT``)
created_at           no       ISO-8601 with a zone: ``2026-01-31T12:00:00.000Z``
subscription_id      no       ``metadata.subscription_id`` (refunds: of the refunded payment)
payment_id           no       ``metadata.payment_id``, our payment id
refund_id            no       ``metadata.refund_id``, our refund id (refunds only)
user_id              no       ``metadata.user_id``
paid                 no       ``true``/``false`` (payments; default: status == succeeded)
cancellation_party   no       ``cancellation_details.party``
cancellation_reason  no       ``cancellation_details.reason``
==================== ======== ===========================================================
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from providers.port import ProviderPayment
from schemas.errors import BillingError
from schemas.money import Money, MoneyError
from schemas.recon import (
    PAYMENT_STATUSES,
    REFUND_STATUSES,
    PaymentLine,
    RefundLine,
    ReportLine,
)


# --------------------------------------------------------------------------- conversion
class ReportError(BillingError, ValueError):
    """A report line that cannot be read; for a registry, ``row`` is its 1-based line."""

    def __init__(self, message: str, *, row: int | None = None) -> None:
        super().__init__(message if row is None else f"row {row}: {message}")
        self.row = row


def iso_to_ms(value: str) -> int:
    """``2026-01-31T12:00:00.000Z`` -> epoch ms. A time without a zone is refused."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ReportError(f"not an ISO-8601 time: {value!r}") from exc
    if dt.tzinfo is None:
        raise ReportError(f"time without a zone: {value!r}")
    return int(dt.timestamp() * 1000)


def payment_line(payment: ProviderPayment) -> PaymentLine:
    """A payment from the list API (``ProviderPayment``) as a report line."""
    if payment.status not in PAYMENT_STATUSES:
        raise ReportError(f"unexpected payment status {payment.status!r}")
    meta = payment.metadata
    return PaymentLine(
        provider_payment_id=payment.provider_payment_id,
        status=payment.status,  # type: ignore[arg-type]
        amount=payment.amount,
        paid=payment.paid,
        created_at=iso_to_ms(payment.created_at) if payment.created_at else None,
        subscription_id=meta.get("subscription_id") or None,
        payment_id=meta.get("payment_id") or None,
        user_id=meta.get("user_id") or None,
        cancellation_party=payment.cancellation_party,
        cancellation_reason=payment.cancellation_reason,
        payment_method_id=payment.payment_method_id,
        payment_method_saved=payment.payment_method_saved,
    )


class ProviderRefundLike(Protocol):
    """What a provider refund object offers (``ProviderRefund`` of the providers package)."""

    @property
    def provider_refund_id(self) -> str: ...
    @property
    def provider_payment_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def amount(self) -> Money: ...
    @property
    def created_at(self) -> str | None: ...
    @property
    def cancellation_reason(self) -> str | None: ...
    @property
    def metadata(self) -> dict[str, str]: ...


def refund_line(
    refund: ProviderRefundLike,
    *,
    subscription_id: str | None = None,
    payment_id: str | None = None,
) -> RefundLine:
    """A refund from the list API as a report line. Our ids of the refunded payment come
    from the refund's metadata when we put them there at create, else from the caller
    (resolved from the refunded payment)."""
    if refund.status not in REFUND_STATUSES:
        raise ReportError(f"unexpected refund status {refund.status!r}")
    meta = refund.metadata
    return RefundLine(
        provider_refund_id=refund.provider_refund_id,
        provider_payment_id=refund.provider_payment_id,
        status=refund.status,  # type: ignore[arg-type]
        amount=refund.amount,
        created_at=iso_to_ms(refund.created_at) if refund.created_at else None,
        subscription_id=subscription_id or meta.get("subscription_id") or None,
        payment_id=payment_id or meta.get("payment_id") or None,
        refund_id=meta.get("refund_id") or None,
        cancellation_reason=refund.cancellation_reason,
    )


# ----------------------------------------------------------------------------- registry
REGISTRY_COLUMNS: tuple[str, ...] = (
    "object",
    "provider_id",
    "provider_payment_id",
    "status",
    "amount",
    "currency",
    "created_at",
    "subscription_id",
    "payment_id",
    "refund_id",
    "user_id",
    "paid",
    "cancellation_party",
    "cancellation_reason",
)
_REQUIRED = ("object", "provider_id", "status", "amount", "currency")


def read_registry(text_lines: Iterable[str]) -> list[ReportLine]:
    """Parse a registry CSV (columns in the module docstring). Refuses the whole file on the
    first bad row: a half-imported report would make every missing line a discrepancy."""
    reader = csv.DictReader(text_lines)
    header = reader.fieldnames or []
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise ReportError(f"registry header lacks {', '.join(missing)}", row=1)
    lines: list[ReportLine] = []
    for row in reader:
        lines.append(_registry_row(row, reader.line_num))
    return lines


def _cell(row: Mapping[str, str | None], name: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _registry_row(row: Mapping[str, str | None], num: int) -> ReportLine:
    def need(name: str) -> str:
        value = _cell(row, name)
        if value is None:
            raise ReportError(f"{name} is empty", row=num)
        return value

    obj, provider_id, status = need("object"), need("provider_id"), need("status")
    try:
        amount = Money.from_decimal(need("amount"), need("currency"))
    except MoneyError as exc:
        raise ReportError(str(exc), row=num) from exc
    created_raw = _cell(row, "created_at")
    try:
        created_at = iso_to_ms(created_raw) if created_raw else None
    except ReportError as exc:
        raise ReportError(str(exc), row=num) from exc
    # Columns both kinds of line read the same way (status is checked per kind below).
    shared: dict[str, Any] = {
        "status": status,
        "amount": amount,
        "created_at": created_at,
        "subscription_id": _cell(row, "subscription_id"),
        "payment_id": _cell(row, "payment_id"),
        "cancellation_reason": _cell(row, "cancellation_reason"),
    }
    if obj == "payment":
        if status not in PAYMENT_STATUSES:
            raise ReportError(f"unexpected payment status {status!r}", row=num)
        paid_raw = _cell(row, "paid")
        if paid_raw is None:
            paid = status == "succeeded"
        elif paid_raw.lower() in ("true", "false"):
            paid = paid_raw.lower() == "true"
        else:
            raise ReportError(f"paid must be true or false, not {paid_raw!r}", row=num)
        return PaymentLine(
            **shared,
            provider_payment_id=provider_id,
            paid=paid,
            user_id=_cell(row, "user_id"),
            cancellation_party=_cell(row, "cancellation_party"),
        )
    if obj == "refund":
        if status not in REFUND_STATUSES:
            raise ReportError(f"unexpected refund status {status!r}", row=num)
        return RefundLine(
            **shared,
            provider_refund_id=provider_id,
            provider_payment_id=need("provider_payment_id"),
            refund_id=_cell(row, "refund_id"),
        )
    raise ReportError(f"object must be payment or refund, not {obj!r}", row=num)
