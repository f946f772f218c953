"""The chaos checker must be able to fail: a consistent snapshot (built with the real ledger
machine) passes, and each kind of corruption the chaos run looks for is reported. Pure and
fast; no services."""

from __future__ import annotations

import copy
from collections.abc import Callable

import msgspec
import pytest

from schemas.ids import command_id_for, observation_id_for, payment_id_for, subscription_id_for
from schemas.messages import (
    AnyEvent,
    PaymentObserved,
    PaySubscription,
    SubscriptionActivated,
)
from schemas.money import Money
from streams.ledger.machine import Policy, decide
from tests.chaos.invariants import (
    Expected,
    PayRow,
    ProviderRow,
    Snapshot,
    SubRow,
    check,
)

T0 = 1_790_000_000_000


def _run_payment(e: Expected, n: int) -> tuple[Snapshot, list[AnyEvent]]:
    """One payment through the pure machine: pay, pending, then the user's answer."""
    policy = Policy()
    provider_id = f"prov-{n:04d}"
    cmd = PaySubscription(
        command_id=e.command_id,
        subscription_id=e.subscription_id,
        issued_at=T0,
        user_id=e.user_id,
        payment_id=e.payment_id,
        plan_id=e.plan_id,
        amount=Money(e.amount_minor, "RUB"),
        period_months=e.period_months,
        return_url="https://cinema.example/return",
        description="Cinema",
    )
    events: list[AnyEvent] = []
    d = decide(None, cmd, policy)
    events += d.events
    for status, at in (("pending", T0 + 1000), (e.outcome, T0 + 2000)):
        obs = PaymentObserved(
            observation_id=observation_id_for(provider_id, status),
            subscription_id=e.subscription_id,
            observed_at=at,
            source="webhook",
            payment_id=e.payment_id,
            provider_payment_id=provider_id,
            status=status,  # type: ignore[arg-type]
            amount=Money(e.amount_minor, "RUB"),
            cancellation_reason="insufficient_funds" if status == "canceled" else None,
        )
        d = decide(d.state, obs, policy)
        events += d.events
    state = d.state
    assert state is not None
    snap = Snapshot()
    snap.ledger[e.subscription_id] = state
    snap.outbox[e.command_id] = "done"
    snap.provider_by_payment_id[e.payment_id] = 1
    snap.provider_objects[e.payment_id] = [ProviderRow(provider_id, e.outcome, e.amount_minor)]
    snap.pg_subscriptions[e.subscription_id] = SubRow(
        state.user_id, state.status, state.plan_id, state.period_start, state.period_end
    )
    rec = state.payments[e.payment_id]
    snap.pg_payments[e.payment_id] = PayRow(
        e.subscription_id,
        rec.status,
        rec.provider_payment_id,
        rec.plan_id,
        rec.amount.amount_minor,
        rec.period_start,
        rec.period_end,
    )
    snap.pg_versions[e.subscription_id] = state.version
    snap.pg_event_ids |= {ev.event_id for ev in events}
    return snap, events


def _world() -> tuple[list[Expected], Snapshot]:
    people: list[Expected] = []
    total = Snapshot()
    for i, (plan, months, amount, decline) in enumerate(
        [("monthly", 1, 29900, False), ("yearly", 12, 299000, False), ("monthly", 1, 29900, True)]
    ):
        user = f"u-{i}"
        command_id = command_id_for(user, f"k-{i}")
        e = Expected(
            user_id=user,
            idem_key=f"k-{i}",
            subscription_id=subscription_id_for(user),
            command_id=command_id,
            payment_id=payment_id_for(command_id),
            plan_id=plan,
            period_months=months,
            amount_minor=amount,
            decline=decline,
            via="api",
        )
        people.append(e)
        snap, events = _run_payment(e, i)
        for name in (
            "outbox",
            "pg_subscriptions",
            "pg_payments",
            "pg_versions",
            "provider_by_payment_id",
            "provider_objects",
            "ledger",
        ):
            getattr(total, name).update(getattr(snap, name))
        total.pg_event_ids |= snap.pg_event_ids
        total.events += events + events[:2]  # replays re-emit the same events: harmless
    total.provider_payments_created = len(people)
    return people, total


