"""Gateway agent: turns PaymentRequested / PaymentRedriven events into provider calls and
publishes the normalised outcome to billing.provider-events.

The provider Idempotence-Key is the payment id, fixed before the first attempt, so a retry, a
replay after a crash or a re-drive can never create a second charge within YooKassa's 24-hour
key window. Past that window a create is not repeated: the payment stays ``unknown`` for the
reconciler to settle. A timeout or 5xx is an unknown outcome, never a failure.
"""

from __future__ import annotations

import logging
from typing import Any

from billing.config import Settings
from providers.port import PaymentProvider, ProviderError
from providers.yookassa_adapter import normalise
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
from schemas.periods import now_ms
from streams.topics import Topics

log = logging.getLogger(__name__)

IDEMPOTENCE_WINDOW_MS = 23 * 3600 * 1000  # YooKassa honours a key 24 h; keep a margin
_WANTED = (
    b'{"type":"PaymentRequested"',
    b'{"type":"PaymentRedriven"',
    b'{"type":"RefundRequested"',
    b'{"type":"RefundRedriven"',
    b'{"type":"PaymentSettleRequested"',
)


async def execute(
    provider: PaymentProvider, event: PaymentRequested | PaymentRedriven
) -> PaymentObserved | PaymentCallFailed:
    """One provider call for one request event; every failure becomes a provider event."""
    request = event.request
    attempt = event.attempt if isinstance(event, PaymentRedriven) else 0
    try:
        if isinstance(event, PaymentRedriven) and event.provider_payment_id:
            payment = await provider.get_payment(event.provider_payment_id)
        elif (
            isinstance(event, PaymentRedriven)
            and now_ms() - event.requested_at > IDEMPOTENCE_WINDOW_MS
        ):
            return _failed(
                event,
                attempt,
                "unknown",
                "idempotence_window_expired",
                "create not repeated after the provider's key window",
            )
        else:
            payment = await provider.create_payment(request, event.subscription_id)
    except ProviderError as exc:
        outcome = "unknown" if exc.unknown else "rejected"
        log.warning("provider call for payment %s: %s (%s)", request.payment_id, exc.code, outcome)
        return _failed(event, attempt, outcome, exc.code, str(exc))
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
    provider: PaymentProvider, event: RefundRequested | RefundRedriven
) -> RefundObserved | RefundCallFailed:
    """One provider call for one refund event (Idempotence-Key = refund id)."""
    req = event.request
    attempt = event.attempt if isinstance(event, RefundRedriven) else 0

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

    try:
        if isinstance(event, RefundRedriven) and event.provider_refund_id:
            refund = await provider.get_refund(event.provider_refund_id)
        elif (
            isinstance(event, RefundRedriven)
            and now_ms() - event.requested_at > IDEMPOTENCE_WINDOW_MS
        ):
            return failed("unknown", "idempotence_window_expired", "refund not repeated")
        else:
            refund = await provider.create_refund(
                req.provider_payment_id,
                req.amount,
                refund_id=req.refund_id,
                description=req.reason,
                metadata={"subscription_id": event.subscription_id, "payment_id": req.payment_id},
            )
    except ProviderError as exc:
        outcome = "unknown" if exc.unknown else "rejected"
        log.warning("provider refund %s: %s (%s)", req.refund_id, exc.code, outcome)
        return failed(outcome, exc.code, str(exc))
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
    app: Any, topics: Topics, provider: PaymentProvider, settings: Settings
) -> Any:
    @app.agent(topics.events, name="gateway", concurrency=settings.gateway_concurrency)
    async def gateway(stream: Any) -> None:
        async for event in stream.events():
            value: bytes = event.value
            if not value.startswith(_WANTED):
                continue
            decoded = decode_event(value)
            outcome: PaymentObserved | PaymentCallFailed | RefundObserved | RefundCallFailed
            if isinstance(decoded, PaymentRequested | PaymentRedriven):
                outcome = await execute(provider, decoded)
            elif isinstance(decoded, RefundRequested | RefundRedriven):
                outcome = await execute_refund(provider, decoded)
            elif isinstance(decoded, PaymentSettleRequested):
                outcome = await execute_settle(provider, decoded)
            else:
                continue
            await topics.provider_events.send(key=event.key, value=encode(outcome))

    return gateway
