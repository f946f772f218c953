"""What carries out a reconciliation item's repair: the message, its topic and its key. Pure:
no I/O, no clock (``now`` comes in); the streaming agent (``streams.reconcile``) and the
batch runner (``reconciler.batch_run``) both publish what ``repair_for`` returns.

``apply_provider_status``: the item's observation (``source="reconciliation"``) on
billing.provider-events; ``refund_later_duplicate``: a ``RefundPayment`` command on
billing.commands (``actor="reconciler"``); both keyed by the subscription. Their ids are
derived from the provider object (observation id, refund key; the command id from the
refund key), never random, so publishing a repair again, from any run, is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import topics as topic_names
from schemas.ids import derived_id
from schemas.messages import RefundPayment, encode
from schemas.recon_match import RECONCILER_ACTOR, MatchItem
from schemas.state import SubscriptionState


@dataclass(frozen=True)
class Repair:
    topic: str  # schemas.topics name
    key: bytes
    value: bytes


def repair_for(item: MatchItem, state: SubscriptionState | None, now: int) -> Repair | None:
    """The message that carries out an item's repair, or None (nothing to do, escalated; a
    duplicate charge's refund without the subscription's ``state``, which names the user)."""
    if item.subscription_id is None:
        return None
    key = item.subscription_id.encode()
    if item.repair == "apply_provider_status" and item.observation is not None:
        return Repair(topic_names.PROVIDER_EVENTS, key, encode(item.observation))
    if item.repair == "refund_later_duplicate":
        if (
            state is None
            or item.refund_key is None
            or item.payment_id is None
            or item.theirs_amount is None
        ):
            return None
        command = RefundPayment(
            command_id=derived_id(item.refund_key, "reconciliation-refund"),
            subscription_id=item.subscription_id,
            issued_at=now,
            user_id=state.user_id,
            refund_id=item.refund_key,
            payment_id=item.payment_id,
            amount=item.theirs_amount,
            reason=f"duplicate charge {item.provider_id} (reconciliation)",
            actor=RECONCILER_ACTOR,
            duplicate_of_provider_id=item.provider_id,
        )
        return Repair(topic_names.COMMANDS, key, encode(command))
    return None
