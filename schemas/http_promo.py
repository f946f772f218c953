"""Request and response bodies of promo codes (issue 16): the admin's codes and their
redemptions, and a user's quote. Beside schemas/http.py, whose shapes they reuse."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from schemas.http import PLAN_ID_PATTERN, Instant, MoneyIn, MoneyOut, Reason, _whole
from schemas.promo import PROMO_CODE_PATTERN

PromoCode = Annotated[
    str,
    StringConstraints(pattern=PROMO_CODE_PATTERN),
    Field(description="3 to 32 letters, digits, - and _; case-insensitive", examples=["SPRING20"]),
]
PlanIdItem = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=PLAN_ID_PATTERN)]
Percent = Annotated[int, Field(ge=1, le=100), BeforeValidator(_whole)]
Periods = Annotated[int, Field(ge=1, le=120), BeforeValidator(_whole)]
MaxRedemptions = Annotated[int, Field(ge=1, le=10_000_000), BeforeValidator(_whole)]


class PercentOff(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["percent"]
    percent: Percent = Field(
        description="off the plan's price in force, rounded down to a minor unit; a charge is"
        " never below 1.00 (100 % charges 1.00 a period)"
    )


class AmountOff(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["fixed"]
    amount: MoneyIn = Field(
        description="off each discounted charge; only for plans in this currency; a charge is"
        " never below 1.00"
    )


class PromoCreate(BaseModel):
    """A new promo code. ``periods``: how many charges it discounts (1: once, N: the first
    N periods, omitted: forever); ``plan_ids`` omitted: every plan."""

    model_config = ConfigDict(extra="forbid", strict=True)

    code: PromoCode
    discount: PercentOff | AmountOff = Field(discriminator="kind")
    periods: Periods | None = None
    plan_ids: Annotated[list[PlanIdItem], Field(min_length=1, max_length=50)] | None = None
    expires_at: Instant | None = Field(
        default=None,
        strict=False,  # an RFC 3339 string (Instant refuses anything else)
        description="RFC 3339 with a zone: not redeemable from then on (never, if omitted)",
    )
    max_redemptions: MaxRedemptions | None = Field(
        default=None, description="redemptions in all (unlimited, if omitted)"
    )
    reason: Reason


class PromoOut(BaseModel):
    code: str
    kind: Literal["percent", "fixed"]
    percent: int | None = None
    amount: MoneyOut | None = None
    duration: Literal["once", "repeating", "forever"]
    periods: int | None = Field(description="charges discounted (null: forever)")
    plan_ids: list[str] | None = Field(description="null: every plan")
    expires_at: datetime | None
    max_redemptions: int | None
    redeemed: int
    archived: bool
    created_by: str
    reason: str
    created_at: datetime
    archived_by: str | None = None
    archived_at: datetime | None = None


class PromoRedemptionOut(BaseModel):
    code: str
    user_id: str
    subscription_id: str
    payment_id: str
    plan_id: str
    price: MoneyOut = Field(description="the plan's price when redeemed")
    discount: MoneyOut = Field(description="taken off the first charge")
    charged: MoneyOut
    redeemed_at: datetime
    payment_status: str | None = Field(
        default=None, description="the payment's status as projected (null: not yet)"
    )


class QuoteOut(BaseModel):
    """What ``POST /api/v1/payments`` with the same plan and code would charge now (the same
    function prices both), and what the following renewals would be at today's price."""

    plan_id: str
    price_version: int
    period_months: int
    price: MoneyOut = Field(description="the plan's price in force now")
    discount: MoneyOut = Field(description="taken off the first charge (0 without a code)")
    charge: MoneyOut = Field(description="what is charged now")
    amount_minor: int = Field(description="``charge`` in minor units")
    promo_code: str | None = None
    discounted_periods: int | None = Field(
        default=None, description="charges at the discount, this one included (null: forever)"
    )


class DiscountOut(BaseModel):
    """Promo discounts on the charges that succeeded in a window, per code and currency."""

    code: str
    currency: str
    charges: int = Field(description="succeeded charges the code discounted")
    discount_minor: int = Field(description="taken off them, in minor units")
    charged_minor: int = Field(description="what they charged, in minor units")
