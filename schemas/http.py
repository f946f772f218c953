"""Request and response bodies of the HTTP API (they also document it in OpenAPI), in one
place for the API that answers with them and the admin console that reads them.

Money goes out as YooKassa does it, ``{"value": "299.00", "currency": "RUB"}`` (a decimal
string, never a float), plus the integer ``amount_minor`` for machines.

The class names are the OpenAPI schema names: renaming one changes the published document.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from schemas.money import CURRENCY_EXPONENT, Money
from schemas.periods import ms_to_dt
from schemas.promo import PROMO_CODE_PATTERN
from schemas.receipts import EMAIL_PATTERN, PHONE_PATTERN
from schemas.recon_runs import ItemRow, ItemView, RunReport

MAX_URL_LEN = 2048

# The rules below are regular expressions, so the OpenAPI document states exactly what the
# server checks (issue 14: schemathesis fuzzes one against the other). They use only what
# JSON Schema's, Python's and pydantic's (Rust) regex engines read alike.

_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_HOST = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
# An absolute http(s) URL with a host name (or IPv4 address) and an optional port, no user
# info, then path, query and fragment in visible ASCII (percent-encode anything else).
URL_PATTERN = rf"^https?://{_HOST}(:{_PORT})?([/?#][!-~]*)?$"
ReturnUrl = Annotated[
    str,
    StringConstraints(max_length=MAX_URL_LEN, pattern=URL_PATTERN),
    Field(
        description="an absolute http(s) URL, at most 2048 visible ASCII characters, no user info",
        examples=["https://cinema.example/return"],
    ),
]
PLAN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
PlanId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=PLAN_ID_PATTERN)]

# Free text may span lines (tab and newline), but holds no other control character:
# PostgreSQL refuses NUL in text and jsonb, and a command carrying one would be a poison
# message for the projection. It is stored as sent (no trimming: the length a client
# counts is the length checked).
TEXT_PATTERN = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"
# The same, with at least one character that is neither a space nor a control character.
# "Visible" spells its spaces out (Unicode White_Space and BOM): the engines' \s differ (U+0085
# is a space to Python and Rust, not to JavaScript; U+FEFF the other way round).
_SPACES = r" \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
VISIBLE = rf"[^{_SPACES}\x00-\x1f\x7f]"
SOME_TEXT_PATTERN = rf"^[^\x00-\x08\x0b-\x1f\x7f]*{VISIBLE}[^\x00-\x08\x0b-\x1f\x7f]*$"
# One line: no control character at all, and something visible.
LINE_PATTERN = rf"^[^\x00-\x1f\x7f]*{VISIBLE}[^\x00-\x1f\x7f]*$"

Reason = Annotated[
    str,
    StringConstraints(max_length=250, pattern=SOME_TEXT_PATTERN),
    Field(description="why: recorded with the admin's id in the audit trail"),
]
PlanName = Annotated[str, StringConstraints(max_length=128, pattern=LINE_PATTERN)]

# RFC 3339 as JSON Schema's "date-time" format means it. pydantic alone would also
# take a number (seconds since 1970), a space for the T or no seconds: not what the document
# says, so a value that is no RFC 3339 string is refused first.
_RFC3339_INSTANT = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _rfc3339(rule: re.Pattern[str], what: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, str) and not rule.fullmatch(value):
            raise ValueError(f"must be {what}")
        if isinstance(value, int | float):
            raise ValueError(f"must be {what}, not a number")
        return value

    return BeforeValidator(check)


Instant = Annotated[
    AwareDatetime, _rfc3339(_RFC3339_INSTANT, "an RFC 3339 date-time with a time zone")
]


def _whole(value: Any) -> Any:
    """JSON has one number type: 2.0 is the integer 2 (JSON Schema says so too), 2.5 is not.
    The models stay strict otherwise (no "2", no true)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The bounds first, then the validator around them: that way the document shows them as