def test_consistent_snapshot_passes() -> None:
    people, snap = _world()
    assert check(people, snap) == []
    assert sum(isinstance(e, SubscriptionActivated) for e in snap.events) >= 2


def _activation(snap: Snapshot) -> SubscriptionActivated:
    return next(e for e in snap.events if isinstance(e, SubscriptionActivated))


def _second_activation(snap: Snapshot) -> None:
    first = _activation(snap)
    twin = msgspec.structs.replace(
        first, event_id="00000000-0000-5000-8000-000000000001", version=first.version + 100
    )
    snap.events.append(twin)


def _reused_event_id(snap: Snapshot) -> None:
    first = _activation(snap)
    snap.events.append(msgspec.structs.replace(first, period_end=first.period_end + 1))


def _fork(snap: Snapshot) -> None:
    first = _activation(snap)
    other = msgspec.structs.replace(first, event_id="00000000-0000-5000-8000-000000000002")
    snap.events.append(other)
    snap.pg_event_ids.add(other.event_id)


def _lost_event(snap: Snapshot) -> None:
    victim = snap.events[1]
    snap.events = [e for e in snap.events if e.event_id != victim.event_id]


def _first_sub(snap: Snapshot) -> str:
    return next(iter(snap.ledger))


def _first_pay(snap: Snapshot) -> str:
    return next(iter(snap.pg_payments))


CORRUPTIONS: dict[str, Callable[[Snapshot], object]] = {
    "command not done": lambda s: s.outbox.update({next(iter(s.outbox)): "processing"}),
    "command missing": lambda s: s.outbox.pop(next(iter(s.outbox))),
    "two provider charges": lambda s: s.provider_by_payment_id.update(
        {next(iter(s.provider_by_payment_id)): 2}
    ),
    "provider charge for nobody's payment": lambda s: s.provider_by_payment_id.update(
        {"00000000-0000-5000-8000-00000000dead": 1}
    ),
    "provider status differs": lambda s: s.provider_objects.update(
        {
            k: [ProviderRow(v[0].provider_payment_id, "canceled", v[0].amount_minor)]
            for k, v in list(s.provider_objects.items())[:1]
        }
    ),
    "subscription activated twice": _second_activation,
    "event id reused for other content": _reused_event_id,
    "two events share a version": _fork,
    "event lost from the log": _lost_event,
    "read model status differs": lambda s: s.pg_subscriptions.update(
        {_first_sub(s): SubRow(s.ledger[_first_sub(s)].user_id, "expired", None, None, None)}
    ),
    "read model payment differs": lambda s: s.pg_payments.update(
        {
            _first_pay(s): PayRow(
                s.pg_payments[_first_pay(s)].subscription_id,
                "pending",
                None,
                "monthly",
                29900,
                None,
                None,
            )
        }
    ),
    "projection version behind": lambda s: s.pg_versions.update({_first_sub(s): 1}),
    "event never projected": lambda s: s.pg_event_ids.discard(s.events[0].event_id),
    "ledger lost a subscription": lambda s: s.ledger.pop(_first_sub(s)),
}


# What the report must say for each corruption (not merely "something is wrong").
NEEDLES = {
    "command not done": "commands not done",
    "command missing": "outbox holds 2 commands",
    "two provider charges": "the provider created 2 payments",
    "provider charge for nobody's payment": "provider saw creates for 4 payment ids",
    "provider status differs": "provider status canceled",
    "subscription activated twice": "activated more than once for one period",
    "event id reused for other content": "two different contents",
    "two events share a version": "different events share a version",
    "event lost from the log": "missing [2]",
    "read model status differs": "!= read model",
    "read model payment differs": "!= read model",
    "projection version behind": "projected 1",
    "event never projected": "was never projected",
    "ledger lost a subscription": "ledger holds 2 subscriptions",
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_is_reported(name: str) -> None:
    people, snap = _world()
    broken = copy.deepcopy(snap)
    CORRUPTIONS[name](broken)
    problems = check(people, broken)
    assert any(NEEDLES[name] in p for p in problems), f"{name} went unnoticed: {problems}"
