"""Derived ids: unchanged for the uuid-shaped ids we mint, and never an exception for an id
from elsewhere (one such message used to crash-loop a partition's ledger)."""

from __future__ import annotations

import uuid

from schemas.ids import derived_id, event_id_for
from schemas.state import SubscriptionState
from streams.ledger.machine import Policy, next_wakeup


def test_uuid_shaped_ids_derive_as_before() -> None:
    source = str(uuid.uuid4())
    assert derived_id(source, "renew-1-0") == str(uuid.uuid5(uuid.UUID(source), "renew-1-0"))
    assert event_id_for(source, 2) == str(uuid.uuid5(uuid.UUID(source), "event-2"))


def test_other_ids_derive_deterministically() -> None:
    assert derived_id("sub-1", "x") == derived_id("sub-1", "x") != derived_id("sub-2", "x")
    assert uuid.UUID(event_id_for("cmd-1", 0))


def test_the_wake_up_of_a_state_with_a_hand_made_id() -> None:
    state = SubscriptionState(
        subscription_id="sub-1",
        user_id="u-1",
        status="active",
        plan_id="monthly",
        period_end=10_000_000,
        auto_renew=True,
        renew_amount=None,
    )
    next_wakeup(state, Policy())  # no ValueError from a non-uuid subscription id
