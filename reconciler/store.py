"""Reconciliation runs and their items in PostgreSQL (tables of migration 0005).

Every write is idempotent, because the agent that calls most of them is at-least-once:

- an item is identified across runs by (object, provider id or our id, class)
  (``item_key``): a re-run, or a replayed report line, finds the same row and only moves its
  "last seen"; ``first_run_id`` says which run found it first, so "new in this run" is exact;
- a run links to every item it recorded (``recon_run_items``, the item as that run saw it),
  and its summary (counts per class, succeeded totals per currency on both sides) is computed
  from those links, plus its tallies, when its last partition is done, so a replay computes
  the same summary;
- the streaming agent records through ``record_progress``: it only counts the ``matched``
  items (``TALLIED_CLASSES``) of a (run, partition) in a tally (``recon_run_tallies``, migration
  0008) instead of a row each, and records each message of ``billing.provider-report`` once:
  a partition's tally keeps the last offset recorded (``through_offset``), and the items of a
  message at or before it (a replay, by this worker or the next owner of the partition) are
  not recorded again;
- a partition's end is recorded once per (run, partition).

Resolution of a discrepancy: the reconciler's own repairs (``apply_provider_status``,
``refund_later_duplicate``) resolve it as ``repaired`` when issued; an escalation waits for an
admin's ``accept_provider`` / ``accept_ours`` / ``write_off`` (``resolve``). A later run that
finds a repaired item escalated (the repair did not take) reopens it; an admin's decision is
never undone by a run.

All functions take an open psycopg ``AsyncConnection`` and commit their own transaction. The records
they return (``RunSpec``, ``RunReport``, ``ItemRow``) are in ``schemas.recon_runs``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from reconciler.matcher import TOTAL_SIDES, summarize
from schemas.errors import BillingError
from schemas.ids import observation_id_for
from schemas.messages import PaymentObserved, RefundObserved
from schemas.money import Money
from schemas.periods import dt_to_ms, ms_to_dt
from schemas.recon_match import (
    AUTO_REPAIRS,
    DEFAULT_HOLD_SLA_MS,
    DEFAULT_PENDING_SLA_MS,
    MATCH_CLASSES,
    RECONCILER_ACTOR,
    MatchConfig,
    MatchItem,
    Summary,
)
from schemas.recon_runs import (
    ADMIN_RESOLUTIONS,
    AdminResolution,
    ItemRow,
    RunReport,
    RunSource,
    RunSpec,
)


class StoreError(BillingError):
    """Root of the store's refusals (an admin endpoint maps them to 4xx)."""


class RunNotFound(StoreError):
    pass


class ItemNotFound(StoreError):
    pass


class NotADiscrepancy(StoreError):
    """Only a discrepancy can be resolved (matched and in-flight items need nothing)."""


class AlreadyResolved(StoreError):
    """An admin already decided otherwise; ``resolution`` is that decision."""

    def __init__(self, item_key: str, resolution: str, resolved_by: str | None) -> None:
        super().__init__(f"{item_key} is already resolved: {resolution} by {resolved_by}")
        self.resolution = resolution
        self.resolved_by = resolved_by


# ------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class Resolved:
    """The outcome of ``resolve``. ``follow_up``: for ``accept_provider`` where the ledger can
    adopt the provider's view (our payment or refund the provider never made: it is canceled),
    the provider event to publish to billing.provider-events keyed by ``item.subscription_id``
    (its id is derived, so publishing it twice is harmless); otherwise None (the decision is
    recorded; money moves, if any, by an admin action of its own)."""

    item: ItemRow
    follow_up: PaymentObserved | RefundObserved | None
    changed: bool


# --------------------------------------------------------------------------- item keys
def item_ident(item: MatchItem) -> str:
    """The provider's id of the object, else ours."""
    ours = item.payment_id if item.object == "payment" else item.refund_id
    ident = item.provider_id or (f"ours:{ours}" if ours else None)
    if ident is None:
        raise ValueError(f"item names no object: {item}")
    return ident


def item_key(item: MatchItem) -> str:
    """(object, provider id or our id, class): the same discrepancy in every run."""
    return f"{item.object}:{item_ident(item)}:{item.kind}"


_item_encoder = msgspec.json.Encoder()
_item_decoder = msgspec.json.Decoder(MatchItem)


