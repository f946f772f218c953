"""The notifier's mapping: one message per fact, ids derived from the event; a batch's messages
and the offsets committed after it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from schemas import notifications as contract
from schemas.messages import encode
from schemas.notifications import Notification
from schemas.topics import ENTITLEMENTS, EVENTS, NOTIFICATIONS
from streams.consumer import next_offsets
from streams.ledger.machine import LedgerInput, decide
from streams.notify.agent import derive, outgoing
from tests.factories import POLICY, observed, pay, refund, refund_seen


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


def _record(value: bytes, offset: int, partition: int = 0, key: bytes = b"sub") -> Any:
    return SimpleNamespace(topic=EVENTS, partition=partition, offset=offset, key=key, value=value)


def test_a_batch_maps_to_its_messages_in_order_on_their_topics_keyed_like_the_event() -> None:
    d = decide(None, pay(), POLICY)
    d = decide(d.state, observed("succeeded"), POLICY)
    records = [
        _record(encode(e), i, key=e.subscription_id.encode()) for i, e in enumerate(d.events)
    ]
    records.insert(1, _record(b'{"type":"PaymentSucceeded","broken', 99))  # logged, skipped
    out = outgoing(records)
    expected = [m for e in d.events for m in derive(e)]
    assert [contract.decode(v) for _, _, v in out] == expected
    assert [t for t, _, _ in out] == [NOTIFICATIONS, ENTITLEMENTS]
    assert {k for _, k, _ in out} == {d.events[0].subscription_id.encode()}


def test_the_offsets_committed_after_a_batch_are_one_past_each_partitions_last() -> None:
    records = [_record(b"", 5, 0), _record(b"", 7, 1), _record(b"", 6, 0), _record(b"", 8, 1)]
    assert next_offsets(records) == {TopicPartition(EVENTS, 0): 7, TopicPartition(EVENTS, 1): 9}
