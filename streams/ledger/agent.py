"""Ledger agent: thin glue around the pure machine.

Consumes billing.commands and billing.provider-events (co-partitioned by subscription id),
keeps one state per subscription in a table, and emits the decided events to billing.events.
A replayed input re-emits the same events (same ids and versions), the requests whose record
has moved on flagged for the gateway to skip (``streams.ledger.resend``); Faust flushes the
table changelog and the events before committing the input offset.

The sweeper (a timer) asks the pure machine what is due for each subscription whose wake-up
time has come (``due_commands``): re-drives of overdue payments and refunds, renewal charges,
dunning retries, lapses at period end. Every such command has an id derived from what it is
for, so concurrent or repeated sweeps collapse into one. Which subscriptions are due comes
from an index kept on every write and rebuilt with the table (``TableIndex``), never from a
scan; each table value carries its wake-up in a header for that (``streams.ledger.due``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgspec

from billing import logs, metrics
from billing.clock import now_ms
from billing.config import WorkerSettings
from billing.kafka_client import client_kwargs
from schemas import topics as topic_names
from schemas.messages import DecodeError, ValidationError, decode_ledger_input, encode
from schemas.state import SubscriptionState, decode_state, encode_state
from streams.ledger.due import (
    LedgerIndex,
    fingerprint,
    pack,
    request_days,
    snapshot_offset,
    unpack,
)
from streams.ledger.machine import Policy, decide, due_commands, next_wakeup
from streams.ledger.price_store import load_price_book
from streams.ledger.prices import PriceBook
from streams.ledger.resend import OUTCOME_KNOWN, InputLag, resend_plan
from streams.ledger.restore import BulkRestore
from streams.topics import Topics

log = logging.getLogger(__name__)


def _input_kind(topic: str) -> str:
    return "provider_event" if topic == topic_names.PROVIDER_EVENTS else "command"


TABLE_NAME = "ledger-state"
_KNOWN = {OUTCOME_KNOWN: b"1"}  # the header of a re-emitted request the gateway skips
RETRY_TICKS = 5  # a key swept is looked at again after this many ticks unless written
REBUILD_CHUNK = 5_000  # table entries indexed between yields to the event loop
SWEEP_YIELD_EVERY = 50  # due keys swept between yields to the event loop


async def _send_all(
    topic: Any, key: bytes, values: list[tuple[bytes, dict[str, bytes] | None]]
) -> None:
    for value, headers in values:
        await topic.send(key=key, value=value, headers=headers)


PRICE_REFRESH_S = 30.0


class TableIndex:
    """The ledger table's due and day indexes (``streams.ledger.due``), kept in step with
    the table: on every write of the agent, on every changelog batch Faust applies while it
    recovers (or as a standby), and, for a store on disk, by one pass over a partition's
    local database when its recovery ends (what was on disk before was never replayed).
    A revoked partition is forgotten.

    On disk, a stop or a revocation leaves each complete partition's index in a snapshot
    beside its database, tagged with the changelog offset the database is at; the next
    recovery loads it instead of reading every value when the database is still at that
    offset (nothing written since). A snapshot is read once and deleted: one that could be
    stale is never trusted."""

    def __init__(self, table: Any, policy: Policy, on_disk: bool) -> None:
        self.table = table
        self.policy = policy
        self.fp = fingerprint(policy)
        self.on_disk = on_disk
        self.index = LedgerIndex()
        # Partitions whose index holds the whole local store (changelog batches then only
        # update it). In memory the store is built from the changelog only, so every
        # partition's batches are indexed from its first one.
        self.complete: set[int] = set()
        self.ready = False  # the index of every assigned partition is built
        self.slow_decodes = 0  # values indexed by decoding the state (no or stale header)
        self.snapshots_loaded = 0  # partitions whose index came from a stop's snapshot

    def value(self, state: SubscriptionState) -> bytes:
        """The table value of ``state``: its encoding with the index header."""
        return pack(
            encode_state(state), self.fp, next_wakeup(state, self.policy), request_days(state)
        )

    def wrote(self, partition: int, key: bytes, state: SubscriptionState) -> bytes:
        """Index ``state`` (about to be written) and return its table value."""
        wake = next_wakeup(state, self.policy)
        days = request_days(state)
        self.index.put(partition, key, wake, days)
        return pack(encode_state(state), self.fp, wake, days)

    def index_value(self, partition: int, key: bytes, raw: bytes | None) -> None:
        if raw is None:
            self.index.remove(partition, key)
            return
        head = unpack(raw)
        if head is not None and head.fp == self.fp:
            self.index.put(partition, key, head.wake, head.days)
            return
        try:
            state = decode_state(raw)
        except (DecodeError, ValidationError, msgspec.DecodeError):
            log.error("unreadable ledger state %r on partition %d", key, partition)
            return
        self.slow_decodes += 1
        self.index.put(partition, key, next_wakeup(state, self.policy), request_days(state))

    def fresh(self, partition: int) -> None:
        """The bulk restore starts on an empty local store: its batches are all the store
        will hold, so indexing them makes the partition's index complete (no pass over the
        database at recovery's end)."""
        self.index.drop(partition)
        self.complete.add(partition)

    def restored(self, partition: int, pairs: list[tuple[bytes, bytes | None]]) -> None:
        """Records the bulk restore wrote (``streams.ledger.restore``): indexed as Faust's
        changelog batches are."""
        if self.on_disk and partition not in self.complete:
            return  # indexed by the pass over its database at recovery's end
        for key, raw in pairs:
            self.index_value(partition, key, raw)

    def gauges(self, now: int, partitions: set[int], overdue_ms: int) -> tuple[int, ...]:
        """(states, bytes, due, overdue, oldest due age ms) of ``partitions`` without
        reading the states: the due figures from the index, the others from the store
        (RocksDB's estimates; the memory store's values' lengths)."""
        states = size = 0
        store = self.table.data
        for p in partitions:
            if self.on_disk:
                db = store._db_for_partition(p)
                states += db.property_int_value("rocksdb.estimate-num-keys") or 0
                size += db.property_int_value("rocksdb.estimate-live-data-size") or 0
                size += db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
        if not self.on_disk:
            values = [raw for raw in store.data.values() if raw is not None]
            states, size = len(values), sum(map(len, values))
        return (states, size, *self.index.due_stats(now, partitions, overdue_ms))

    # ------------------------------------------------------------------ snapshots
    def _snapshot_path(self, partition: int) -> Path:
        return Path(f"{self.table.data.partition_path(partition)}.index")

    def _offset(self, partition: int) -> int | None:
        from faust.types import TP

        offset: int | None = self.table.data.persisted_offset(
            TP(self.table.changelog_topic_name, partition)
        )
        return offset

    def save_snapshot(self, partition: int) -> None:
        """Leave ``partition``'s index beside its database (stop, revocation); never fails
        the stop: a missing snapshot only means the slow rebuild."""
        if not self.on_disk or partition not in self.complete:
            return
        path = self._snapshot_path(partition)
        try:
            blob = self.index.dump(partition, self.fp, self._offset(partition))
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception:
            log.exception("ledger index: no snapshot for partition %d", partition)
            return
        log.info(
            "ledger index: partition %d snapshot of %d states",
            partition,
            self.index.size(partition),
        )

    def save_snapshots(self) -> None:
        for p in sorted(self.complete):
            self.save_snapshot(p)

    def _load_snapshot(self, partition: int) -> bool:
        path = self._snapshot_path(partition)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError:
            log.exception("ledger index: snapshot of partition %d unreadable", partition)
            return False
        finally:
            path.unlink(missing_ok=True)  # read once: after this start it could be stale
        started = time.monotonic()
        offset = self._offset(partition)
        n = self.index.load(partition, blob, self.fp, offset)
        if n is None:
            log.info(
                "ledger index: partition %d snapshot stale (taken at offset %s, store at %s), "
                "reading the database",
                partition,
                snapshot_offset(blob),
                offset,
            )
            return False
        self.snapshots_loaded += 1
        log.info(
            "ledger index: partition %d, %d states from the stop's snapshot in %.2fs",
            partition,
            n,
            time.monotonic() - started,
        )
        return True

    # ------------------------------------------------------------------ Faust hooks
    def install(self) -> None:
        table = self.table
        apply_batch = table.apply_changelog_batch
        on_rebalance = table.on_rebalance

        def apply_changelog_batch(batch: Any) -> None:
            apply_batch(batch)
            complete, on_disk = self.complete, self.on_disk
            for event in batch:
                msg = event.message
                if on_disk and msg.partition not in complete:
                    continue  # indexed by the pass over its database at recovery's end
                self.index_value(msg.partition, msg.key, msg.value)

        async def rebalance(
            assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0
        ) -> None:
            self.ready = False
            topic = table.changelog_topic_name
            for tp in revoked:
                if tp.topic == topic:
                    self.save_snapshot(tp.partition)
                    self.index.drop(tp.partition)
                    self.complete.discard(tp.partition)
            await on_rebalance(assigned, revoked, newly_assigned, generation_id)

        table.apply_changelog_batch = apply_changelog_batch
        table.on_rebalance = rebalance
        table.on_recover(self.on_recovered)
        if self.on_disk:
            store = table.data
            stop_store = store.stop

            async def stop() -> None:
                # The agents stopped before the tables: the index is in step with the store.
                # The changelog sends still in flight move the store's offset when they are
                # acknowledged: wait for them, or the snapshot's offset is already behind.
                try:
                    await asyncio.wait_for(table.app.producer.flush(), timeout=10)
                    await asyncio.sleep(0)
                except Exception:
                    log.warning("ledger index: changelog not flushed at stop", exc_info=True)
                self.save_snapshots()
                await stop_store()

            store.stop = stop

    async def on_recovered(self) -> None:
        """Recovery of this table ended (called before its partitions resume)."""
        app = self.table.app
        topic = self.table.changelog_topic_name
        actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
        standbys = {tp.partition for tp in app.assignor.assigned_standbys() if tp.topic == topic}
        # The memory store keeps only the active partitions at the end of a recovery.
        held = actives | standbys if self.on_disk else actives
        for p in self.index.partitions() - held:
            self.index.drop(p)
            self.complete.discard(p)
        if self.on_disk:
            for p in sorted(held - self.complete):
                if not self._load_snapshot(p):
                    await self._index_database(p)
        self.complete |= held
        self.ready = True

    async def _index_database(self, partition: int) -> None:
        store = self.table.data
        started = time.monotonic()
        db = store._db_for_partition(partition)
        self.index.drop(partition)
        n = 0
        for key, raw in store._visible_items(db):
            self.index_value(partition, key, raw)
            n += 1
            if n % REBUILD_CHUNK == 0:
                await asyncio.sleep(0)
        log.info(
            "ledger index: partition %d, %d states from disk in %.2fs",
            partition,
            n,
            time.monotonic() - started,
        )


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
        **table_options(settings),
    )
    app.billing_ledger_table = table  # read by the reconcile agent (co-partitioned)
    indexed = TableIndex(table, policy, on_disk=not settings.table_store.startswith("memory"))
    indexed.install()
    app.billing_ledger_index = indexed  # read by the reconcile agent, readiness, benches
    if settings.table_bulk_restore:
        restore = BulkRestore(
            table,
            client_kwargs(settings),
            on_batch=indexed.restored,
            on_fresh=indexed.fresh,
            deadline_s=0.8 * float(app.conf.broker_request_timeout),
        )
        restore.install()
        app.billing_bulk_restore = restore  # figures (benches, tests)
    index = indexed.index
    retry_ms = int(settings.sweep_interval_s * 1000) * RETRY_TICKS
    input_lag = InputLag()  # the sweeper holds back while the ledger is behind (issue 13)
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
            # Every line logged for this input carries its ids (billing.logs).
            logs.bind_ids(
                subscription_id=msg.subscription_id,
                command_id=getattr(msg, "command_id", None),
                payment_id=getattr(msg, "payment_id", None),
                refund_id=getattr(msg, "refund_id", None),
            )
            input_lag.took(event.message.timestamp, time.time())
            raw = table.get(key)
            state = decode_state(raw) if raw is not None else None
            with metrics.timed(metrics.LEDGER_DECIDE):
                decision = decide(state, msg, policy)
            metrics.LEDGER_INPUTS.labels(
                _input_kind(event.message.topic),
                "duplicate" if decision.duplicate else "applied",
            ).inc()
            if not decision.duplicate and decision.state is not None:
                table[key] = indexed.wrote(event.message.partition, key, decision.state)
            elif indexed.on_disk and raw is not None:
                # A replay. On disk the state may be ahead of its changelog (written, then
                # killed before the changelog send was acknowledged; the input was not
                # committed): writing it again puts it on the changelog, which a standby
                # or the partition's next owner recovers from.
                table[key] = raw
            plan = [(out, True) for out in decision.events]
            if decision.duplicate and decision.state is not None:
                # A re-emission: all of it goes to the log again (it may heal a crash), but a
                # request whose record moved on is flagged for the gateway to skip.
                # A request still in flight (before its deadline) is not sent again.
                plan = resend_plan(decision.state, decision.events, now_ms())
            if plan:
                # Shielded: a stop that cancels the agent here must not leave a state change
                # without its events (Faust would still acknowledge this input).
                sends = [(encode(out), None if act else _KNOWN) for out, act in plan]
                await asyncio.shield(_send_all(topics.events, key, sends))

    @app.timer(interval=settings.sweep_interval_s)
    async def sweep() -> None:
        """Due work from the index: what is due now, at most ``sweep_max_per_tick`` keys
        (a cohort due at once is spread over ticks); nothing else is looked at."""
        if app.rebalancing or not indexed.ready:
            return
        behind_s = input_lag.current(time.time())
        if behind_s > settings.sweep_max_lag_s:
            return  # what it would send waits in that queue too; due keys stay due
        now = now_ms()
        active = {
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic == topic_names.COMMANDS
        }
        due = index.pop_due(now, active, settings.sweep_max_per_tick)
        if not due:
            return
        prices = (await price_book()).quote
        for n, (partition, key) in enumerate(due, 1):
            if n % SWEEP_YIELD_EVERY == 0:
                # A cohort's tick is thousands of keys: let heartbeats and the agents run
                # (a loop held for seconds loses the group and rebalances mid-peak).
                await asyncio.sleep(0)
            # Wait for the ledger to apply these before looking at this key again (its
            # write re-indexes it sooner).
            index.defer(partition, key, now + retry_ms + int(2_000 * behind_s))
            raw = table.get(key)
            if raw is None:
                index.remove(partition, key)
                continue
            for cmd in due_commands(decode_state(raw), now, policy, prices):
                await topics.commands.send(key=key, value=encode(cmd))

    return ledger


def table_options(settings: WorkerSettings) -> dict[str, Any]:
    """Faust table arguments for the configured store. RocksDB's defaults (2 GiB block cache,
    three 64 MiB write buffers per partition) are sized for a dedicated machine; these
    follow BILLING_TABLE_* settings. Recovery reads the changelog in batches of
    ``table_recovery_buffer`` records (Faust's default, 1,000)."""
    opts: dict[str, Any] = {
        "recovery_buffer_size": settings.table_recovery_buffer,
        "standby_buffer_size": settings.table_recovery_buffer,
    }
    if settings.table_store.startswith("rocksdb"):
        opts["options"] = {
            "block_cache_size": settings.table_block_cache_mb * 1024 * 1024,
            "write_buffer_size": settings.table_write_buffer_mb * 1024 * 1024,
            "max_write_buffer_number": 2,
        }
    return opts