# -------------------------------------------------------------------------------- runs
async def create_run(
    conn: AsyncConnection[Any],
    *,
    run_id: str,
    window_start: int,
    window_end: int,
    source: RunSource,
    taken_at: int,
    source_ref: str = "",
    trigger: str = "cli",
    pending_sla_ms: int = DEFAULT_PENDING_SLA_MS,
    hold_sla_ms: int = DEFAULT_HOLD_SLA_MS,
    schedule_key: str | None = None,
) -> RunSpec | None:
    """Record a new run (status ``feeding``). With a ``schedule_key`` (the nightly run of a
    day) only the first caller gets a run; the others get None."""
    MatchConfig(window_start, window_end, taken_at, pending_sla_ms, hold_sla_ms)  # validates
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO recon_runs (run_id, window_start, window_end, source, source_ref,"
            " trigger, schedule_key, taken_at, pending_sla_ms, hold_sla_ms, started_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (schedule_key) DO NOTHING",
            (
                run_id,
                ms_to_dt(window_start),
                ms_to_dt(window_end),
                source,
                source_ref,
                trigger,
                schedule_key,
                ms_to_dt(taken_at),
                pending_sla_ms,
                hold_sla_ms,
                ms_to_dt(taken_at),
            ),
        )
        if cur.rowcount == 0:
            return None
    return RunSpec(
        run_id=run_id,
        window_start=window_start,
        window_end=window_end,
        taken_at=taken_at,
        pending_sla_ms=pending_sla_ms,
        hold_sla_ms=hold_sla_ms,
        source=source,
        source_ref=source_ref,
        trigger=trigger,
        status="feeding",
        partitions=None,
    )


_RUN_COLUMNS = (
    "r.run_id::text AS run_id, r.window_start, r.window_end, r.taken_at, r.pending_sla_ms,"
    " r.hold_sla_ms, r.source, r.source_ref, r.trigger, r.status, r.partitions"
)


def _spec(row: dict[str, Any]) -> RunSpec:
    return RunSpec(
        run_id=row["run_id"],
        window_start=dt_to_ms(row["window_start"]),
        window_end=dt_to_ms(row["window_end"]),
        taken_at=dt_to_ms(row["taken_at"]),
        pending_sla_ms=int(row["pending_sla_ms"]),
        hold_sla_ms=int(row["hold_sla_ms"]),
        source=row["source"],
        source_ref=row["source_ref"],
        trigger=row["trigger"],
        status=row["status"],
        partitions=row["partitions"],
    )


async def load_run(conn: AsyncConnection[Any], run_id: str) -> RunSpec | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_RUN_COLUMNS} FROM recon_runs r WHERE r.run_id = %s", (run_id,))
        row = await cur.fetchone()
    await conn.commit()
    return _spec(row) if row is not None else None


async def start_feeding(
    conn: AsyncConnection[Any], run_id: str, *, lines: int, partitions: int
) -> None:
    """Before the first line is published: how many lines and partitions the run has, so the
    agent that finishes the last partition knows the run is complete."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE recon_runs SET lines = %s, partitions = %s WHERE run_id = %s",
            (lines, partitions, run_id),
        )


async def mark_fed(conn: AsyncConnection[Any], run_id: str, at: int) -> None:
    """Every line and marker is published; the agents are matching (unless already done)."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE recon_runs SET fed_at = %s,"
            " status = CASE WHEN status = 'feeding' THEN 'matching' ELSE status END"
            " WHERE run_id = %s",
            (ms_to_dt(at), run_id),
        )


async def fail_run(conn: AsyncConnection[Any], run_id: str, error: str, at: int) -> None:
    """The report could not be fetched or published. A run whose markers all arrived is
    complete whatever the feeder says afterwards, so a finished run stays finished."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE recon_runs SET error = %s, finished_at = %s,"
            " duration_ms = (EXTRACT(EPOCH FROM (%s - started_at)) * 1000)::bigint,"
            " status = 'failed' WHERE run_id = %s AND status IN ('feeding', 'matching')",
            (error[:2000], ms_to_dt(at), ms_to_dt(at), run_id),
        )


# ------------------------------------------------------------------------------- items
# One statement per batch: the rows travel as one JSON array (jsonb_to_recordset), which is
# several times faster than a statement per item at the agent's batch sizes.
_ROWS = """jsonb_to_recordset(%s::jsonb) AS x(key text, object text, ident text, kind text,
    discrepancy boolean, subscription_id text, payment_id text, refund_id text,
    provider_id text, ours_status text, theirs_status text, ours_minor bigint,
    ours_currency text, theirs_minor bigint, theirs_currency text, repair text,
    refund_key text, detail text, run_id uuid, at timestamptz, repaired_at timestamptz,
    resolution text, resolved_by text, partition integer, item jsonb)"""

_UPSERT_ITEMS = f"""
INSERT INTO recon_items AS i (item_key, object, ident, kind, discrepancy, subscription_id,
    payment_id, refund_id, provider_id, ours_status, theirs_status, ours_amount_minor,
    ours_currency, theirs_amount_minor, theirs_currency, repair, refund_key, detail,
    first_run_id, last_run_id, first_seen_at, last_seen_at, repaired_at, resolution,
    resolved_by, resolved_at)
