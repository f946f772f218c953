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

Nor is a request re-sent while it is still in flight (``now`` before its record's deadline):
a command seen again at a peak (the sweeper or the relay re-sending while the ledger lags)
would otherwise call the provider a second time for a request whose answer is on its way;
if that answer never comes, the deadline's re-drive asks again (issue 13).
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


def _unanswered(record: PaymentRecord | RefundRecord | None, attempt: int, now: int | None) -> bool:
    """The payment or refund is still requested, with no provider id, at ``attempt``, and
    (when ``now`` is given) past the deadline of that attempt: before it, the first emission
    is still being answered."""
    if record is None:
        return False
    if now is not None and record.deadline_at is not None and now < record.deadline_at:
        return False
    provider_id = (
        record.provider_payment_id
        if isinstance(record, PaymentRecord)
        else record.provider_refund_id
    )
    return record.status == "requested" and provider_id is None and record.attempts == attempt


def still_awaited(state: SubscriptionState, event: AnyEvent, now: int | None = None) -> bool:
    """True when ``event`` is a request the gateway may still owe an answer to (or is no
    request at all); False when its record in ``state`` has moved on, or is still within
    its deadline at ``now`` (in flight)."""
    if isinstance(event, PaymentRequested | PaymentRedriven):
        attempt = event.attempt if isinstance(event, PaymentRedriven) else 0
        return _unanswered(state.payments.get(event.request.payment_id), attempt, now)
    if isinstance(event, RefundRequested | RefundRedriven):
        attempt = event.attempt if isinstance(event, RefundRedriven) else 0
        return _unanswered(state.refunds.get(event.request.refund_id), attempt, now)
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
    state: SubscriptionState, stored: Sequence[AnyEvent], now: int | None = None
) -> list[tuple[AnyEvent, bool]]:
    """Every stored event of a duplicate input, in order, each with whether the gateway may
    act on it (False: send it with the ``OUTCOME_KNOWN`` header)."""
    return [(e, still_awaited(state, e, now)) for e in stored]


def to_resend(
    state: SubscriptionState, stored: Sequence[AnyEvent], now: int | None = None
) -> list[AnyEvent]:
    """The stored events the gateway may act on (the others go to the log only)."""
    return [e for e, act in resend_plan(state, stored, now) if act]


def gateway_skips(headers: Mapping[str, bytes] | None) -> bool:
    """The gateway's side of the header: a re-emitted request whose outcome is known."""
    return headers is not None and headers.get(OUTCOME_KNOWN) == b"1"


class InputLag:
    """How far behind its input the ledger is: the age of the last input it took (its Kafka
    timestamp against the wall clock), forgotten after ``stale_s`` without input (an idle
    ledger is not behind). The sweeper holds its own commands back while this exceeds its
    limit and waits that much longer before looking at a key again: at a peak, sending more
    (or the same again) only lengthens the queue it waits in."""

    def __init__(self, stale_s: float = 5.0) -> None:
        self.stale_s = stale_s
        self.lag_s = 0.0
        self.at = 0.0

    def took(self, record_ts_s: float, now_s: float) -> None:
        self.lag_s = max(0.0, now_s - record_ts_s)
        self.at = now_s

    def current(self, now_s: float) -> float:
        return self.lag_s if now_s - self.at < self.stale_s else 0.0