# minimum and maximum.
TrialDays = Annotated[int, Field(ge=0, le=365), BeforeValidator(_whole)]
PeriodMonths = Annotated[int, Field(ge=1, le=36), BeforeValidator(_whole)]
# A 54-FZ receipt's contact, in the shape YooKassa takes (schemas/receipts.py).
ReceiptEmail = Annotated[
    str,
    StringConstraints(max_length=254, pattern=EMAIL_PATTERN),
    Field(examples=["viewer@example.com"]),
]
ReceiptPhone = Annotated[
    str,
    StringConstraints(max_length=15, pattern=PHONE_PATTERN),
    Field(description="E.164 digits without the plus", examples=["79001234567"]),
]
ExtendDays = Annotated[int, Field(ge=1, le=366), BeforeValidator(_whole)]


class PaymentCreate(BaseModel):
    """What a client may say. Price, currency and period come from the plan, never from here;
    unknown fields (an ``amount``, say) are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    plan_id: PlanId
    return_url: ReturnUrl = Field(description="where the provider sends the user back")
    trial: bool = Field(
        default=False,
        description="start the plan's free trial: nothing is charged now; the card is checked"
        " by a small hold released at once and charged at the trial's end. One trial per user,"
        " ever, for first-time subscribers (else the payment is rejected: trial_already_used,"
        " not_first_subscription). A plan without a trial: 422 no_trial",
    )
    receipt_email: ReceiptEmail | None = Field(
        default=None,
        description="54-FZ receipts: where the receipt goes (else the profile's, else the"
        " sign-on token's email); kept for renewals and refunds",
    )
    receipt_phone: ReceiptPhone | None = Field(
        default=None, description="54-FZ receipts: a phone instead of (or with) the email"
    )
    promo_code: Annotated[str, StringConstraints(pattern=PROMO_CODE_PATTERN)] | None = Field(
        default=None,
        description="a promo code (case-insensitive): the charge is the quote's"
        " (GET /api/v1/plans/{plan_id}/quote); refused with 422 promo_not_found, promo_expired,"
        " promo_exhausted, promo_already_used, promo_not_for_plan or promo_not_with_trial",
    )


# Not zero: leading zeros aside, 1 to 12 digits with a non-zero first one, or a fraction.
POSITIVE_AMOUNT_PATTERN = (
    r"^(0{0,11}[1-9][0-9]{0,11}(\.[0-9]{1,2})?|0{1,12}\.([1-9][0-9]?|0[1-9]))$"
)
CURRENCY_PATTERN = "^(" + "|".join(sorted(CURRENCY_EXPONENT)) + ")$"


class MoneyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    value: Annotated[str, StringConstraints(pattern=POSITIVE_AMOUNT_PATTERN)] = Field(
        examples=["100.00"],
        description="a positive decimal string, as YooKassa writes amounts: at most 12"
        " significant digits before the point and 2 after",
    )
    currency: Annotated[str, StringConstraints(pattern=CURRENCY_PATTERN)] = Field(
        examples=["RUB"], description="one the engine bills in"
    )


class RefundCreate(BaseModel):
    """Refund a payment: ``amount`` omitted = everything still refundable."""

    model_config = ConfigDict(extra="forbid", strict=True)

    amount: MoneyIn | None = None
    reason: Annotated[str, StringConstraints(max_length=250, pattern=TEXT_PATTERN)] = ""


class AutoRenewUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(description="false: access lasts to the period end, then expires")


class RetryCreate(BaseModel):
    """Pay again for what a canceled payment was for, at the price in force now."""

    model_config = ConfigDict(extra="forbid", strict=True)

    return_url: ReturnUrl = Field(description="where the provider sends the user back")


class PlanChangeCreate(BaseModel):
    """Switch to another plan: a dearer one now (prorated charge), a cheaper one at the
    period end."""

    model_config = ConfigDict(extra="forbid", strict=True)

    plan_id: PlanId
    return_url: ReturnUrl = Field(description="where the provider sends the user back")


class RetryAccepted(BaseModel):
    payment_id: str = Field(description="the new payment (derived from the command)")
    subscription_id: str
    retry_of: str
    status: Literal["accepted"] = "accepted"
    status_url: str


class PlanChangeAccepted(BaseModel):
    payment_id: str = Field(
        description="the upgrade charge, if the ledger finds one is needed (a downgrade makes"
        " none: its status URL then reads done with the reason)"
    )
    subscription_id: str
    plan_id: str
    status: Literal["accepted"] = "accepted"
    status_url: str


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
    receipt_registration: str | None = Field(
        default=None,
        description="54-FZ refund receipt at YooKassa: pending | succeeded | canceled",
    )


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
    receipt_registration: str | None = Field(
        default=None,
        description="54-FZ receipt at YooKassa: pending | succeeded | canceled (null: none)",
    )


class ProfileIn(BaseModel):
    """Your contact for 54-FZ receipts; null clears a field."""

    model_config = ConfigDict(extra="forbid", strict=True)

    email: ReceiptEmail | None = None
    phone: ReceiptPhone | None = None


class ProfileOut(BaseModel):
    user_id: str
    email: str | None = Field(description="the profile's email, else the sign-on token's")
    phone: str | None
    email_from_token: bool = Field(
        default=False, description="true: no email saved; the token's email claim is used"
    )
    updated_at: datetime | None


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
    plan_price: MoneyOut | None = Field(
        default=None, description="the current plan's price in force now"
    )
    period_start: datetime | None
    period_end: datetime | None
    updated_at: datetime
    auto_renew: bool = True
    status_reason: str | None = None
    next_retry_at: datetime | None = None
    next_plan_id: str | None = Field(
        default=None, description="a scheduled downgrade: the plan the next period renews to"
    )
    next_charge_at: datetime | None = Field(
        default=None,
        description="when the next automatic charge is due (the dunning retry, or the renewal"
        " lead before the period end) while auto-renewal is on; it needs a saved card",
    )
    next_charge_amount: MoneyOut | None = Field(
        default=None,
        description="the price in force at the period end for the plan the next period renews"
        " to, less the promo discount while it lasts",
    )
    promo_code: str | None = Field(
        default=None, description="the promo code still discounting renewals, if any"
    )
    promo_periods_left: int | None = Field(
        default=None, description="renewals it still discounts (null with a code: every one)"
    )


class ScheduledPrice(BaseModel):
    price: MoneyOut
    amount_minor: int
    price_version: int
    effective_from: datetime


class PlanOut(BaseModel):
    plan_id: str
    name: str
    price: MoneyOut = Field(description="the price in force now")
    amount_minor: int
    price_version: int = 0
    period_months: int
    trial_days: int
    next_price: ScheduledPrice | None = Field(
        default=None, description="the next scheduled price change, if any"
    )


class PlanPriceOut(BaseModel):
    version: int
    price: MoneyOut | None
    amount_minor: int
    effective_from: datetime | None = Field(description="null: in force since the beginning")
    created_by: str
    reason: str
    created_at: datetime


class AdminPlanOut(BaseModel):
    plan_id: str
    name: str
    period_months: int
    trial_days: int
    archived: bool
    price: MoneyOut | None = Field(description="the price in force now (null: none yet)")
    price_version: int | None
    prices: list[PlanPriceOut] = Field(description="every price version, oldest first")
    created_at: datetime
    updated_at: datetime


class PlanCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    plan_id: PlanId
    name: PlanName
    price: MoneyIn
    period_months: PeriodMonths
    trial_days: TrialDays = 0
    reason: Reason


class PlanUpdate(BaseModel):
    """Rename a plan or change its trial; its price changes only through a new version."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        # What _something_to_change checks, in the document: name or trial_days, not null.
        json_schema_extra={
            "anyOf": [
                {"required": ["name"], "properties": {"name": {"type": "string"}}},
                {"required": ["trial_days"], "properties": {"trial_days": {"type": "integer"}}},
            ]
        },
    )

    name: PlanName | None = None
    trial_days: TrialDays | None = None
    reason: Reason

    @model_validator(mode="after")
    def _something_to_change(self) -> PlanUpdate:
        if self.name is None and self.trial_days is None:
            raise ValueError("give name and/or trial_days")
        return self


