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
from collections.abc import Callable
from typing import Any

from billing.clock import now_ms
from billing.config import WorkerSettings
from providers.port import (
    PaymentProvider,
    ProviderError,
    ProviderPayment,
    ProviderRefund,
    SearchingProvider,
    normalise,
)
from schemas.ids import derived_id, observation_id_for
from schemas.messages import (
    PaymentCallFailed,
    PaymentObserved,
    PaymentRedriven,
    PaymentRequested,
    PaymentSettleRequested,
    RefundCallFailed,
    RefundObserved,
    RefundRedriven,
    RefundRequested,
    decode_event,
    encode,
)
from schemas.periods import ms_to_dt
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

_WANTED = (
    b'{"type":"PaymentRequested"',
    b'{"type":"PaymentRedriven"',
    b'{"type":"RefundRequested"',
    b'{"type":"RefundRedriven"',
    b'{"type":"PaymentSettleRequested"',
)


def window_ms_of(settings: WorkerSettings) -> int:
    return int(settings.provider_key_safe_window_s * 1000)


async def execute(
    provider: SearchingProvider,
    event: PaymentRequested | PaymentRedriven,
    *,
    window_ms: int,
) -> PaymentObserved | PaymentCallFailed:
    """One provider call for one request event; every failure becomes a provider event."""
    request = event.request
    if isinstance(event, PaymentRedriven):
        attempt, requested_at, known = event.attempt, event.requested_at, event.provider_payment_id
    else:
        attempt, requested_at, known = 0, event.occurred_at, None
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
                payment = await provider.get_payment(known)
            elif step == "create":
                payment = await provider.create_payment(request, event.subscription_id)
            elif step == "search":
                gte, lt = search_range(requested_at, window_ms)
                found = await provider.find_payment(request.payment_id, ms_to_dt(gte), ms_to_dt(lt))
                searched = True
                if found is None:
                    continue
                payment = found
            else:
                reason = give_up_reason(requested_at, now, window_ms)
                log.warning("payment %s left unknown: %s", request.payment_id, reason)
                return _failed(event, attempt, "unknown", KEY_EXPIRED, reason)
            break
    except ProviderError as exc:
        outcome = _outcome(exc, step)
        log.warning("provider call for payment %s: %s (%s)", request.payment_id, exc.code, outcome)
        return _failed(event, attempt, outcome, exc.code, str(exc))
    return _observed(event, attempt, payment)


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
                refund = await provider.get_refund(known)
            elif step == "create":
                refund = await provider.create_refund(
                    req.provider_payment_id,
                    req.amount,
                    refund_id=req.refund_id,
                    description=req.reason,
                    metadata={
                        "subscription_id": event.subscription_id,
                        "payment_id": req.payment_id,
                        "refund_id": req.refund_id,
                    },
                )
            elif step == "search":
                gte, lt = search_range(requested_at, window_ms)
                found = await provider.find_refund(
                    req.refund_id, req.provider_payment_id, ms_to_dt(gte), ms_to_dt(lt)
                )
                searched = True
                if found is None:
                    continue
                refund = found
            else:
                reason = give_up_reason(requested_at, now, window_ms)
                log.warning("refund %s left unknown: %s", req.refund_id, reason)
                return failed("unknown", KEY_EXPIRED, reason)
            break
    except ProviderError as exc:
        outcome = _outcome(exc, step)
        log.warning("provider refund %s: %s (%s)", req.refund_id, exc.code, outcome)
        return failed(outcome, exc.code, str(exc))
    return _refund_observed(event, refund, failed)


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
    )


def register_gateway(
    app: Any, topics: Topics, provider: SearchingProvider, settings: WorkerSettings
) -> Any:
    window_ms = window_ms_of(settings)

    @app.agent(topics.events, name="gateway", concurrency=settings.gateway_concurrency)
    async def gateway(stream: Any) -> None:
        async for event in stream.events():
            value: bytes = event.value
            if not value.startswith(_WANTED) or gateway_skips(event.headers):
                continue
            decoded = decode_event(value)
            outcome: PaymentObserved | PaymentCallFailed | RefundObserved | RefundCallFailed
            if isinstance(decoded, PaymentRequested | PaymentRedriven):
                outcome = await execute(provider, decoded, window_ms=window_ms)
            elif isinstance(decoded, RefundRequested | RefundRedriven):
                outcome = await execute_refund(provider, decoded, window_ms=window_ms)
            elif isinstance(decoded, PaymentSettleRequested):
                outcome = await execute_settle(provider, decoded)
            else:
                continue
            await topics.provider_events.send(key=event.key, value=encode(outcome))

    return gateway
