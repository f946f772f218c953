"""Request and response bodies of the public API (they also document it in OpenAPI).

Money goes out as YooKassa does it, ``{"value": "299.00", "currency": "RUB"}`` (a decimal
string, never a float), plus the integer ``amount_minor`` for machines.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from schemas.money import Money

MAX_URL_LEN = 2048


def _return_url(value: str) -> str:
    if len(value) > MAX_URL_LEN:
        raise ValueError(f"at most {MAX_URL_LEN} characters")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError("not a valid URL") from exc
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    return value


ReturnUrl = Annotated[str, AfterValidator(_return_url)]
PlanId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]


class PaymentCreate(BaseModel):
    """What a client may say. Price, currency and period come from the plan, never from here;
    unknown fields (an ``amount``, say) are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    plan_id: PlanId
    return_url: ReturnUrl = Field(description="where the provider sends the user back")


class MoneyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    value: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,12}(\.[0-9]{1,2})?$")] = Field(
        examples=["100.00"], description="a decimal string, as YooKassa writes amounts"
    )
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = Field(examples=["RUB"])


class RefundCreate(BaseModel):
    """Refund a payment: ``amount`` omitted = everything still refundable."""

    model_config = ConfigDict(extra="forbid", strict=True)

    amount: MoneyIn | None = None
    reason: Annotated[str, StringConstraints(max_length=250)] = ""


class AutoRenewUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(description="false: access lasts to the period end, then expires")


class RefundAccepted(BaseModel):
    refund_id: str
    payment_id: str
    status: Literal["accepted"] = "accepted"
    status_url: str


class RefundOut(BaseModel):
    refund_id: str
    payment_id: str
    status: str = Field(
        description="accepted | rejected (not yet with the ledger, or refused by it) or"
        " requested, unknown, succeeded, canceled"
    )
    status_reason: str | None
    amount: MoneyOut | None
    provider_refund_id: str | None
    reason: str
    created_at: datetime
    updated_at: datetime


class MoneyOut(BaseModel):
    value: str = Field(examples=["299.00"])
    currency: str = Field(examples=["RUB"])

    @classmethod
    def of(cls, amount_minor: int, currency: str) -> MoneyOut:
        return cls(value=str(Money(amount_minor, currency).to_decimal()), currency=currency)


class PaymentAccepted(BaseModel):
    payment_id: str
    subscription_id: str
    status: Literal["accepted"] = "accepted"
    status_url: str


class PaymentOut(BaseModel):
    payment_id: str
    subscription_id: str
    plan_id: str | None
    status: str = Field(
        description="accepted | processing | rejected (not yet with the ledger) or the ledger's"
        " payment status: requested, unknown, pending, waiting_for_capture, succeeded, canceled"
    )
    status_reason: str | None
    amount: MoneyOut | None
    amount_minor: int | None
    confirmation_url: str | None
    provider_payment_id: str | None
    period_start: datetime | None
    period_end: datetime | None
    created_at: datetime
    updated_at: datetime


class PaymentPage(BaseModel):
    items: list[PaymentOut]
    next_cursor: str | None


class PlanRef(BaseModel):
    plan_id: str
    name: str | None


class SubscriptionOut(BaseModel):
    subscription_id: str
    status: str
    active: bool = Field(description="status is active and the paid period covers now")
    plan: PlanRef | None
    period_start: datetime | None
    period_end: datetime | None
    updated_at: datetime
    auto_renew: bool = True
    status_reason: str | None = None
    next_retry_at: datetime | None = None


class PlanOut(BaseModel):
    plan_id: str
    name: str
    price: MoneyOut
    amount_minor: int
    period_months: int
    trial_days: int


class CommandOut(BaseModel):
    command_id: str
    command_type: str
    subscription_id: str
    user_id: str
    payment_id: str | None
    status: str
    status_reason: str | None
    publish_attempts: int
    published_at: datetime | None
    next_publish_at: datetime
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class WebhookAck(BaseModel):
    status: Literal["accepted", "ignored"]
    reason: str | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorOut(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting the error body."""
    return {status: {"model": ErrorOut} for status in statuses}
