"""Wire contracts: commands (imperative), provider events (normalised outcomes) and domain
events (past tense). Every part encodes and decodes through this module; nobody builds dicts.

Encoding is msgspec JSON with a ``type`` tag. Times are epoch milliseconds UTC. Renaming a
tag breaks the log: add a new one and upcast instead.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.money import Money
from schemas.promo import Discount

PaymentStatus = Literal[
    "requested",  # the ledger asked the gateway; no provider answer yet
    "unknown",  # a provider call timed out or failed with 5xx: outcome not known yet
    "pending",  # created at the provider, waiting for the user (3-DS) or the bank
    "waiting_for_capture",
    "succeeded",
    "canceled",
]
TERMINAL_PAYMENT_STATUSES: frozenset[str] = frozenset({"succeeded", "canceled"})
ProviderStatus = Literal["pending", "waiting_for_capture", "succeeded", "canceled"]


class ReceiptCustomer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who a 54-FZ receipt is sent to (issue 16): an email or a phone (digits, E.164 without
    the plus), as YooKassa's ``receipt.customer`` takes them. Carried by the command that
    names it into the payment or refund request, and kept in the subscription's state for
    renewals and refunds (schemas/receipts.py builds the receipt)."""

    email: str | None = None
    phone: str | None = None


# ---------------------------------------------------------------- commands (billing.commands)
class Command(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    command_id: str
    subscription_id: str
    issued_at: int


class PaySubscription(Command, tag="PaySubscription", frozen=True):
    """Pay for a plan. Price and period come from the server's catalogue, never the client."""

    user_id: str
    payment_id: str
    plan_id: str
    amount: Money
    period_months: int
    return_url: str
    description: str
    save_payment_method: bool = True
    capture: bool = True  # False: two-stage (held, then captured or released)
    price_version: int = 0
    # The caller asked for the plan's free trial (its days, from the catalogue): nothing is
    # charged now; the card is verified by a small hold that is released, and saved for the
    # first charge at the trial's end. The ledger refuses it for a user who ever had a trial
    # or access (one trial per user, ever).
    trial_days: int = 0
    # The receipt's contact (request, profile or token; None: the state's, if any).
    customer: ReceiptCustomer | None = None
    # A promo code redeemed at intake (issue 16): ``amount`` stays the plan's price; the
    # ledger charges ``schemas.promo.charge_for(amount, promo)`` (the quote's function).
    promo: Discount | None = None


class AddPaymentMethod(Command, tag="AddPaymentMethod", frozen=True):
    """Save a new card to the wallet: a small two-stage hold the user confirms, released at
    once (nothing is charged); the saved method becomes the one renewals use."""

    user_id: str
    payment_id: str  # the verification hold
    return_url: str
    currency: str = "RUB"


class ManagePaymentMethod(Command, tag="ManagePaymentMethod", frozen=True):
    """Make a saved method the one renewals charge (``default``), or forget it (``delete``:
    never charged again; with none left the next renewal goes to dunning)."""

    user_id: str
    method_id: str
    action: Literal["default", "delete"]
    actor: str = "user"


class SweepPayment(Command, tag="SweepPayment", frozen=True):
    """Issued by the sweeper timer for a payment whose outcome is overdue. Its id is derived
    from (payment, attempt), so two timers or two workers firing collapse into one."""

    payment_id: str
    attempt: int


class RefundPayment(Command, tag="RefundPayment", frozen=True):
    """Refund (part of) a succeeded payment. ``amount`` None = everything still refundable.
    The ledger enforces the refundable amount, serially per subscription."""

    user_id: str
    refund_id: str
    payment_id: str
    amount: Money | None = None
    reason: str = ""
    actor: str = "user"  # "user", "admin:<id>" or "reconciler"
    # Reconciliation's duplicate_charge repair: refund this provider object (a second charge
    # under the same payment id), in full, not the one the ledger recorded.
    duplicate_of_provider_id: str | None = None
    customer: ReceiptCustomer | None = None  # the refund receipt's contact (else the state's)


class SweepRefund(Command, tag="SweepRefund", frozen=True):
    """The sweeper's re-drive of a refund whose outcome is overdue; id from (refund, attempt)."""

    refund_id: str
    attempt: int


class SetAutoRenew(Command, tag="SetAutoRenew", frozen=True):
    """Turn auto-renewal off (cancel at period end) or back on."""

    user_id: str
    enabled: bool
    actor: str = "user"
    reason: str = ""


class PriceQuote(msgspec.Struct, frozen=True, kw_only=True):
    """A plan's price in force at a moment (from the catalogue's effective-dated versions)."""

    plan_id: str
    amount: Money
    period_months: int
    price_version: int = 0


class SubscriptionDue(Command, tag="SubscriptionDue", frozen=True):
    """Issued by the ledger's timer when something is due (renewal reminder, renewal charge,
    dunning retry, lapse at period end). Its id is derived from (subscription, kind, due_at):
    two timers or two workers collapse into one, and a stale one (state moved on) applies
    nothing. A charge carries the price in force, looked up by the timer in the catalogue."""

    kind: Literal["remind", "renew", "retry", "lapse", "capture", "release"]
    due_at: int
    price: PriceQuote | None = None


class RetryPayment(Command, tag="RetryPayment", frozen=True):
    """Pay again for what a canceled payment was for (a new payment, new provider key)."""

    user_id: str
    retry_of: str  # the canceled payment
    payment_id: str
    price: PriceQuote
    return_url: str
    description: str


class ChangePlan(Command, tag="ChangePlan", frozen=True):
    """Switch plan. A dearer plan starts at once, its price less the unused part of the
    current period (proration); a cheaper one starts at the period end."""

    user_id: str
    payment_id: str  # the upgrade charge, if one is needed
    price: PriceQuote
    return_url: str
    description: str


class SettlePayment(Command, tag="SettlePayment", frozen=True):
    """Two-stage payments: capture or release (cancel) a payment held waiting_for_capture.
    Sent by an admin, or by the ledger's timer (auto-capture, release before the hold ends)."""

    user_id: str
    payment_id: str
    action: Literal["capture", "cancel"]
    actor: str
    reason: str = ""


class AdminAdjust(Command, tag="AdminAdjust", frozen=True):
    """An admin's manual action, with who and why (the event log is the audit trail).
    ``extend``: add ``days`` to the current period; ``grant``: a period of ``plan_id`` from
    now or from the current end; ``cancel``: end access at once and stop renewals."""

    user_id: str
    action: Literal["extend", "grant", "cancel"]
    actor: str
    reason: str
    days: int = 0
    plan_id: str | None = None
    period_months: int = 0


AnyCommand = (
    PaySubscription
    | SweepPayment
    | RefundPayment
    | SweepRefund
    | SetAutoRenew
    | SubscriptionDue
    | RetryPayment
    | ChangePlan
    | AdminAdjust
    | SettlePayment
    | AddPaymentMethod
    | ManagePaymentMethod
)


# ------------------------------------------------------ provider events (billing.provider-events)
class ProviderEvent(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    observation_id: str
    subscription_id: str
    observed_at: int
    source: Literal["gateway", "webhook", "poll", "reconciliation"]


class MethodDetails(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What YooKassa returns as displayable about a saved method, and nothing more (never a
    card number): shown in the wallet."""

    type: str = "bank_card"
    title: str | None = None
    first6: str | None = None
    last4: str | None = None
    expiry_month: str | None = None
    expiry_year: str | None = None
    card_type: str | None = None
    issuer_country: str | None = None
    issuer_name: str | None = None


class PaymentObserved(ProviderEvent, tag="PaymentObserved", frozen=True):
    """The provider's view of one payment, re-read from its API (never trusted unread)."""

    payment_id: str
    provider_payment_id: str
    status: ProviderStatus
    amount: Money
    paid: bool = False
    confirmation_url: str | None = None
    cancellation_party: str | None = None
    cancellation_reason: str | None = None
    payment_method_id: str | None = None
    payment_method_saved: bool = False
    payment_method: MethodDetails | None = None  # displayable details, if the provider gave them
    # The 54-FZ receipt's registration at the provider: pending | succeeded | canceled.
    receipt_registration: str | None = None


# PaymentCallFailed/RefundCallFailed.error_code when the gateway left a request unknown because
# it is past the provider's key window and no provider object carries its id (invariant 7).
KEY_WINDOW_EXPIRED = "idempotence_window_expired"


class PaymentCallFailed(ProviderEvent, tag="PaymentCallFailed", frozen=True):
    """A provider call gave no usable answer. ``unknown``: timeout/5xx/connection (the charge
    may exist; retry with the same key). ``rejected``: a definite 4xx (nothing was created)."""

    payment_id: str
    outcome: Literal["unknown", "rejected"]
    error_code: str
    error: str
    attempt: int


class RefundObserved(ProviderEvent, tag="RefundObserved", frozen=True):
    """The provider's view of one refund."""

    refund_id: str
    payment_id: str
    provider_refund_id: str
    status: Literal["pending", "succeeded", "canceled"]
    amount: Money
    cancellation_reason: str | None = None
    receipt_registration: str | None = None  # the refund receipt's registration


class RefundCallFailed(ProviderEvent, tag="RefundCallFailed", frozen=True):
    refund_id: str
    payment_id: str
    outcome: Literal["unknown", "rejected"]
    error_code: str
    error: str
    attempt: int


AnyProviderEvent = PaymentObserved | PaymentCallFailed | RefundObserved | RefundCallFailed


# -------------------------------------------------------------- domain events (billing.events)
class PaymentRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the gateway needs to build the provider request. It never changes for a
    payment, so every retry sends the same body under the same Idempotence-Key."""

    payment_id: str
    command_id: str
    user_id: str
    plan_id: str
    amount: Money
    period_months: int
    return_url: str
    description: str
    save_payment_method: bool = True
    capture: bool = True
    payment_method_id: str | None = None  # set: an autopayment with a saved method
    # trial: the hold that verifies and saves the card of a free trial; verify: the same for
    # a card added to the wallet. Both are released, never captured.
    kind: Literal["purchase", "renewal", "upgrade", "retry", "trial", "verify"] = "purchase"
    price_version: int = 0
    plan_amount: Money | None = None  # the plan's full price when the charge differs (upgrade)
    # Upgrade: the credit taken from each earlier payment (payment id -> minor units); the
    # charge is ``plan_amount`` less their sum.
    credits: dict[str, int] = {}
    trial_days: int = 0  # kind trial: the trial's length
    # The 54-FZ receipt's contact, fixed with the request (the gateway builds the receipt
    # from the request, so every retry sends the same body).
    customer: ReceiptCustomer | None = None
    # The promo discount this charge applied (``plan_amount`` is then the full price and
    # ``amount`` = ``charge_for(plan_amount, promo)``); its ``periods`` as before this charge.
    promo: Discount | None = None


class Event(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    event_id: str
    subscription_id: str
    user_id: str
    version: int
    occurred_at: int
    causation_id: str


class PaymentRequested(Event, tag="PaymentRequested", frozen=True):
    request: PaymentRequest
    deadline_at: int  # no provider outcome by then: the sweeper re-drives it


class PaymentRedriven(Event, tag="PaymentRedriven", frozen=True):
    """The outcome is overdue: the gateway re-reads (known provider id) or re-sends the same
    create (same key)."""

    request: PaymentRequest
    attempt: int
    requested_at: int
    deadline_at: int
    provider_payment_id: str | None = None


class PaymentRejected(Event, tag="PaymentRejected", frozen=True):
    """The command was refused by the ledger; nothing was sent to the provider."""

    command_id: str
    payment_id: str
    reason: str
    detail: str = ""


class PaymentPending(Event, tag="PaymentPending", frozen=True):
    payment_id: str
    provider_payment_id: str
    status: Literal["pending", "waiting_for_capture"]
    confirmation_url: str | None = None


class PaymentSettleRequested(Event, tag="PaymentSettleRequested", frozen=True):
    """Capture or cancel a held payment at the provider (Idempotence-Key derived from the
    payment, the action and the attempt; the gateway re-reads first on a re-drive)."""

    payment_id: str
    command_id: str
    provider_payment_id: str
    action: Literal["capture", "cancel"]
    amount: Money
    attempt: int
    deadline_at: int
    actor: str
    reason: str = ""


class PaymentSettleRejected(Event, tag="PaymentSettleRejected", frozen=True):
    command_id: str
    payment_id: str
    reason: str


class PaymentOutcomeUnknown(Event, tag="PaymentOutcomeUnknown", frozen=True):
    payment_id: str
    attempt: int
    error: str
    # Set when the provider answered with something we did not ask for (another amount or
    # currency): the payment is escalated, not granted, and waits for reconciliation.
    escalated: bool = False
    provider_payment_id: str | None = None
    # Past the provider's key window with nothing found: no more re-drives (each would only
    # search again); the request is reconciliation's to settle. A late outcome still applies.
    final: bool = False


class PaymentSucceeded(Event, tag="PaymentSucceeded", frozen=True):
    payment_id: str
    command_id: str
    provider_payment_id: str
    amount: Money
    payment_method_id: str | None = None  # a method this payment saved (the new default)
    payment_method: MethodDetails | None = None  # its displayable details
    receipt_registration: str | None = None  # the provider's receipt status when it succeeded


# PaymentCanceled.reason of a card check (trial, wallet) released by us as intended: not a
# failed payment, nobody is told.
CARD_CHECK_RELEASED = "card_check_released"


class PaymentCanceled(Event, tag="PaymentCanceled", frozen=True):
    payment_id: str
    command_id: str
    provider_payment_id: str | None
    reason: str
    party: str | None = None


class SubscriptionActivated(Event, tag="SubscriptionActivated", frozen=True):
    """Access granted (or extended, when stacked after the current period)."""

    payment_id: str
    plan_id: str
    period_start: int
    period_end: int
    extended: bool = False
    # An upgrade replaces the running period: the payments it took credit from now pay only
    # up to its start (payment id -> their new period end).
    supersedes: dict[str, int] = {}
    # The promo discount left for the renewals after this period (issue 16; None: none).
    promo: Discount | None = None


class TrialStarted(Event, tag="TrialStarted", frozen=True):
    """The card was verified (held, saved, the hold released): access until ``period_end``
    without a charge; the first charge, at the plan's price, is due then (dunning as for any
    renewal). Once per user, ever."""

    payment_id: str  # the verification hold
    command_id: str
    plan_id: str
    period_start: int
    period_end: int
    amount: Money  # what the first charge will be
    payment_method_id: str


class PaymentMethodSaved(Event, tag="PaymentMethodSaved", frozen=True):
    """A card check (a trial's, or the wallet's) saved a method: it joins the wallet;
    ``default`` makes it the one renewals use. (A paid purchase that saves one says so on its
    PaymentSucceeded.)"""

    method_id: str
    payment_id: str
    default: bool = True
    details: MethodDetails | None = None


class PaymentMethodChanged(Event, tag="PaymentMethodChanged", frozen=True):
    """The user (or an admin) made a method the default, or deleted it. ``default_method``
    is the method renewals use afterwards (None: none left)."""

    command_id: str
    method_id: str
    action: Literal["default", "delete"]
    actor: str
    default_method: str | None = None


class PaymentMethodRejected(Event, tag="PaymentMethodRejected", frozen=True):
    command_id: str
    method_id: str
    reason: str


class RefundRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What the gateway needs for a refund; fixed before the first attempt (same key, same
    body on every retry)."""

    refund_id: str
    command_id: str
    payment_id: str
    provider_payment_id: str
    amount: Money
    reason: str = ""
    actor: str = "user"
    duplicate: bool = False  # refunds a duplicate charge: our payment's books are untouched
    # The refund receipt: its contact and what the refunded payment paid for.
    customer: ReceiptCustomer | None = None
    plan_id: str = ""
    period_months: int = 0


class RefundRequested(Event, tag="RefundRequested", frozen=True):
    request: RefundRequest
    deadline_at: int


class RefundRedriven(Event, tag="RefundRedriven", frozen=True):
    request: RefundRequest
    attempt: int
    requested_at: int
    deadline_at: int
    provider_refund_id: str | None = None


class RefundRejected(Event, tag="RefundRejected", frozen=True):
    """Refused by the ledger (nothing sent): not refundable, too much, unknown payment."""

    command_id: str
    refund_id: str
    payment_id: str
    reason: str
    detail: str = ""


class RefundSucceeded(Event, tag="RefundSucceeded", frozen=True):
    refund_id: str
    command_id: str
    payment_id: str
    provider_refund_id: str
    amount: Money
    fully_refunded: bool  # the payment has nothing left to refund
    receipt_registration: str | None = None


class RefundFailed(Event, tag="RefundFailed", frozen=True):
    refund_id: str
    command_id: str
    payment_id: str
    provider_refund_id: str | None
    reason: str


class RefundOutcomeUnknown(Event, tag="RefundOutcomeUnknown", frozen=True):
    refund_id: str
    attempt: int
    error: str
    final: bool = False  # see PaymentOutcomeUnknown.final


class AutoRenewChanged(Event, tag="AutoRenewChanged", frozen=True):
    command_id: str
    enabled: bool
    actor: str
    reason: str = ""


class RenewalFailed(Event, tag="RenewalFailed", frozen=True):
    """A renewal charge was declined, or could not be made (``no_payment_method``: the
    wallet is empty; ``payment_id`` is then empty). ``hard``: retrying cannot help (dunning
    stops)."""

    payment_id: str
    reason: str
    hard: bool
    attempt: int
    next_retry_at: int | None


class SubscriptionPastDue(Event, tag="SubscriptionPastDue", frozen=True):
    """The period ended without a successful renewal; dunning retries continue."""

    period_end: int
    next_retry_at: int | None


class SubscriptionExpired(Event, tag="SubscriptionExpired", frozen=True):
    reason: Literal["auto_renew_off", "renewal_failed", "no_payment_method"]
    period_end: int


class SubscriptionCanceled(Event, tag="SubscriptionCanceled", frozen=True):
    """Access ended before the period's end: the current period's payment fully refunded, or
    an admin canceled it."""

    payment_id: str
    reason: str
    access_until: int
    actor: str = "system"
    command_id: str = ""  # the admin command that canceled it, if any
    # Payments whose periods now end at ``access_until`` (payment id -> new period end): the
    # days after it are no longer theirs, so a new purchase never pays for them twice.
    supersedes: dict[str, int] = {}


class AccessShortened(Event, tag="AccessShortened", frozen=True):
    """A stacked (future) period's payment was fully refunded: access ends that much sooner.
    The window in force after it is [period_start, period_end)."""

    payment_id: str
    plan_id: str | None
    period_start: int
    period_end: int
    reason: str
    # The periods paid after the returned one move up by this much (they start sooner).
    moved: list[str] = []
    moved_by_ms: int = 0


class RenewalUpcoming(Event, tag="RenewalUpcoming", frozen=True):
    """Reminder, sent once per period, a few days before a renewal charge."""

    period_end: int
    plan_id: str
    amount: Money


class PlanChangeScheduled(Event, tag="PlanChangeScheduled", frozen=True):
    """A downgrade: the next renewal charges this plan."""

    command_id: str
    plan_id: str
    amount: Money
    period_months: int
    effective_at: int


class PlanChangeRejected(Event, tag="PlanChangeRejected", frozen=True):
    command_id: str
    reason: str
    detail: str = ""


class PeriodAdjusted(Event, tag="PeriodAdjusted", frozen=True):
    """An admin extended or granted access (no payment): the audit trail says who and why."""

    command_id: str
    action: Literal["extend", "grant"]
    actor: str
    reason: str
    plan_id: str | None
    period_start: int
    period_end: int


class AdminActionRejected(Event, tag="AdminActionRejected", frozen=True):
    command_id: str
    action: str
    actor: str
    reason: str


AnyEvent = (
    PaymentRequested
    | PaymentRedriven
    | PaymentRejected
    | PaymentPending
    | PaymentOutcomeUnknown
    | PaymentSucceeded
    | PaymentCanceled
    | SubscriptionActivated
    | RefundRequested
    | RefundRedriven
    | RefundRejected
    | RefundSucceeded
    | RefundFailed
    | RefundOutcomeUnknown
    | AutoRenewChanged
    | RenewalFailed
    | SubscriptionPastDue
    | SubscriptionExpired
    | SubscriptionCanceled
    | RenewalUpcoming
    | AccessShortened
    | PaymentSettleRequested
    | PaymentSettleRejected
    | PlanChangeScheduled
    | PlanChangeRejected
    | PeriodAdjusted
    | AdminActionRejected
    | TrialStarted
    | PaymentMethodSaved
    | PaymentMethodChanged
    | PaymentMethodRejected
)

_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.json.Decoder(AnyCommand)
_provider_decoder = msgspec.json.Decoder(AnyProviderEvent)
_event_decoder = msgspec.json.Decoder(AnyEvent)
_ledger_input_decoder = msgspec.json.Decoder(AnyCommand | AnyProviderEvent)


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_command(data: bytes) -> AnyCommand:
    return _command_decoder.decode(data)  # type: ignore[no-any-return]


def decode_provider_event(data: bytes) -> AnyProviderEvent:
    return _provider_decoder.decode(data)  # type: ignore[no-any-return]


def decode_event(data: bytes) -> AnyEvent:
    return _event_decoder.decode(data)  # type: ignore[no-any-return]


def decode_ledger_input(data: bytes) -> AnyCommand | AnyProviderEvent:
    """The ledger consumes commands and provider events; the tags are disjoint."""
    return _ledger_input_decoder.decode(data)  # type: ignore[no-any-return]


DecodeError = msgspec.DecodeError
ValidationError = msgspec.ValidationError
