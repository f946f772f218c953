"""What the ledger re-emits for a duplicate input, pure.

A command or provider event seen again re-emits the events it produced (same ids, same
versions): that is how a crash that lost them downstream is healed, so every one of them goes
to the log again, unchanged. But a request event (the gateway's work) whose record has
moved on since (an outcome, a provider id, a later re-drive, an ``unknown`` the sweeper now
re-drives) must not make the gateway call the provider again for an outcome already known:
past the provider's key window that is exactly the path to a second charge (ARCHITECTURE.md
invariant 7; the gateway's own guard is the other half). Such an event is re-emitted with
the ``OUTCOME_KNOWN`` header, which the gateway skips. Not dropped: the state alone cannot
tell whether the first emission reached the log (a crash may have kept the changelog and
lost the events), and the log must fold to the state. A skipped request is not lost either:
the sweeper re-drives every record still open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from schemas.messages import (
    AnyEvent,
    PaymentRedriven,
    PaymentRequested,
    PaymentSettleRequested,
    RefundRedriven,
    RefundRequested,
)
from schemas.state import PaymentRecord, RefundRecord, SubscriptionState


def _unanswered(record: PaymentRecord | RefundRecord | None, attempt: int) -> bool:
    """The payment or refund is still requested, with no provider id, at ``attempt``."""
    if record is None:
        return False
    provider_id = (
        record.provider_payment_id
        if isinstance(record, PaymentRecord)
        else record.provider_refund_id
    )
    return record.status == "requested" and provider_id is None and record.attempts == attempt


def still_awaited(state: SubscriptionState, event: AnyEvent) -> bool:
    """True when ``event`` is a request the gateway may still owe an answer to (or is no
    request at all); False when its record in ``state`` has moved on."""
    if isinstance(event, PaymentRequested | PaymentRedriven):
        attempt = event.attempt if isinstance(event, PaymentRedriven) else 0
        return _unanswered(state.payments.get(event.request.payment_id), attempt)
    if isinstance(event, RefundRequested | RefundRedriven):
        attempt = event.attempt if isinstance(event, RefundRedriven) else 0
        return _unanswered(state.refunds.get(event.request.refund_id), attempt)
    if isinstance(event, PaymentSettleRequested):
        rec = state.payments.get(event.payment_id)
        return (
            rec is not None
            and rec.status == "waiting_for_capture"
            and rec.settle_action == event.action
            and rec.settle_attempts == event.attempt
        )
    return True


# Kafka header on a re-emitted request the gateway must not act on (value b"1").
OUTCOME_KNOWN = "billing-outcome-known"


def resend_plan(
    state: SubscriptionState, stored: Sequence[AnyEvent]
) -> list[tuple[AnyEvent, bool]]:
    """Every stored event of a duplicate input, in order, each with whether the gateway may
    act on it (False: send it with the ``OUTCOME_KNOWN`` header)."""
    return [(e, still_awaited(state, e)) for e in stored]


def to_resend(state: SubscriptionState, stored: Sequence[AnyEvent]) -> list[AnyEvent]:
    """The stored events the gateway may act on (the others go to the log only)."""
    return [e for e, act in resend_plan(state, stored) if act]


def gateway_skips(headers: Mapping[str, bytes] | None) -> bool:
    """The gateway's side of the header: a re-emitted request whose outcome is known."""
    return headers is not None and headers.get(OUTCOME_KNOWN) == b"1"
