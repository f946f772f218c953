"""Ledger agent: thin glue around the pure machine.

Consumes billing.commands and billing.provider-events (co-partitioned by subscription id),
keeps one state per subscription in a table, and emits the decided events to billing.events.
A replayed input re-emits the same events (same ids and versions), the requests whose record
has moved on flagged for the gateway to skip (``streams.ledger.resend``); Faust flushes the
table changelog and the events before committing the input offset.

The sweeper (a timer) asks the pure machine what is due for each subscription whose wake-up
time has come (``due_commands``): re-drives of overdue payments and refunds, renewal charges,
dunning retries, lapses at period end. Every such command has an id derived from what it is
for, so concurrent or repeated sweeps collapse into one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from billing.clock import now_ms
from billing.config import WorkerSettings
from schemas import topics as topic_names
from schemas.messages import DecodeError, ValidationError, decode_ledger_input, encode
from schemas.state import SubscriptionState, decode_state, encode_state
from schemas.topics import partition_for
from streams.ledger.machine import Policy, decide, due_commands, next_wakeup
from streams.ledger.price_store import load_price_book
from streams.ledger.prices import PriceBook
from streams.ledger.resend import OUTCOME_KNOWN, resend_plan
from streams.topics import Topics

log = logging.getLogger(__name__)

TABLE_NAME = "ledger-state"
FULL_SCAN_EVERY = 15  # sweeper ticks between full table scans (recovered state, rebalances)
_KNOWN = {OUTCOME_KNOWN: b"1"}  # the header of a re-emitted request the gateway skips


async def _send_all(
    topic: Any, key: bytes, values: list[tuple[bytes, dict[str, bytes] | None]]
) -> None:
    for value, headers in values:
        await topic.send(key=key, value=value, headers=headers)


PRICE_REFRESH_S = 30.0


def register_ledger(
    app: Any,
    topics: Topics,
    policy: Policy,
    settings: WorkerSettings,
    postgres_dsn: str | None = None,
) -> Any:
    table = app.Table(
        TABLE_NAME,
        default=None,
        partitions=settings.kafka_partitions,
        key_type=bytes,
        value_type=bytes,  # bytes → "raw" serializers: state is msgspec-encoded by us
    )
    app.billing_ledger_table = table  # read by the reconcile agent (co-partitioned)
    # Next wake-up time per subscription key, maintained on every write; a periodic full scan
    # rebuilds it for state recovered from the changelog.
    deadlines: dict[bytes, int] = {}
    ticks = [0]
    book = [PriceBook()]

    async def price_book() -> PriceBook:
        """Refreshed every PRICE_REFRESH_S; on a database error the last one is kept (a
        renewal then charges the last known price or, before any, what was sold)."""
        if postgres_dsn and time.monotonic() - book[0].loaded_at > PRICE_REFRESH_S:
            try:
                book[0] = await load_price_book(postgres_dsn)
            except Exception as exc:
                log.warning("price book refresh failed: %r", exc)
                book[0].loaded_at = time.monotonic()
        return book[0]

    def track(key: bytes, state: SubscriptionState) -> None:
        at = next_wakeup(state, policy)
        if at is not None:
            deadlines[key] = at
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
                track(key, decision.state)
            plan = [(out, True) for out in decision.events]
            if decision.duplicate and decision.state is not None:
                # A re-emission: all of it goes to the log again (it may heal a crash), but a
                # request whose record moved on is flagged for the gateway to skip.
                plan = resend_plan(decision.state, decision.events)
            if plan:
                # Shielded: a stop that cancels the agent here must not leave a state change
                # without its events (Faust would still acknowledge this input).
                sends = [(encode(out), None if act else _KNOWN) for out, act in plan]
                await asyncio.shield(_send_all(topics.events, key, sends))

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
                track(key, decode_state(raw))
        due = [k for k, d in deadlines.items() if d <= now]
        prices = (await price_book()).quote if due else None
        for key in due:
            if partition_for(key, settings.kafka_partitions) not in active:
                continue
            raw = table.get(key)
            if raw is None:
                continue
            for cmd in due_commands(decode_state(raw), now, policy, prices):
                await topics.commands.send(key=key, value=encode(cmd))
            # Wait for the ledger to apply these before looking at this key again.
            deadlines[key] = now + int(settings.sweep_interval_s * 1000) * 5

    return ledger