SELECT key, object, ident, kind, discrepancy, subscription_id, payment_id, refund_id,
    provider_id, ours_status, theirs_status, ours_minor, ours_currency, theirs_minor,
    theirs_currency, repair, refund_key, detail, run_id, run_id, at, at, repaired_at,
    resolution, resolved_by, repaired_at
FROM {_ROWS}
ORDER BY key
ON CONFLICT (item_key) DO UPDATE SET
    subscription_id = COALESCE(EXCLUDED.subscription_id, i.subscription_id),
    payment_id = COALESCE(EXCLUDED.payment_id, i.payment_id),
    refund_id = COALESCE(EXCLUDED.refund_id, i.refund_id),
    ours_status = EXCLUDED.ours_status,
    theirs_status = EXCLUDED.theirs_status,
    ours_amount_minor = EXCLUDED.ours_amount_minor,
    ours_currency = EXCLUDED.ours_currency,
    theirs_amount_minor = EXCLUDED.theirs_amount_minor,
    theirs_currency = EXCLUDED.theirs_currency,
    repair = EXCLUDED.repair,
    refund_key = EXCLUDED.refund_key,
    detail = EXCLUDED.detail,
    last_run_id = CASE WHEN EXCLUDED.last_seen_at >= i.last_seen_at
        THEN EXCLUDED.last_run_id ELSE i.last_run_id END,
    last_seen_at = GREATEST(EXCLUDED.last_seen_at, i.last_seen_at),
    repaired_at = COALESCE(EXCLUDED.repaired_at, i.repaired_at),
    resolution = CASE
        WHEN i.resolution = 'repaired' AND EXCLUDED.repair = 'escalate' THEN NULL
        WHEN i.resolution IS NULL AND EXCLUDED.resolution = 'repaired' THEN 'repaired'
        ELSE i.resolution END,
    resolved_by = CASE
        WHEN i.resolution = 'repaired' AND EXCLUDED.repair = 'escalate' THEN NULL
        WHEN i.resolution IS NULL AND EXCLUDED.resolution = 'repaired' THEN EXCLUDED.resolved_by
        ELSE i.resolved_by END,
    resolved_at = CASE
        WHEN i.resolution = 'repaired' AND EXCLUDED.repair = 'escalate' THEN NULL
        WHEN i.resolution IS NULL AND EXCLUDED.resolution = 'repaired' THEN EXCLUDED.resolved_at
        ELSE i.resolved_at END
