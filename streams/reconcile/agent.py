"""Reconcile agent: thin glue around the pure matcher (``reconciler.matcher``).

Consumes ``billing.provider-report``, co-partitioned with billing.commands: a line keyed by
its subscription id arrives on the partition whose ledger state this worker holds, so each
line is matched (``match_line``) against ``ledger_table.get(subscription_id)`` as it is now.
The end-of-report marker of a partition runs ``end_of_report`` over the subscriptions of
that partition with a payment or refund requested in the window (the ledger's day index,
``streams.ledger.due``: no state outside the window is decoded) to find what the ledger has
in the window that the provider never reported, then the partition is recorded done; the
agent that records the last partition of a run finishes it (summary from the stored items).

The lines of a partition usually come many to a message (``schemas.recon.ReportBatch``);
a single ``ReportEnvelope`` per line is read as well. Faust's cost is per message (a few
hundred microseconds of its own), so one message per line capped a run at about 2,000 lines
a second on the development machine.

Items go to PostgreSQL with ``reconciler.store.record_progress``, once per batch of messages
in one transaction: discrepancies (and in-flight items) as upserts keyed across runs and
linked to the run, ``matched`` items only counted in the (run, partition) tally. The tally
keeps the last offset of the partition recorded, so a message processed again (a replay
after a crash or a rebalance, here or in the partition's next owner) records nothing twice.
Repairs are published where the ledger takes them (``reconciler.repairs.repair_for``: an
observation on billing.provider-events or a ``RefundPayment`` command on billing.commands,
keyed by the subscription). Items are written before repairs are sent, and Faust flushes
sends before it commits the input offset, so a crash replays at most, and a replay is
harmless: repairs are sent again even for a message already recorded (their ids are derived
from the provider object, whatever the run).

The ledger state of a line is decoded with only what the matcher and the repairs read
(``decode_for_match``: ids, payments, refunds), not the events the state keeps for replays.

What a run has seen of a subscription (``SubscriptionRun``) is kept in memory, per (run,
key). A worker that takes a partition over mid-run (a crash, a rebalance) lacks the memory of
the lines processed before it: the marker's ``lines_sent`` tells, and such a partition is
recorded done but not ``complete`` (no end-of-report items, which would wrongly call every
ledger item its predecessor accounted for "missing"); the run ends ``incomplete`` and is run
again (re-runs add nothing twice).

The end of the report judges the ledger's items requested in the window up to when the
report was taken (the run's ``taken_at``, the matcher's "now"): what was requested later (the
repairs of this very run, when the window reaches into the present) cannot be in the report.

The nightly schedule: a Faust crontab (``BILLING_RECON_CRON`` in ``BILLING_RECON_TIMEZONE``)
on the leader starts yesterday's run from the provider's list API (``reconciler.feed``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from billing.clock import now_ms
from reconciler import store
from reconciler.feed import ReconSettings, run_nightly
from reconciler.matcher import SubscriptionRun, end_of_report, match_line
from reconciler.repairs import Repair, repair_for
from schemas import topics as topic_names
from schemas.messages import DecodeError, ValidationError
from schemas.recon import (
    EndOfReport,
    ReportBatch,
    ReportLine,
    decode_report_message,
    message_key,
)
from schemas.recon_match import MatchConfig, MatchItem
from schemas.recon_runs import RunSpec
from schemas.state import PaymentRecord, RefundRecord, SubscriptionState
from schemas.topics import partition_for
from streams.ledger.due import LedgerIndex
from streams.topics import Topics, raw_topic

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_SIZE = 100  # messages per take (a ReportBatch holds up to 200 lines)
BATCH_WITHIN_S = 0.05
FLUSH_LINES = 5000  # record at least this often within a take
MEMORY_TTL_S = 24 * 3600.0  # a run whose marker never came is forgotten after this
DB_RETRY_MAX_S = 30.0
DB_ATTEMPTS_ON_BUG = 3  # other errors than a lost connection: give up the batch after these


# ----------------------------------------------------------------------- ledger states
class _StateView(msgspec.Struct):
    """The fields of a ledger state the matcher and the repairs read; the rest of the JSON
    (the events kept for replays: about half of it) is skipped, not built."""

    subscription_id: str
    user_id: str
    payments: dict[str, PaymentRecord] = {}
    refunds: dict[str, RefundRecord] = {}


_view_decoder = msgspec.json.Decoder(_StateView)


def decode_for_match(raw: bytes) -> SubscriptionState:
    """A ledger state (``schemas.state.encode_state``) with what matching needs: ids, payments
    and refunds; every other field has its default."""
    v = _view_decoder.decode(raw)
    return SubscriptionState(
        subscription_id=v.subscription_id,
        user_id=v.user_id,
        payments=v.payments,
        refunds=v.refunds,
    )


# --------------------------------------------------------------------------- run memory
def end_config(cfg: MatchConfig) -> MatchConfig | None:
    """The window the end of the report judges: up to when the report was taken at most. A
    ledger item requested after that (a repair of this very run, a payment made while the
    report was read) cannot be in the report, so it is not "unreported"; the next run judges
    it. None when nothing of the window is old enough."""
    end = min(cfg.window_end, cfg.now)
    if end <= cfg.window_start:
        return None
    return dataclasses.replace(cfg, window_end=end)


@dataclass
class _RunPart:
    """One run on one partition, as far as this process has seen it."""

    lines: int = 0  # distinct lines classified (a line seen again gives no item)
    keys: set[str] = field(default_factory=set)  # memory keys (subscriptions) of the part
    touched: float = field(default_factory=time.monotonic)


_run_encoder = msgspec.msgpack.Encoder()
_run_decoder = msgspec.msgpack.Decoder(SubscriptionRun)


class RunMemory:
    """The matcher's per-run memory in this process (no I/O). A run of a million lines keeps
    a ``SubscriptionRun`` per subscription: each is kept encoded (msgpack bytes), a third of
    the memory of the objects and nothing for the garbage collector to walk (millions of
    small containers made every full collection slow)."""

    def __init__(self) -> None:
        self.subs: dict[tuple[str, str], bytes] = {}
        self.parts: dict[tuple[str, int], _RunPart] = {}
        # The encoded ledger state (the table's own object) of a subscription that, when its
        # last line was matched, had nothing left for the end of the report: while the table
        # holds that very object, the end of the report need not decode it (it would find
        # nothing: what a run has accounted for only grows).
        self.settled: dict[tuple[str, str], bytes] = {}
        self._judged: dict[MatchConfig, MatchConfig | None] = {}

    def run_of(self, run_id: str, key: str) -> SubscriptionRun | None:
        """What run ``run_id`` has seen of the subscription (memory key) ``key``."""
        raw = self.subs.get((run_id, key))
        return _run_decoder.decode(raw) if raw is not None else None

    def match(
        self,
        cfg: MatchConfig,
        run_id: str,
        partition: int,
        line: ReportLine,
        state: SubscriptionState | None,
        raw: bytes | None = None,
    ) -> MatchItem | None:
        """Classify one line; None for a line this process already classified in this run.
        ``raw``: the table's encoded ``state``, remembered if nothing of it is left for the
        end of the report."""
        key = (run_id, message_key(line).decode())
        item, run = match_line(state, line, cfg, self.run_of(*key))
        if item is not None:  # else nothing changed
            self.subs[key] = _run_encoder.encode(run)
        if state is not None and raw is not None:
            judged = self._judged_config(cfg)
            if judged is None or not end_of_report(state, judged, run):
                self.settled[key] = raw
            else:
                self.settled.pop(key, None)
        part = self.parts.setdefault((run_id, partition), _RunPart())
        if item is not None:  # the matcher gives an item for every line it had not seen
            part.lines += 1
        part.keys.add(key[1])
        part.touched = time.monotonic()
        return item

    def _judged_config(self, cfg: MatchConfig) -> MatchConfig | None:
        if cfg not in self._judged:
            self._judged[cfg] = end_config(cfg)
        return self._judged[cfg]

    def unchanged_and_settled(self, run_id: str, key: str, raw: bytes) -> bool:
        """The end of the report would find nothing for this subscription: its state is the
        very object that was settled when its last line was matched."""
        return self.settled.get((run_id, key)) is raw

    def lines_seen(self, run_id: str, partition: int) -> int:
        part = self.parts.get((run_id, partition))
        return part.lines if part else 0

    def end(
        self,
        cfg: MatchConfig,
        run_id: str,
        partition: int,
        states: Iterable[SubscriptionState],
        lines_sent: int,
    ) -> tuple[list[MatchItem], bool]:
        """The ledger items of the partition's subscriptions that no line accounted for, and
        whether this process saw every line of the partition (else no items: see module)."""
        if self.lines_seen(run_id, partition) < lines_sent:
            return [], False
        judged = end_config(cfg)
        if judged is None:
            return [], True
        items: list[MatchItem] = []
        for state in states:
            run = self.run_of(run_id, state.subscription_id)
            items.extend(end_of_report(state, judged, run))
        return items, True

    def forget(self, run_id: str, partition: int) -> None:
        part = self.parts.pop((run_id, partition), None)
        for key in part.keys if part else ():
            self.subs.pop((run_id, key), None)
            self.settled.pop((run_id, key), None)

    def evict(self, older_than_s: float = MEMORY_TTL_S) -> None:
        """Forget runs untouched for long (their marker never came to this process)."""
        limit = time.monotonic() - older_than_s
        stale = {run for (run, _p), part in self.parts.items() if part.touched < limit}
        if not stale:
            return
        self.parts = {k: v for k, v in self.parts.items() if k[0] not in stale}
        self.subs = {k: v for k, v in self.subs.items() if k[0] not in stale}
        self.settled = {k: v for k, v in self.settled.items() if k[0] not in stale}


# -------------------------------------------------------------------------------- agent
@dataclass
class _Batch:
    """What a batch of messages found, per (run, partition), and the repairs to send."""

    groups: dict[tuple[str, int], store.Progress] = field(default_factory=dict)
    repairs: list[Repair] = field(default_factory=list)
    lines: int = 0

    def group(self, run_id: str, partition: int, offset: int) -> store.Progress:
        g = self.groups.get((run_id, partition))
        if g is None:
            g = self.groups[(run_id, partition)] = store.Progress(run_id, partition, offset)
        g.through_offset = max(g.through_offset, offset)
        return g


class Reconciler:
    """The agent's work on one batch of report messages, with its I/O injected: the ledger
    table (``get``/``items``), a send per repair topic, and a connection pool."""

    def __init__(
        self,
        ledger_table: Any,
        send: Callable[[str, bytes, bytes], Awaitable[Any]],
        pool: Callable[[], Awaitable[AsyncConnectionPool[Any]]],
        partitions: int,
        index: LedgerIndex | None = None,
    ) -> None:
        self.table = ledger_table
        # The ledger's day index (streams.ledger.due): the end of a report reads only the
        # states with an item requested in its window. None: every state of the partition.
        self.index = index
        self.send = send
        self.pool = pool
        self.partitions = partitions
        self.memory = RunMemory()
        self._partition_of: dict[bytes, int] = {}  # murmur2 in Python is slow: once per key
        self.runs: dict[str, RunSpec | None] = {}
        self._configs: dict[str, MatchConfig] = {}
        self.lines_matched = 0  # this process, all runs (for figures)

    def _state(self, key: bytes) -> SubscriptionState | None:
        raw = self.table.get(key)
        return decode_for_match(raw) if raw is not None else None

    async def _db(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(conn)``; a lost database is waited for (nothing may be skipped), any
        other error is retried a few times and then raised."""
        delay, failures = 0.2, 0
        while True:
            try:
                pool = await self.pool()
                async with pool.connection() as conn:
                    return await fn(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("reconcile: %s: database unavailable (%s); retrying", what, exc)
            except Exception as exc:
                failures += 1
                if failures >= DB_ATTEMPTS_ON_BUG:
                    raise
                log.warning("reconcile: %s failed (%r); retrying", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, DB_RETRY_MAX_S)

    async def _run(self, run_id: str) -> RunSpec | None:
        if run_id not in self.runs:
            spec = await self._db("load run", lambda c: store.load_run(c, run_id))
            if spec is None:
                log.error("reconcile: report for unknown run %s; its lines are skipped", run_id)
            else:
                self._configs[run_id] = spec.match_config()
            self.runs[run_id] = spec
        return self.runs[run_id]

    async def handle(self, messages: Sequence[tuple[int, int, bytes]]) -> None:
        """Process ``(partition, offset, value)`` report messages in order."""
        batch = _Batch()
        now = now_ms()
        runs = self.runs
        for partition, offset, value in messages:
            try:
                msg = decode_report_message(value)
            except (DecodeError, ValidationError) as exc:
                log.error("reconcile: undecodable report message on %s: %s", partition, exc)
                continue
            spec = runs[msg.run_id] if msg.run_id in runs else await self._run(msg.run_id)
            if spec is None:
                continue
            if isinstance(msg, EndOfReport):
                await self._flush(batch)
                batch = _Batch()
                await self._end(spec, msg, offset, now)
                continue
            known = False  # the feeder says which partition its lines' keys are on
            if isinstance(msg, ReportBatch):
                lines: Sequence[ReportLine] = msg.lines
                known = msg.partition == partition
                if not known:
                    log.warning(
                        "reconcile: run %s: lines for partition %d arrived on %d",
                        spec.run_id,
                        msg.partition,
                        partition,
                    )
            else:
                lines = (msg.line,)
            self._match(spec, partition, offset, lines, batch, now, known)
            if batch.lines >= FLUSH_LINES:
                await self._flush(batch)
                batch = _Batch()
            else:
                await asyncio.sleep(0)  # a message of lines is long: let the loop run
        await self._flush(batch)
        self.memory.evict()

    def _match(
        self,
        spec: RunSpec,
        partition: int,
        offset: int,
        lines: Sequence[ReportLine],
        batch: _Batch,
        now: int,
        known: bool = False,
    ) -> None:
        """Classify the lines of one message into ``batch`` (no I/O). ``known``: the lines'
        keys are on ``partition`` (saves the end of the report hashing them)."""
        cfg = self._configs[spec.run_id]
        group = batch.group(spec.run_id, partition, offset)
        found = group.found
        partition_of = self._partition_of
        for line in lines:
            try:
                sub = line.subscription_id
                key = sub.encode() if sub else None
                raw = self.table.get(key) if key is not None else None
                state = decode_for_match(raw) if raw is not None else None
                if known and key is not None:
                    partition_of[key] = partition
                if state is not None and state.subscription_id != sub:
                    state = None  # never for a well-keyed table; the matcher would refuse
                item = self.memory.match(cfg, spec.run_id, partition, line, state, raw)
            except Exception:
                # A line that cannot be matched (an unreadable ledger state) is not seen:
                # its partition ends incomplete, so the run says so instead of lying.
                log.exception("reconcile: run %s: cannot match %r", spec.run_id, line)
                continue
            self.lines_matched += 1
            batch.lines += 1
            if item is not None:
                found.append((offset, item))
                repair = repair_for(item, state, now)
                if repair is not None:
                    batch.repairs.append(repair)

    async def _flush(self, batch: _Batch) -> None:
        if batch.groups:
            groups = list(batch.groups.values())
            at = now_ms()
            await self._db("record items", lambda c: store.record_progress(c, groups, at))
        for repair in batch.repairs:
            await self.send(repair.topic, repair.key, repair.value)

    def _partition_items(self, run_id: str, partition: int) -> Iterable[tuple[bytes, Any]]:
        """(key, encoded state) of the subscriptions of ``partition`` that may hold an item
        the end of run ``run_id``'s report judges: from the day index when there is one,
        else every state of the table (hashing each key once)."""
        if self.index is not None:
            judged = end_config(self._configs[run_id])
            if judged is None:
                return
            keys = self.index.keys_requested(partition, judged.window_start, judged.window_end - 1)
            for key in sorted(keys):
                yield key, self.table.get(key)
            return
        cache = self._partition_of
        for key, raw in list(self.table.items()):
            p = cache.get(key)
            if p is None:
                p = cache[key] = partition_for(key, self.partitions)
            if p == partition:
                yield key, raw

    def _partition_states(
        self, run_id: str, partition: int, unreadable: list[bytes]
    ) -> Iterable[SubscriptionState]:
        """The ledger states of the subscriptions of ``partition`` held here that the end of
        run ``run_id``'s report must look at, decoded one at a time (a partition of a large
        table does not fit in memory decoded); the keys of states that cannot be read are
        appended to ``unreadable``."""
        settled = self.memory.unchanged_and_settled
        for key, raw in self._partition_items(run_id, partition):
            if raw is None:
                continue
            try:
                if settled(run_id, key.decode("utf-8", "replace"), raw):
                    continue
                yield decode_for_match(raw)
            except (DecodeError, ValidationError):
                log.exception("reconcile: unreadable ledger state %r", key)
                unreadable.append(key)

    async def _end(self, spec: RunSpec, marker: EndOfReport, offset: int, now: int) -> None:
        run_id, partition = spec.run_id, marker.partition
        unreadable: list[bytes] = []
        items, complete = self.memory.end(
            self._configs[run_id],
            run_id,
            partition,
            self._partition_states(run_id, partition, unreadable),
            marker.lines_sent,
        )
        complete = complete and not unreadable
        seen = self.memory.lines_seen(run_id, partition)
        if not complete:
            log.warning(
                "reconcile: run %s partition %d: saw %d of %d lines (taken over mid-run)"
                " or an unreadable ledger state;"
                " partition incomplete, run the window again",
                run_id,
                partition,
                seen,
                marker.lines_sent,
            )
        batch = _Batch()
        group = batch.group(run_id, partition, offset)
        for item in items:
            group.found.append((offset, item))
            sub = item.subscription_id
            state = self._state(sub.encode()) if sub else None
            repair = repair_for(item, state, now)
            if repair is not None:
                batch.repairs.append(repair)
        await self._flush(batch)
        at = now_ms()

        async def done(conn: Any) -> bool:
            await store.mark_partition_done(
                conn,
                run_id,
                partition,
                lines_sent=marker.lines_sent,
                lines_matched=seen,
                complete=complete,
                items=len(items),
                at=at,
            )
            return await store.finish_if_complete(conn, run_id, at)

        if await self._db("partition done", done):
            log.info("reconcile: run %s finished", run_id)
        self.memory.forget(run_id, partition)


def register_reconciler(
    app: Any,
    topics: Topics,
    ledger_table: Any,
    settings: Any,
    dsn: str,
    *,
    report_topic: Any = None,
    nightly: bool | None = None,
    index: LedgerIndex | None = None,
) -> Any:
    """The reconcile agent on ``billing.provider-report`` (declared here unless given), reading
    ``ledger_table`` (the ledger agent's state table, co-partitioned), writing to PostgreSQL
    at ``dsn``; and, unless disabled (``BILLING_RECON_NIGHTLY``), the nightly crontab."""
    partitions = int(settings.kafka_partitions)
    report = report_topic or raw_topic(app, topic_names.PROVIDER_REPORT, partitions=partitions)
    targets = {
        topic_names.PROVIDER_EVENTS: topics.provider_events,
        topic_names.COMMANDS: topics.commands,
    }
    pool: list[AsyncConnectionPool[Any]] = []

    async def get_pool() -> AsyncConnectionPool[Any]:
        if not pool:
            p: AsyncConnectionPool[Any] = AsyncConnectionPool(
                dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
            )
            await p.open(wait=True, timeout=30)
            pool.append(p)
        return pool[0]

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await targets[topic].send(key=key, value=value)

    worker = Reconciler(ledger_table, send, get_pool, partitions, index)
    app.billing_reconciler = worker  # figures and tests

    @app.agent(report, name="reconcile")
    async def reconcile(stream: Any) -> None:
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            await worker.handle([(e.message.partition, e.message.offset, e.value) for e in events])

    cfg = ReconSettings.of(settings)
    if cfg.nightly if nightly is None else nightly:

        @app.crontab(cfg.cron, timezone=cfg.zone(), on_leader=True)
        async def nightly_reconciliation() -> None:
            try:
                await run_nightly(settings, dsn)
            except Exception:
                log.exception("nightly reconciliation failed")

    return reconcile
