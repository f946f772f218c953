"""Gateway agent: turns PaymentRequested / PaymentRedriven (and refund, settle) events into
provider calls and publishes the normalised outcome to billing.provider-events.

The provider Idempotence-Key is the payment id (refund id), fixed before the first attempt,
so a retry, a replay after a crash or a re-drive can never create a second charge while the
provider honours the key. It honours it 24 h only, so no create is sent for a request older
than the configured safe window, whatever brought it back: past it the outcome is read (by
provider id, else by searching the provider's list for our id), else left ``unknown`` for
reconciliation (``streams.gateway.window`` decides; this module does the I/O). A timeout or
5xx is an unknown outcome, never a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from billing.clock import now_ms
from billing.config import WorkerSettings
from providers.port import (
    PaymentProvider,
    ProviderError,
    ProviderPayment,
    ProviderRefund,
    ProviderRejected,
    SearchingProvider,
    normalise,
)
from schemas.ids import derived_id, observation_id_for
from schemas.messages import (
    PaymentCallFailed,
    PaymentObserved,
    PaymentRedriven,
    PaymentRequest,
    PaymentRequested,
    PaymentSettleRequested,
    RefundCallFailed,
    RefundObserved,
    RefundRedriven,
    RefundRequest,
    RefundRequested,
    decode_event,
    encode,
)
from schemas.periods import ms_to_dt
from schemas.receipts import (
    Receipt,
    ReceiptError,
    ReceiptPolicy,
    payment_receipt,
    refund_receipt,
)
from streams.gateway.inflight import RequestGuard
from streams.gateway.window import (
    KEY_EXPIRED,
    Step,
    give_up_reason,
    next_step,
    search_range,
)
from streams.ledger.resend import gateway_skips
from streams.topics import Topics

log = logging.getLogger(__name__)
T = TypeVar("T")

_WANTED = (
    b'{"type":"PaymentRequested"',
    b'{"type":"PaymentRedriven"',
    b'{"type":"RefundRequested"',
    b'{"type":"RefundRedriven"',
    b'{"type":"PaymentSettleRequested"',
)


def window_ms_of(settings: WorkerSettings) -> int:
    return int(settings.provider_key_safe_window_s * 1000)


# PaymentCallFailed/RefundCallFailed.error_code of a create never sent: receipts are on and
# the request has no valid contact (YooKassa would answer 400; nothing is created).
RECEIPT_CONTACT_MISSING = "receipt_contact_missing"
NO_RECEIPTS = ReceiptPolicy()


def receipt_for(request: PaymentRequest | RefundRequest, receipts: ReceiptPolicy) -> Receipt | None:
    """The request's 54-FZ receipt (None: receipts off, or a card check); a request that
    cannot have one is a definite refusal of the create, never a call without it."""
    try:
        if isinstance(request, PaymentRequest):
            return payment_receipt(request, receipts)
        return refund_receipt(request, receipts)
    except ReceiptError as exc:
        raise ProviderRejected(str(exc), code=RECEIPT_CONTACT_MISSING) from exc


async def _create_payment(
    provider: PaymentProvider,
    request: PaymentRequest,
    subscription_id: str,
    receipts: ReceiptPolicy,
) -> ProviderPayment:
    receipt = receipt_for(request, receipts)
    if receipt is None:  # the port's plain call: fakes without receipts keep working
        return await provider.create_payment(request, subscription_id)
    return await provider.create_payment(request, subscription_id, receipt=receipt)


async def execute(
    provider: SearchingProvider,
    event: PaymentRequested | PaymentRedriven,
    *,
    window_ms: int,
    receipts: ReceiptPolicy = NO_RECEIPTS,
) -> PaymentObserved | PaymentCallFailed:
    """One provider call for one request event; every failure becomes a provider event."""
    request = event.request
    if isinstance(event, PaymentRedriven):
        attempt, requested_at, known = event.attempt, event.requested_at, event.provider_payment_id
    else:
        attempt, requested_at, known = 0, event.occurred_at, None
    payment = await _in_key_window(
        f"payment {request.payment_id}",
        requested_at=requested_at,
        known=known,
        window_ms=window_ms,
        reread=provider.get_payment,
        create=lambda: _create_payment(provider, request, event.subscription_id, receipts),
        search=lambda gte, lt: provider.find_payment(request.payment_id, gte, lt),
    )
    if isinstance(payment, _Failure):
        return _failed(event, attempt, payment.outcome, payment.code, payment.error)
    return _observed(event, attempt, payment)


@dataclass(frozen=True)
class _Failure:
    outcome: str
    code: str
    error: str


async def _in_key_window(
    what: str,
    *,
    requested_at: int,
    known: str | None,
    window_ms: int,
    reread: Callable[[str], Awaitable[T]],
    create: Callable[[], Awaitable[T]],
    search: Callable[[datetime, datetime], Awaitable[T | None]],
) -> T | _Failure:
    """The provider's answer for one request (``what``: "payment <id>", "refund <id>") under
    the key-window policy: reread by provider id, create, or search the provider's list, as
    ``next_step`` says; past the window, or on a provider error, the failure to report."""
    now = now_ms()
    searched = False
    step: Step = "create"
    try:
        while True:
            step = next_step(
                requested_at=requested_at,
                now=now,
                window_ms=window_ms,
                provider_id=known,
                searched=searched,
            )
            if step == "reread":
                assert known is not None
                return await reread(known)
            if step == "create":
                return await create()
            if step == "search":
                gte, lt = search_range(requested_at, window_ms)
                found = await search(ms_to_dt(gte), ms_to_dt(lt))
                searched = True
                if found is not None:
                    return found
                continue
            reason = give_up_reason(requested_at, now, window_ms)
            log.warning("%s left unknown: %s", what, reason)
            return _Failure("unknown", KEY_EXPIRED, reason)
    except ProviderError as exc:
        outcome = _outcome(exc, step)
        log.warning("provider call for %s: %s (%s)", what, exc.code, outcome)
        return _Failure(outcome, exc.code, str(exc))


def _outcome(exc: ProviderError, step: Step) -> str:
    """Only a refused create is a definite "nothing was made"; a refused read or search says
    nothing about whether a charge exists, so it stays unknown."""
    return "rejected" if step == "create" and not exc.unknown else "unknown"


def _observed(
    event: PaymentRequested | PaymentRedriven, attempt: int, payment: ProviderPayment
) -> PaymentObserved | PaymentCallFailed:
    request = event.request
    try:
        observed = normalise(payment, source="gateway", observed_at=now_ms())
    except ValueError as exc:
        return _failed(event, attempt, "unknown", "provider_answer_invalid", str(exc))
    if (observed.payment_id, observed.subscription_id) != (
        request.payment_id,
        event.subscription_id,
    ):
        # The key was reused for another object: never attribute it to this payment.
        return _failed(
            event,
            attempt,
            "unknown",
            "provider_answer_mismatch",
            f"provider payment {payment.provider_payment_id} belongs to {observed.payment_id}",
        )
    return observed


def _failed(
    event: PaymentRequested | PaymentRedriven, attempt: int, outcome: str, code: str, error: str
) -> PaymentCallFailed:
    payment_id = event.request.payment_id
    return PaymentCallFailed(
        observation_id=derived_id(payment_id, f"callfail-{attempt}-{outcome}"),
        subscription_id=event.subscription_id,
        observed_at=now_ms(),
        source="gateway",
        payment_id=payment_id,
        outcome=outcome,  # type: ignore[arg-type]
        error_code=code,
        error=error[:500],
        attempt=attempt,
    )


async def execute_settle(
    provider: PaymentProvider, event: PaymentSettleRequested
) -> PaymentObserved | PaymentCallFailed:
    """Capture or cancel a held payment. The key is fixed per (payment, action), so a retry
    replays; a re-drive first re-reads, and only asks again while it is still held."""
    key = derived_id(event.payment_id, f"settle-{event.action}")
    attempt = event.attempt

    def failed(outcome: str, code: str, error: str) -> PaymentCallFailed:
        return PaymentCallFailed(
            observation_id=derived_id(event.payment_id, f"settle-{attempt}-{outcome}"),
            subscription_id=event.subscription_id,
            observed_at=now_ms(),
            source="gateway",
            payment_id=event.payment_id,
            outcome=outcome,  # type: ignore[arg-type]
            error_code=code,
            error=error[:500],
            attempt=attempt,
        )

    try:
        payment = None
        if attempt > 1:
            payment = await provider.get_payment(event.provider_payment_id)
        if payment is None or payment.status == "waiting_for_capture":
            if event.action == "capture":
                payment = await provider.capture_payment(
                    event.provider_payment_id, key=key, amount=event.amount
                )
            else:
                payment = await provider.cancel_payment(event.provider_payment_id, key=key)
    except ProviderError as exc:
        outcome = "unknown" if exc.unknown else "rejected"
        log.warning("provider %s of %s: %s (%s)", event.action, event.payment_id, exc.code, outcome)
        return failed(outcome, exc.code, str(exc))
    try:
        return normalise(payment, source="gateway", observed_at=now_ms())
    except ValueError as exc:
        return failed("unknown", "provider_answer_invalid", str(exc))


async def execute_refund(
    provider: SearchingProvider,
    event: RefundRequested | RefundRedriven,
    *,
    window_ms: int,
    receipts: ReceiptPolicy = NO_RECEIPTS,
) -> RefundObserved | RefundCallFailed:
    """One provider call for one refund event (Idempotence-Key = refund id), under the same
    key-window policy as payments."""
    req = event.request
    if isinstance(event, RefundRedriven):
        attempt, requested_at, known = event.attempt, event.requested_at, event.provider_refund_id
    else:
        attempt, requested_at, known = 0, event.occurred_at, None

    def failed(outcome: str, code: str, error: str) -> RefundCallFailed:
        return RefundCallFailed(
            observation_id=derived_id(req.refund_id, f"callfail-{attempt}-{outcome}"),
            subscription_id=event.subscription_id,
            observed_at=now_ms(),
            source="gateway",
            refund_id=req.refund_id,
            payment_id=req.payment_id,
            outcome=outcome,  # type: ignore[arg-type]
            error_code=code,
            error=error[:500],
            attempt=attempt,
        )

    refund = await _in_key_window(
        f"refund {req.refund_id}",
        requested_at=requested_at,
        known=known,
        window_ms=window_ms,
        reread=provider.get_refund,
        create=lambda: _create_refund(provider, event, receipts),
        search=lambda gte, lt: provider.find_refund(
            req.refund_id, req.provider_payment_id, gte, lt
        ),
    )
    if isinstance(refund, _Failure):
        return failed(refund.outcome, refund.code, refund.error)
    return _refund_observed(event, refund, failed)


async def _create_refund(
    provider: PaymentProvider, event: RefundRequested | RefundRedriven, receipts: ReceiptPolicy
) -> ProviderRefund:
    req = event.request
    receipt = receipt_for(req, receipts)
    extra = {"receipt": receipt} if receipt is not None else {}
    return await provider.create_refund(
        req.provider_payment_id,
        req.amount,
        refund_id=req.refund_id,
        description=req.reason,
        metadata={
            "subscription_id": event.subscription_id,
            "payment_id": req.payment_id,
            "refund_id": req.refund_id,
        },
        **extra,
    )


def _refund_observed(
    event: RefundRequested | RefundRedriven,
    refund: ProviderRefund,
    failed: Callable[[str, str, str], RefundCallFailed],
) -> RefundObserved | RefundCallFailed:
    req = event.request
    if refund.status not in ("pending", "succeeded", "canceled"):
        return failed("unknown", "provider_answer_invalid", f"refund status {refund.status!r}")
    return RefundObserved(
        observation_id=observation_id_for(refund.provider_refund_id, refund.status),
        subscription_id=event.subscription_id,
        observed_at=now_ms(),
        source="gateway",
        refund_id=req.refund_id,
        payment_id=req.payment_id,
        provider_refund_id=refund.provider_refund_id,
        status=refund.status,  # type: ignore[arg-type]
        amount=refund.amount,
        cancellation_reason=refund.cancellation_reason,
        receipt_registration=refund.receipt_registration,
    )


def guard_key(
    event: PaymentRequested | PaymentRedriven | RefundRequested | RefundRedriven,
) -> str | None:
    """The ``RequestGuard`` key of a request that would create (None: a read by a known
    provider id, never skipped)."""
    if isinstance(event, PaymentRedriven) and event.provider_payment_id:
        return None
    if isinstance(event, RefundRedriven) and event.provider_refund_id:
        return None
    if isinstance(event, PaymentRequested | PaymentRedriven):
        return f"payment:{event.request.payment_id}"
    return f"refund:{event.request.refund_id}"


def register_gateway(
    app: Any, topics: Topics, provider: SearchingProvider, settings: WorkerSettings
) -> Any:
    window_ms = window_ms_of(settings)
    receipts = settings.receipt_policy()
    # Shared by the agent's actors: one create per request in flight or answered lately.
    guard = RequestGuard(settings.payment_deadline_s)
    app.billing_gateway_guard = guard  # read by benches

    @app.agent(topics.events, name="gateway", concurrency=settings.gateway_concurrency)
    async def gateway(stream: Any) -> None:
        async for event in stream.events():
            value: bytes = event.value
            if not value.startswith(_WANTED) or gateway_skips(event.headers):
                continue
            decoded = decode_event(value)
            outcome: PaymentObserved | PaymentCallFailed | RefundObserved | RefundCallFailed
            if isinstance(decoded, PaymentRequested | PaymentRedriven):
                key = guard_key(decoded)
                if key is not None and not guard.begin(key):
                    log.info("payment %s: answered or in flight here, not sent again", key)
                    continue
                answered = False
                try:
                    outcome = await execute(
                        provider, decoded, window_ms=window_ms, receipts=receipts
                    )
                    answered = isinstance(outcome, PaymentObserved)
                finally:
                    if key is not None:
                        guard.end(key, answered=answered)
            elif isinstance(decoded, RefundRequested | RefundRedriven):
                key = guard_key(decoded)
                if key is not None and not guard.begin(key):
                    log.info("refund %s: answered or in flight here, not sent again", key)
                    continue
                answered = False
                try:
                    outcome = await execute_refund(
                        provider, decoded, window_ms=window_ms, receipts=receipts
                    )
                    answered = isinstance(outcome, RefundObserved)
                finally:
                    if key is not None:
                        guard.end(key, answered=answered)
            elif isinstance(decoded, PaymentSettleRequested):
                outcome = await execute_settle(provider, decoded)
            else:
                continue
            await topics.provider_events.send(key=event.key, value=encode(outcome))

    return gateway