"""

_LINK_ITEMS = f"""
INSERT INTO recon_run_items (run_id, item_key, partition, kind, item)
SELECT run_id, key, partition, kind, item FROM {_ROWS}
ON CONFLICT (run_id, item_key) DO UPDATE SET item = EXCLUDED.item, kind = EXCLUDED.kind
"""


class _Row(msgspec.Struct, kw_only=True):
    """One item as a row of ``_ROWS``."""

    key: str
    object: str
    ident: str
    kind: str
    discrepancy: bool
    subscription_id: str | None
    payment_id: str | None
    refund_id: str | None
    provider_id: str | None
    ours_status: str | None
    theirs_status: str | None
    ours_minor: int | None
    ours_currency: str | None
    theirs_minor: int | None
    theirs_currency: str | None
    repair: str
    refund_key: str | None
    detail: str
    run_id: str
    at: datetime
    repaired_at: datetime | None
    resolution: str | None
    resolved_by: str | None
    partition: int
    item: MatchItem


def _row(run_id: str, partition: int, item: MatchItem, at: datetime) -> _Row:
    auto = item.discrepancy and item.repair in AUTO_REPAIRS
    ours, theirs = item.ours_amount, item.theirs_amount
    return _Row(
        key=item_key(item),
        object=item.object,
        ident=item_ident(item),
        kind=item.kind,
        discrepancy=item.discrepancy,
        subscription_id=item.subscription_id,
        payment_id=item.payment_id,
        refund_id=item.refund_id,
        provider_id=item.provider_id,
        ours_status=item.ours_status,
        theirs_status=item.theirs_status,
        ours_minor=ours.amount_minor if ours else None,
        ours_currency=ours.currency if ours else None,
        theirs_minor=theirs.amount_minor if theirs else None,
        theirs_currency=theirs.currency if theirs else None,
        repair=item.repair,
        refund_key=item.refund_key,
        detail=item.detail,
        run_id=run_id,
        at=at,
        repaired_at=at if auto else None,
        resolution="repaired" if auto else None,
        resolved_by=RECONCILER_ACTOR if auto else None,
        partition=partition,
        item=item,
    )


async def record_items(
    conn: AsyncConnection[Any],
    run_id: str,
    items: Sequence[tuple[int, MatchItem]],
    at: int,
) -> None:
    """Upsert ``(partition, item)`` pairs found by run ``run_id`` and link them to the run,
    in one transaction. Recording the same items again changes nothing but "last seen"."""
    if not items:
        return
    when = ms_to_dt(at)
    rows: dict[str, _Row] = {}
    for partition, item in items:
        row = _row(run_id, partition, item, when)
        rows[row.key] = row  # one row per key and statement (ON CONFLICT needs it)
    # Rows in key order (ORDER BY key): two workers upserting overlapping items lock them in
    # the same order, so they cannot deadlock.
    payload = _item_encoder.encode(list(rows.values())).decode()
    async with conn.transaction():
        await conn.execute(_UPSERT_ITEMS, (payload,))
        await conn.execute(_LINK_ITEMS, (payload,))


# ------------------------------------------------------------------------------ tallies
# Items of these classes are counted per (run, partition) by ``record_progress`` instead of
# recorded one by one: they agree with the provider, so nothing is ever decided about them.
TALLIED_CLASSES: frozenset[str] = frozenset({"matched"})


@dataclass
class Tally:
    """Counts per class and succeeded totals (minor units) per side and currency of items
    that were counted, not recorded (the shape of ``recon_run_tallies``)."""

    counts: dict[str, int] = field(default_factory=dict)
    totals: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, item: MatchItem) -> None:
        self.counts[item.kind] = self.counts.get(item.kind, 0) + 1
        prefix = "payments" if item.object == "payment" else "refunds"
        if item.ours_status == "succeeded" and item.ours_amount is not None:
            self._add(f"{prefix}_ours", item.ours_amount)
        if item.theirs_status == "succeeded" and item.theirs_amount is not None:
            self._add(f"{prefix}_theirs", item.theirs_amount)

    def _add(self, side: str, amount: Money) -> None:
        per = self.totals.setdefault(side, {})
        per[amount.currency] = per.get(amount.currency, 0) + amount.amount_minor

    def merge(self, other: Tally) -> None:
        for kind, n in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
        for side, per in other.totals.items():
            mine = self.totals.setdefault(side, {})
            for currency, minor in per.items():
                mine[currency] = mine.get(currency, 0) + minor

    @classmethod
    def of(cls, counts: Any, totals: Any) -> Tally:
        return cls(
            counts={str(k): int(v) for k, v in (counts or {}).items()},
            totals={
                str(side): {str(c): int(m) for c, m in per.items()}
                for side, per in (totals or {}).items()
            },
        )


def add_tally(summary: Summary, tally: Tally) -> Summary:
    """``summary`` with the counted items of ``tally`` added."""
    counts = dict(summary.counts)
    for kind, n in tally.counts.items():
        counts[kind] = counts.get(kind, 0) + n
    sides: dict[str, dict[str, Money]] = {}
    for side in TOTAL_SIDES:
        merged = dict(getattr(summary, side))
        for currency, minor in tally.totals.get(side, {}).items():
            prior = merged.get(currency)
            merged[currency] = Money(minor + (prior.amount_minor if prior else 0), currency)
        sides[side] = merged
    return Summary(counts=counts, **sides)


@dataclass
class Progress:
    """What a run found in one partition of the report topic: ``found`` are (Kafka offset of
    the message, item) in offset order, ``through_offset`` the last offset processed (a
    message may give no item: a line seen before, another run's message)."""

    run_id: str
    partition: int
    through_offset: int
    found: list[tuple[int, MatchItem]] = field(default_factory=list)


_LOCK_TALLIES = """
INSERT INTO recon_run_tallies AS t (run_id, partition, updated_at)
SELECT r, p, %s FROM unnest(%s::uuid[], %s::integer[]) AS x(r, p)
ORDER BY r, p
ON CONFLICT (run_id, partition) DO UPDATE SET updated_at = EXCLUDED.updated_at
RETURNING run_id::text, partition, through_offset, counts, totals
"""

_UPDATE_TALLIES = """
UPDATE recon_run_tallies AS t SET through_offset = x.through_offset, counts = x.counts,
    totals = x.totals
FROM jsonb_to_recordset(%s::jsonb) AS x(run_id uuid, partition integer, through_offset bigint,
    counts jsonb, totals jsonb)
WHERE t.run_id = x.run_id AND t.partition = x.partition
"""


async def record_progress(conn: AsyncConnection[Any], progress: Sequence[Progress], at: int) -> int:
    """Record what runs found in partitions of the report topic, in one transaction: items of
    ``TALLIED_CLASSES`` are added to the (run, partition) tally, every other item is upserted
    and linked as ``record_items`` does. Only what comes after the offset the partition's
    tally has recorded through counts: a replayed message (the same worker after a failed
    commit, or the partition's next owner) records nothing twice. Returns how many items
    were recorded now."""
    groups: dict[tuple[str, int], Progress] = {}
    for p in progress:
        prior = groups.get((p.run_id, p.partition))
        if prior is None:
            groups[(p.run_id, p.partition)] = Progress(
                p.run_id, p.partition, p.through_offset, list(p.found)
            )
        else:  # the same partition twice: one group, in offset order
            prior.found.extend(p.found)
            prior.through_offset = max(prior.through_offset, p.through_offset)
    if not groups:
        return 0
    keys = sorted(groups)  # a fixed lock order: two workers cannot deadlock
    when = ms_to_dt(at)
    recorded = 0
    async with conn.transaction():
        cur = await conn.execute(_LOCK_TALLIES, (when, [k[0] for k in keys], [k[1] for k in keys]))
        current = {(str(r[0]), int(r[1])): r for r in await cur.fetchall()}
        rows: dict[str, _Row] = {}
        updates: list[dict[str, Any]] = []
        for key in keys:
            group = groups[key]
            _run, _part, through, counts, totals = current[key]
            if group.through_offset <= through:
                continue  # all of it recorded already
            tally = Tally.of(counts, totals)
            for offset, item in group.found:
                if offset <= through:
                    continue
                recorded += 1
                if item.kind in TALLIED_CLASSES:
                    tally.add(item)
                else:
                    row = _row(group.run_id, group.partition, item, when)
                    rows[row.key] = row
            updates.append(
                {
                    "run_id": group.run_id,
                    "partition": group.partition,
                    "through_offset": group.through_offset,
                    "counts": tally.counts,
                    "totals": tally.totals,
                }
            )
        if rows:
            payload = _item_encoder.encode(list(rows.values())).decode()
            await conn.execute(_UPSERT_ITEMS, (payload,))
            await conn.execute(_LINK_ITEMS, (payload,))
        if updates:
            await conn.execute(_UPDATE_TALLIES, (json.dumps(updates),))
    return recorded


async def run_tally(conn: AsyncConnection[Any], run_id: str) -> Tally:
    """What run ``run_id`` counted instead of recording (every partition's tally)."""
    cur = await conn.execute(
        "SELECT counts, totals FROM recon_run_tallies WHERE run_id = %s", (run_id,)
    )
    total = Tally()
    for counts, totals in await cur.fetchall():
        total.merge(Tally.of(counts, totals))
    return total


async def mark_partition_done(
    conn: AsyncConnection[Any],
    run_id: str,
    partition: int,
    *,
    lines_sent: int,
    lines_matched: int,
    complete: bool,
    items: int,
    at: int,
) -> None:
    """The end-of-report marker of ``partition`` was processed. A replayed marker keeps the
    first complete outcome (its end-of-report items are recorded)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO recon_run_partitions AS p (run_id, partition, lines_sent,"
            " lines_matched, complete, items, done_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (run_id, partition) DO UPDATE SET"
            " complete = p.complete OR EXCLUDED.complete,"
            " lines_matched = GREATEST(p.lines_matched, EXCLUDED.lines_matched),"
            " items = GREATEST(p.items, EXCLUDED.items)",
            (run_id, partition, lines_sent, lines_matched, complete, items, ms_to_dt(at)),
        )


async def finish_if_complete(conn: AsyncConnection[Any], run_id: str, at: int) -> bool:
    """When every partition of the run is done, compute its summary from the items it found
    and finish it (``finished``, or ``incomplete`` when some partition was not seen whole).
    Idempotent: a replayed marker recomputes the same summary. True when finished now."""
    async with conn.transaction():
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT partitions, status, started_at FROM recon_runs WHERE run_id = %s"
                " FOR UPDATE",
                (run_id,),
            )
            run = await cur.fetchone()
            if run is None or run["partitions"] is None:
                return False
            await cur.execute(
                "SELECT count(*) AS done, count(*) FILTER (WHERE NOT complete) AS partial"
                " FROM recon_run_partitions WHERE run_id = %s",
                (run_id,),
            )
            parts = await cur.fetchone()
            assert parts is not None
            if parts["done"] < run["partitions"]:
                return False
        summary = await _run_summary(conn, run_id)
        values = await summary_values(conn, run_id, summary)
        status = "finished" if parts["partial"] == 0 else "incomplete"
        await conn.execute(
            f"UPDATE recon_runs SET status = %s, {SUMMARY_SET},"
            " finished_at = COALESCE(finished_at, %s),"
            " duration_ms = COALESCE(duration_ms,"
            "   (EXTRACT(EPOCH FROM (%s - started_at)) * 1000)::bigint),"
            " error = NULL WHERE run_id = %s",
            (status, *values, ms_to_dt(at), ms_to_dt(at), run_id),
        )
        return run["status"] not in ("finished", "incomplete")


# What a finished run records of its summary: the SET items ``summary_values`` gives values for.
SUMMARY_SET = (
    "counts = %s::jsonb, totals = %s::jsonb, discrepancies = %s, new_discrepancies = %s,"
    " unresolved = %s"
)


async def summary_values(
    conn: AsyncConnection[Any], run_id: str, summary: Summary
) -> tuple[str, str, int, int, int]:
    """``SUMMARY_SET``'s values for run ``run_id`` finishing with ``summary``: its counts and
    totals (JSON), its discrepancies, and how many of them are new and unresolved."""
    new, unresolved = await discrepancy_counts(conn, run_id)
    counts, totals = json.dumps(summary.counts), json.dumps(totals_json(summary))
    return counts, totals, summary.discrepancies, new, unresolved


def totals_json(summary: Summary) -> dict[str, dict[str, str]]:
    """Succeeded totals per side and currency, as exact decimal strings."""
    return {
        name: {cur: str(m.to_decimal()) for cur, m in sorted(getattr(summary, name).items())}
        for name in TOTAL_SIDES
    }


async def run_items(conn: AsyncConnection[Any], run_id: str) -> list[MatchItem]:
    """Every item run ``run_id`` recorded, as it found it: all it found but the items the
    streaming agent only counts (``TALLIED_CLASSES``, in ``run_tally``)."""
    cur = await conn.execute(
        "SELECT item::text FROM recon_run_items WHERE run_id = %s ORDER BY item_key", (run_id,)
    )
    return [_item_decoder.decode(row[0]) for row in await cur.fetchall()]


async def _run_summary(conn: AsyncConnection[Any], run_id: str) -> Summary:
    return add_tally(summarize(await run_items(conn, run_id)), await run_tally(conn, run_id))


async def discrepancy_counts(conn: AsyncConnection[Any], run_id: str) -> tuple[int, int]:
    """(discrepancies first found by this run, those of its discrepancies still unresolved)."""
    cur = await conn.execute(
        "SELECT count(*) FILTER (WHERE i.first_run_id = %s),"
        " count(*) FILTER (WHERE i.resolution IS NULL)"
        " FROM recon_run_items r JOIN recon_items i USING (item_key)"
        " WHERE r.run_id = %s AND i.discrepancy",
        (run_id, run_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


# A run with its live progress (partitions done) and live count of unresolved items.
_REPORT_SQL = f"""
SELECT {_RUN_COLUMNS}, r.lines, r.counts, r.totals, r.discrepancies, r.new_discrepancies,
    r.started_at, r.fed_at, r.finished_at, r.duration_ms, r.error,
    (SELECT count(*) FROM recon_run_partitions p WHERE p.run_id = r.run_id) AS done,
    (SELECT count(*) FROM recon_run_partitions p
        WHERE p.run_id = r.run_id AND NOT p.complete) AS partial,
    (SELECT count(*) FROM recon_run_items ri JOIN recon_items i USING (item_key)
        WHERE ri.run_id = r.run_id AND i.discrepancy AND i.resolution IS NULL) AS open
FROM recon_runs r
"""


def _report(row: dict[str, Any]) -> RunReport:
    counts: dict[str, int] = dict.fromkeys(MATCH_CLASSES, 0)
    counts.update(row["counts"] or {})
    return RunReport(
        spec=_spec(row),
        lines=row["lines"],
        partitions_done=row["done"],
        incomplete_partitions=row["partial"],
        counts=counts,
        totals=row["totals"] or {},
        discrepancies=row["discrepancies"],
        new_discrepancies=row["new_discrepancies"],
        unresolved=row["open"],
        started_at=row["started_at"],
        fed_at=row["fed_at"],
        finished_at=row["finished_at"],
        duration_ms=row["duration_ms"],
        error=row["error"],
    )


async def run_report(conn: AsyncConnection[Any], run_id: str) -> RunReport:
    """The run as recorded, with live progress and a live count of unresolved items."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_REPORT_SQL + " WHERE r.run_id = %s", (run_id,))
        row = await cur.fetchone()
    await conn.commit()
    if row is None:
        raise RunNotFound(run_id)
    return _report(row)


async def run_progress(conn: AsyncConnection[Any], run_id: str) -> tuple[str, int | None, int]:
    """(status, partitions, partitions done) of a run: what a progress display polls, without
    ``run_report``'s count of the run's open discrepancies. Raises ``RunNotFound``."""
    cur = await conn.execute(
        "SELECT status, partitions,"
        " (SELECT count(*) FROM recon_run_partitions p WHERE p.run_id = r.run_id)"
        " FROM recon_runs r WHERE r.run_id = %s",
        (run_id,),
    )
    row = await cur.fetchone()
    await conn.commit()
    if row is None:
        raise RunNotFound(run_id)
    return str(row[0]), row[1], int(row[2])


async def list_runs(
    conn: AsyncConnection[Any], *, limit: int = 20, offset: int = 0
) -> list[RunReport]:
    """Runs, newest first, each as ``run_report`` gives it (one query for the page)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _REPORT_SQL + " ORDER BY r.started_at DESC, r.run_id LIMIT %s OFFSET %s",
            (max(0, min(limit, 1000)), max(0, offset)),
        )
        rows = await cur.fetchall()
    await conn.commit()
    return [_report(row) for row in rows]


# ------------------------------------------------------------------------- escalations
_ITEM_COLUMNS = (
    "item_key, object, kind, discrepancy, subscription_id, payment_id, refund_id, provider_id,"
    " ours_status, theirs_status, ours_amount_minor, ours_currency, theirs_amount_minor,"
    " theirs_currency, repair, refund_key, detail, first_run_id::text AS first_run_id,"
    " last_run_id::text AS last_run_id, first_seen_at, last_seen_at, repaired_at, resolution,"
    " resolved_by, resolved_at, note"
)


def _money(minor: int | None, currency: str | None) -> Money | None:
    return Money(int(minor), currency.strip()) if minor is not None and currency else None


_AMOUNT_COLUMNS = ("ours_amount_minor", "ours_currency", "theirs_amount_minor", "theirs_currency")


def _item_row(row: dict[str, Any]) -> ItemRow:
    """A row of ``_ITEM_COLUMNS``: each column as the field of its name, but the amounts
    (minor units and currency columns) as ``Money``."""
    fields = {name: value for name, value in row.items() if name not in _AMOUNT_COLUMNS}
    return ItemRow(
        **fields,
        ours_amount=_money(row["ours_amount_minor"], row["ours_currency"]),
        theirs_amount=_money(row["theirs_amount_minor"], row["theirs_currency"]),
    )


async def list_items(
    conn: AsyncConnection[Any],
    *,
    run_id: str | None = None,
    unresolved_only: bool = True,
    discrepancies_only: bool = True,
    kinds: Iterable[str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[ItemRow]:
    """Items newest first: by default the discrepancies still waiting for a decision (the
    console's escalation queue); ``run_id`` restricts to the items that run found."""
    where: list[str] = []
    params: list[Any] = []
    if run_id is not None:
        where.append("item_key IN (SELECT item_key FROM recon_run_items WHERE run_id = %s)")
        params.append(run_id)
    if discrepancies_only:
        where.append("discrepancy")
    if unresolved_only:
        where.append("resolution IS NULL")
    kind_list = list(kinds or ())
    if kind_list:
        where.append("kind = ANY(%s)")
        params.append(kind_list)
    sql = f"SELECT {_ITEM_COLUMNS} FROM recon_items"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY last_seen_at DESC, item_key LIMIT %s OFFSET %s"
    params += [max(0, min(limit, 1000)), max(0, offset)]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        rows = await cur.fetchall()
    await conn.commit()
    return [_item_row(r) for r in rows]


async def get_item(conn: AsyncConnection[Any], key: str) -> ItemRow:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_ITEM_COLUMNS} FROM recon_items WHERE item_key = %s", (key,))
        row = await cur.fetchone()
    await conn.commit()
    if row is None:
        raise ItemNotFound(key)
    return _item_row(row)


async def resolve(
    conn: AsyncConnection[Any],
    key: str,
    *,
    resolution: AdminResolution,
    actor: str,
    note: str = "",
    at: int,
) -> Resolved:
    """An admin's decision on a discrepancy: ``accept_provider`` (the provider's books are
    right), ``accept_ours`` (ours are), ``write_off`` (the difference is absorbed). Allowed on
    an open discrepancy or one the reconciler repaired itself (an admin may overrule it).
    Deciding the same again is a no-op (``changed`` False); deciding otherwise after an admin
    decided raises ``AlreadyResolved``."""
    if resolution not in ADMIN_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(ADMIN_RESOLUTIONS)}")
    if not actor:
        raise ValueError("actor is required")
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_ITEM_COLUMNS} FROM recon_items WHERE item_key = %s FOR UPDATE",
            (key,),
        )
        row = await cur.fetchone()
        if row is None:
            raise ItemNotFound(key)
        current = _item_row(row)
        if not current.discrepancy:
            raise NotADiscrepancy(f"{key} is {current.kind}: nothing to resolve")
        if current.resolution in ADMIN_RESOLUTIONS:
            if current.resolution != resolution:
                raise AlreadyResolved(key, current.resolution or "", current.resolved_by)
            return Resolved(current, _follow_up(current, resolution, at), changed=False)
        await cur.execute(
            "UPDATE recon_items SET resolution = %s, resolved_by = %s, resolved_at = %s,"
            f" note = %s WHERE item_key = %s RETURNING {_ITEM_COLUMNS}",
            (resolution, actor, ms_to_dt(at), note, key),
        )
        updated = await cur.fetchone()
        assert updated is not None
    item = _item_row(updated)
    return Resolved(item, _follow_up(item, resolution, at), changed=True)


