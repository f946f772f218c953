"""Ledger agent: thin glue around the pure machine.

Consumes billing.commands and billing.provider-events (co-partitioned by subscription id),
keeps one state per subscription in a table, and emits the decided events to billing.events.
A replayed input re-emits the same events (same ids and versions); Faust flushes the table
changelog and the events before committing the input offset.

The sweeper (a timer) finds payments whose outcome is overdue and sends a SweepPayment command
with an id derived from (payment, attempt), so concurrent or repeated sweeps collapse into one.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.partitioner import murmur2

from billing.config import Settings
from schemas import topics as topic_names
from schemas.ids import derived_id
from schemas.messages import DecodeError, SweepPayment, ValidationError, decode_ledger_input, encode
from schemas.periods import now_ms
from schemas.state import decode_state, encode_state
from streams.ledger.machine import Policy, decide, overdue_payments
from streams.topics import Topics

log = logging.getLogger(__name__)

TABLE_NAME = "ledger-state"
FULL_SCAN_EVERY = 15  # sweeper ticks between full table scans (recovered state, rebalances)


def partition_for(key: bytes, partitions: int) -> int:
    """The default (murmur2) partitioner that every producer of billing topics uses."""
    h: int = murmur2(key)
    return (h & 0x7FFFFFFF) % partitions


def register_ledger(app: Any, topics: Topics, policy: Policy, settings: Settings) -> Any:
    table = app.Table(
        TABLE_NAME,
        default=None,
        partitions=settings.kafka_partitions,
        key_type=bytes,
        value_type=bytes,  # bytes → "raw" serializers: state is msgspec-encoded by us
    )
    # Earliest open deadline per subscription key, maintained on every write; a periodic full
    # scan rebuilds it for state recovered from the changelog.
    deadlines: dict[bytes, int] = {}
    ticks = [0]

    def track(key: bytes, state_deadlines: list[int]) -> None:
        if state_deadlines:
            deadlines[key] = min(state_deadlines)
        else:
            deadlines.pop(key, None)

    @app.agent(topics.ledger_input, name="ledger")
    async def ledger(stream: Any) -> None:
        async for event in stream.events():
            key: bytes = event.key
            try:
                msg = decode_ledger_input(event.value)
            except (DecodeError, ValidationError) as exc:
                # A poison message must not stop the subscription's partition; it is logged
                # with its coordinates for an operator (and reconciliation) to look at.
                log.error(
                    "undecodable ledger input at %s[%s]@%s: %s",
                    event.message.topic,
                    event.message.partition,
                    event.message.offset,
                    exc,
                )
                continue
            if key is None or key.decode() != msg.subscription_id:
                log.error("ledger input keyed %r for subscription %s", key, msg.subscription_id)
                continue
            raw = table.get(key)
            state = decode_state(raw) if raw is not None else None
            decision = decide(state, msg, policy)
            if not decision.duplicate and decision.state is not None:
                table[key] = encode_state(decision.state)
                track(
                    key,
                    [
                        p.deadline_at
                        for p in decision.state.payments.values()
                        if p.deadline_at is not None and p.status not in ("succeeded", "canceled")
                    ],
                )
            for out in decision.events:
                await topics.events.send(key=key, value=encode(out))

    @app.timer(interval=settings.sweep_interval_s)
    async def sweep() -> None:
        if app.rebalancing:
            return
        now = now_ms()
        ticks[0] += 1
        active = {
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic == topic_names.COMMANDS
        }
        if not active:
            return
        if ticks[0] % FULL_SCAN_EVERY == 1:
            deadlines.clear()
            for key, raw in list(table.items()):
                if raw is None:
                    continue
                st = decode_state(raw)
                track(
                    key,
                    [
                        p.deadline_at
                        for p in st.payments.values()
                        if p.deadline_at is not None and p.status not in ("succeeded", "canceled")
                    ],
                )
        due = [k for k, d in deadlines.items() if d <= now]
        for key in due:
            if partition_for(key, settings.kafka_partitions) not in active:
                continue
            raw = table.get(key)
            if raw is None:
                continue
            state = decode_state(raw)
            for rec in overdue_payments(state, now):
                attempt = rec.attempts + 1
                cmd = SweepPayment(
                    command_id=derived_id(rec.payment_id, f"sweep-{attempt}"),
                    subscription_id=state.subscription_id,
                    issued_at=now,
                    payment_id=rec.payment_id,
                    attempt=attempt,
                )
                await topics.commands.send(key=key, value=encode(cmd))
            # Wait for the ledger to apply the sweep before sweeping this key again.
            deadlines[key] = now + int(settings.sweep_interval_s * 1000) * 5

    return ledger