class AdminReason(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Reason


class PriceCreate(BaseModel):
    """A new price version: in force from ``effective_from`` (omitted: now)."""

    model_config = ConfigDict(extra="forbid")

    price: MoneyIn
    effective_from: Instant | None = Field(
        default=None, description="ISO 8601 with a time zone; now or later"
    )
    reason: Reason


class AdminRefundCreate(BaseModel):
    """Refund any user's payment: ``amount`` omitted = everything still refundable."""

    model_config = ConfigDict(extra="forbid", strict=True)

    amount: MoneyIn | None = None
    reason: Reason


class AdminExtend(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    days: ExtendDays
    reason: Reason


class AdminGrant(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    plan_id: PlanId
    reason: Reason


class AdminAutoRenew(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool
    reason: Reason


class AdminActionAccepted(BaseModel):
    command_id: str
    subscription_id: str
    action: str
    status: Literal["accepted"] = "accepted"
    status_url: str = Field(description="the command's status: accepted → done | rejected")


class AdminRefundAccepted(BaseModel):
    command_id: str
    refund_id: str
    payment_id: str
    subscription_id: str
    status: Literal["accepted"] = "accepted"
    status_url: str


class RefundPage(BaseModel):
    items: list[RefundOut]
    next_cursor: str | None


class AdminSubscriptionOut(SubscriptionOut):
    user_id: str
    version: int


class AdminSubscriptionPage(BaseModel):
    items: list[AdminSubscriptionOut]
    next_cursor: str | None


class AdminPaymentOut(PaymentOut):
    kind: str
    refunded: MoneyOut | None
    price_version: int
    command_id: str


class AdminRefundOut(RefundOut):
    actor: str
    command_id: str


class EventOut(BaseModel):
    event_id: str
    version: int
    event_type: str
    occurred_at: datetime
    causation_id: str
    body: dict[str, Any]


class CommandOut(BaseModel):
    command_id: str
    command_type: str
    subscription_id: str
    user_id: str = Field(description="the subscription's user")
    payment_id: str | None
    refund_id: str | None = None
    status: str
    status_reason: str | None
    publish_attempts: int
    published_at: datetime | None
    next_publish_at: datetime
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class AdminSubscriptionDetail(BaseModel):
    subscription: AdminSubscriptionOut
    payments: list[AdminPaymentOut] = Field(description="oldest first")
    refunds: list[AdminRefundOut] = Field(description="oldest first")
    commands: list[CommandOut] = Field(description="the latest accepted commands, newest first")
    events: list[EventOut] = Field(description="the audit trail, by version")
    events_next_after: int | None = Field(
        description="pass as events_after for the next page of events"
    )


class WebhookObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    ] = Field(description="the provider's id of the payment (or refund); re-read from it")


class WebhookNotification(BaseModel):
    """A YooKassa notification as the webhook reads it: only ``event`` and ``object.id``
    matter (the object itself is re-read from the provider, never trusted); anything else
    in it is ignored. A body that is not this (or not JSON, or nested too deep) is a 400
    ``webhook_malformed``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["notification"]
    event: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="payment.<status> is handled; any other event is acknowledged and ignored",
        examples=["payment.succeeded"],
    )
    object: WebhookObject


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


# ------------------------------------------------------------------------ console session
class SessionOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds")
    expires_at: datetime
    user_id: str
    roles: list[str]


# ------------------------------------------------------------------------------ analytics
# The series of GET /api/v1/admin/analytics/* (api/routes/analytics.py): days and months UTC,
# amounts in integer minor units per currency.
class RevenueDay(BaseModel):
    day: date
    currency: str
    plan_id: str = ""  # '' when the payment's request is not in the history
    gross_minor: int
    refunds_minor: int
    net_minor: int
    payments: int
    refunds: int


class TrialsDay(BaseModel):
    """Free trials started on ``day`` and how many converted (their first charge succeeded)."""

    day: date
    trials: int
    converted: int
    conversion: float | None = None  # converted / trials

    @model_validator(mode="after")
    def _conversion(self) -> TrialsDay:
        self.conversion = self.converted / self.trials if self.trials else None
        return self


class PaymentMethodOut(BaseModel):
    """A saved payment method as YooKassa returns it for display (never more card data)."""

    method_id: str
    type: str
    title: str | None
    first6: str | None
    last4: str | None
    expiry_month: str | None
    expiry_year: str | None
    card_type: str | None
    issuer_country: str | None
    issuer_name: str | None
    default: bool = Field(description="the method renewals charge")
    created_at: str


class PaymentMethodList(BaseModel):
    """The wallet (GET /api/v1/payment-methods, and an admin's view of a subscriber's)."""

    items: list[PaymentMethodOut]


class SuccessDay(BaseModel):
    day: date
    succeeded: int
    canceled: int
    rate: float | None = None  # succeeded / (succeeded + canceled)

    @model_validator(mode="after")
    def _rate(self) -> SuccessDay:
        done = self.succeeded + self.canceled
        self.rate = self.succeeded / done if done else None
        return self


class DeclineReasonOut(BaseModel):
    reason: str
    party: str
    payments: int
    share: float


class MrrMonth(BaseModel):
    month: date
    currency: str
    mrr_minor: int
    new_minor: int
    expansion_minor: int
    contraction_minor: int
    churn_minor: int
    subscribers_at_start: int
    subscribers: int
    new_subscribers: int
    churned_subscribers: int
    net_new_minor: int = 0
    churn_rate: float | None = None

    @model_validator(mode="after")
    def _derived(self) -> MrrMonth:
        self.net_new_minor = (
            self.new_minor + self.expansion_minor - self.contraction_minor - self.churn_minor
        )
        start = self.subscribers_at_start
        self.churn_rate = self.churned_subscribers / start if start else None
        return self


class RefundRateOut(BaseModel):
    currency: str
    gross_minor: int
    refunds_minor: int
    payments: int
    refunds: int
    rate: float | None = None

    @model_validator(mode="after")
    def _rate(self) -> RefundRateOut:
        self.rate = self.refunds_minor / self.gross_minor if self.gross_minor else None
        return self


class DunningMonth(BaseModel):
    month: date
    episodes: int
    recovered: int
    lost: int
    open: int = 0
    rate: float | None = None

    @model_validator(mode="after")
    def _derived(self) -> DunningMonth:
        self.open = self.episodes - self.recovered - self.lost
        ended = self.recovered + self.lost
        self.rate = self.recovered / ended if ended else None
        return self


class DiscrepancyDayOut(BaseModel):
    """Discrepancies first found on ``day``, by class and current status (open, repaired,
    or an admin's decision), from the reconciliation history in ClickHouse."""

    day: date
    kind: str
    status: str
    items: int


class ActiveSubscribersOut(BaseModel):
    at_ms: int
    total: int
    by_plan: dict[str, int]


class OverviewOut(BaseModel):
    """The last 30 days of revenue, success, declines, refund rate and dunning, active
    subscribers now, and MRR movements of the last 12 months."""

    revenue: list[RevenueDay]
    active: ActiveSubscribersOut
    success: list[SuccessDay]
    declines: list[DeclineReasonOut]
    mrr: list[MrrMonth]
    refund_rate: list[RefundRateOut]
    dunning: list[DunningMonth]


# ------------------------------------------------------------- reconciliation (console)
# What /api/v1/admin/reconciliation answers and takes; the admin console reads the same.
class RunOut(BaseModel):
    run_id: str
    status: str = Field(description="feeding | matching | finished | incomplete | failed")
    source: str
    source_ref: str
    trigger: str
    window_start: datetime
    window_end: datetime
    taken_at: datetime
    lines: int
    partitions: int | None
    partitions_done: int
    incomplete_partitions: int
    counts: dict[str, int] = Field(description="items per class (as recorded when finished)")
    totals: dict[str, dict[str, str]] = Field(
        description="succeeded totals per side and currency (decimal strings)"
    )
    discrepancies: int
    new_discrepancies: int
    unresolved: int = Field(description="of this run's discrepancies, still open now")
    started_at: datetime
    fed_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    error: str | None

    @classmethod
    def of(cls, r: RunReport) -> RunOut:
        s = r.spec
        return cls(
            run_id=s.run_id,
            status=s.status,
            source=s.source,
            source_ref=s.source_ref,
            trigger=s.trigger,
            window_start=ms_to_dt(s.window_start),
            window_end=ms_to_dt(s.window_end),
            taken_at=ms_to_dt(s.taken_at),
            lines=r.lines,
            partitions=s.partitions,
            partitions_done=r.partitions_done,
            incomplete_partitions=r.incomplete_partitions,
            counts=r.counts,
            totals=r.totals,
            discrepancies=r.discrepancies,
            new_discrepancies=r.new_discrepancies,
            unresolved=r.unresolved,
            started_at=r.started_at,
            fed_at=r.fed_at,
            finished_at=r.finished_at,
            duration_ms=r.duration_ms,
            error=r.error,
        )


class RunPage(BaseModel):
    items: list[RunOut] = Field(description="newest first")
    next_offset: int | None


def _recon_money(m: Money | None) -> MoneyOut | None:
    return MoneyOut.of(m.amount_minor, m.currency) if m is not None else None


# An item (schemas.recon_runs.ItemView) with its amounts as the API shows money. No
# docstring: it would become the schema's description in the OpenAPI document.
class DiscrepancyOut(ItemView[MoneyOut]):
    @classmethod
    def of(cls, i: ItemRow) -> DiscrepancyOut:
        fields = i.model_dump(exclude={"refund_key", "ours_amount", "theirs_amount"})
        return cls(
            **fields,
            ours_amount=_recon_money(i.ours_amount),
            theirs_amount=_recon_money(i.theirs_amount),
        )


class DiscrepancyPage(BaseModel):
    items: list[DiscrepancyOut] = Field(description="most recently seen first")
    next_offset: int | None


class ReconciliationSummary(BaseModel):
    open_discrepancies: int = Field(description="discrepancies waiting for a decision")
    open_by_kind: dict[str, int]
    last_run: RunOut | None


ItemKey = Annotated[str, StringConstraints(min_length=1, max_length=300, pattern=rf"^{VISIBLE}+$")]


class ResolutionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    item_key: ItemKey
    resolution: Literal["accept_provider", "accept_ours", "write_off"] = Field(
        description="accept_provider: the provider's books are right; accept_ours: ours are;"
        " write_off: the difference is absorbed"
    )
    reason: Reason


class ResolutionOut(BaseModel):
    item: DiscrepancyOut
    changed: bool = Field(description="false: the same decision was already recorded")
    ledger_correction: bool = Field(
        description="true: the provider's view goes to the ledger (our payment or refund the"
        " provider never made is canceled), through the outbox: recorded with the decision,"
        " delivered even if the broker is down now"
    )
    correction_id: str | None = Field(
        default=None,
        description="the correction's outbox id when ledger_correction: its status at"
        " /api/v1/admin/commands/{id} (accepted, then done once the ledger applied it)",
    )
