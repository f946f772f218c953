"""Request and response bodies of the HTTP API (they also document it in OpenAPI), in one
place for the API that answers with them and the admin console that reads them.

Money goes out as YooKassa does it, ``{"value": "299.00", "currency": "RUB"}`` (a decimal
string, never a float), plus the integer ``amount_minor`` for machines.

The class names are the OpenAPI schema names: renaming one changes the published document.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from schemas.money import Money
from schemas.periods import ms_to_dt
from schemas.recon_runs import ItemRow, ItemView, RunReport

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


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must not contain control characters")
    return value


def _plain_text(value: str) -> str:
    """Free text may span lines, but no other control character: PostgreSQL refuses NUL in
    text and jsonb, and a command carrying one would be a poison message for the projection."""
    if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


Reason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=250),
    AfterValidator(_plain_text),
    Field(description="why: recorded with the admin's id in the audit trail"),
]
PlanName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=128),
    AfterValidator(_printable),
]
TrialDays = Annotated[int, Field(ge=0, le=365)]


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
    reason: Annotated[str, StringConstraints(max_length=250), AfterValidator(_plain_text)] = ""


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
        description="the price in force at the period end for the plan the next period renews to",
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
    period_months: Annotated[int, Field(ge=1, le=36)]
    trial_days: TrialDays = 0
    reason: Reason


class PlanUpdate(BaseModel):
    """Rename a plan or change its trial; its price changes only through a new version."""

    model_config = ConfigDict(extra="forbid", strict=True)

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
    effective_from: AwareDatetime | None = Field(
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

    days: Annotated[int, Field(ge=1, le=366)]
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


ItemKey = Annotated[
    str, StringConstraints(min_length=1, max_length=300, pattern=r"^[^\s\x00-\x1f\x7f]+$")
]


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