def _follow_up(item: ItemRow, resolution: str, at: int) -> PaymentObserved | RefundObserved | None:
    """Accepting the provider's view of our payment or refund that it never made means ours
    did not happen: the ledger applies a canceled observation from reconciliation (allowed
    over a terminal status). Needs the provider id the observation is about."""
    if resolution != "accept_provider" or item.ours_status is None or item.subscription_id is None:
        return None
    if item.provider_id is None or item.ours_amount is None:
        return None
    if item.theirs_status not in (None, "pending", "waiting_for_capture"):
        return None
    # The fields both observations share: a cancellation seen by reconciliation.
    canceled: dict[str, Any] = {
        "observation_id": observation_id_for(item.provider_id, "canceled"),
        "subscription_id": item.subscription_id,
        "observed_at": at,
        "source": "reconciliation",
        "status": "canceled",
        "amount": item.ours_amount,
        "cancellation_reason": "not at the provider (admin accepted the provider's report)",
    }
    if item.object == "payment" and item.kind == "missing_at_provider" and item.payment_id:
        return PaymentObserved(
            **canceled,
            payment_id=item.payment_id,
            provider_payment_id=item.provider_id,
            cancellation_party="merchant",
        )
    if (
        item.object == "refund"
        and item.kind == "refund_mismatch"
        and item.refund_id
        and item.payment_id
    ):
        return RefundObserved(
            **canceled,
            refund_id=item.refund_id,
            payment_id=item.payment_id,
            provider_refund_id=item.provider_id,
        )
    return None
