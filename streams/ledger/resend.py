"""What the ledger re-emits for a duplicate input, pure.

A command or provider event seen again re-emits the events it produced (same ids, same
versions), so whatever a crash lost downstream is produced again. For the request events
(the gateway's work) that is only right while the request still waits for its first
answer: once the record has moved on (an outcome, a provider id, a later re-drive, or an
``unknown`` the sweeper now re-drives), a re-emitted request would make the gateway call the
provider again for an outcome already known, and, past the provider's key window, is exactly
the path to a second charge (ARCHITECTURE.md invariant 7; the gateway's guard is the other
half). The other events are facts the projection deduplicates by version: always re-emitted.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.messages import (
    AnyEvent,
    PaymentRedriven,
    PaymentRequested,
    PaymentSettleRequested,
    RefundRedriven,
    RefundRequested,
)
from schemas.state import SubscriptionState


def still_awaited(state: SubscriptionState, event: AnyEvent) -> bool:
    """True when ``event`` is a request the gateway may still owe an answer to (or is no
    request at all); False when its record in ``state`` has moved on."""
    if isinstance(event, PaymentRequested | PaymentRedriven):
        rec = state.payments.get(event.request.payment_id)
        attempt = event.attempt if isinstance(event, PaymentRedriven) else 0
        return (
            rec is not None
            and rec.status == "requested"
            and rec.provider_payment_id is None
            and rec.attempts == attempt
        )
    if isinstance(event, RefundRequested | RefundRedriven):
        ref = state.refunds.get(event.request.refund_id)
        attempt = event.attempt if isinstance(event, RefundRedriven) else 0
        return (
            ref is not None
            and ref.status == "requested"
            and ref.provider_refund_id is None
            and ref.attempts == attempt
        )
    if isinstance(event, PaymentSettleRequested):
        rec = state.payments.get(event.payment_id)
        return (
            rec is not None
            and rec.status == "waiting_for_capture"
            and rec.settle_action == event.action
            and rec.settle_attempts == event.attempt
        )
    return True


def to_resend(state: SubscriptionState, stored: Sequence[AnyEvent]) -> list[AnyEvent]:
    """The stored events of a duplicate input worth sending again, in their order. A
    request dropped here is not lost: the sweeper re-drives every record still open."""
    return [e for e in stored if still_awaited(state, e)]
