"""The notifier's mapping: one message per fact, ids derived from the event."""

from __future__ import annotations

from schemas.notifications import Notification
from streams.ledger.machine import LedgerInput, decide
from streams.notify.agent import derive
from tests.unit.test_lifecycle import POLICY, refund, refund_seen
from tests.unit.test_machine import observed, pay


def test_a_payment_and_a_full_refund_map_to_notifications_and_entitlements() -> None:
    kinds: list[str] = []
    ids: list[str] = []
    state = None
    inputs: list[LedgerInput] = [pay(), observed("succeeded"), refund("a"), refund_seen("a")]
    for msg in inputs:
        d = decide(state, msg, POLICY)
        state = d.state
        for event in d.events:
            for out in derive(event):
                if isinstance(out, Notification):
                    kinds.append(out.kind)
                    ids.append(out.notification_id)
                else:
                    kinds.append(f"entitlement-{out.action}")
                    ids.append(out.entitlement_id)
    assert kinds == [
        "payment_succeeded",
        "entitlement-granted",
        "refund_succeeded",
        "canceled",
        "entitlement-revoked",
    ]
    assert len(set(ids)) == len(ids)


def test_a_replayed_event_yields_the_same_ids() -> None:
    d = decide(None, pay(), POLICY)
    d = decide(d.state, observed("succeeded"), POLICY)
    again = decide(d.state, observed("succeeded"), POLICY)
    assert again.duplicate
    first = [m for e in d.events for m in derive(e)]
    second = [m for e in again.events for m in derive(e)]
    assert first == second and len(first) == 2
