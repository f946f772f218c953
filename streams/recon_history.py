"""Reconciliation in the history worker: results into ClickHouse, and batch runs.

1. Results. Runs and discrepancies are decided in PostgreSQL (``reconciler.store``: the
   agents and the batch path write there, admins resolve there). The history worker copies
   what changed into ClickHouse every ``RECON_SYNC_S``: ``recon_runs`` and
   ``recon_run_totals`` (one row per run state) and ``discrepancies`` (one row per
   discrepancy state, with its resolution). Every row carries a version (the time of its last
   change, ms), the tables are ``ReplacingMergeTree(version)``, so copying a row twice, or
   copying with an overlap, changes nothing. The watermark lives in memory: a restarted
   worker copies everything once more (the tables are small: runs and discrepancies, never
   the matched items).
2. Batch runs (``reconciler.batch_run``): executed here because this process owns the
   ClickHouse store. Before classifying, the run waits until this worker's consumer group
   has committed ``billing.events`` up to the end offsets read when the run started, so the
   history holds every event the report can refer to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from billing.clickhouse import ClickHouse
from schemas.clickhouse import COLUMNS
from schemas.money import Money
from schemas.periods import dt_to_ms, ms_to_dt
from schemas.topics import EVENTS

log = logging.getLogger(__name__)

RECON_SYNC_S = 10.0
SYNC_OVERLAP_MS = 5 * 60_000  # clocks of the writers (workers, API) may differ this much
CAUGHT_UP_TIMEOUT_S = 300.0

_RUNS_SQL = """
SELECT run_id::text AS run_id, engine, source, source_ref, status, window_start, window_end,
    taken_at, started_at, finished_at, duration_ms, lines, counts, totals, discrepancies,
    new_discrepancies, unresolved, COALESCE(error, '') AS error,
    GREATEST(started_at, fed_at, finished_at) AS changed_at
FROM recon_runs
WHERE GREATEST(started_at, fed_at, finished_at) >= %s
"""

_ITEMS_SQL = """
SELECT item_key, first_run_id::text AS run_id, kind, object,
    COALESCE(resolution, 'open') AS status, repair, COALESCE(subscription_id, '') AS sub,
    COALESCE(payment_id, '') AS payment_id, COALESCE(refund_id, '') AS refund_id,
    COALESCE(provider_id, '') AS provider_id, COALESCE(ours_status, '') AS ours_status,
    COALESCE(theirs_status, '') AS theirs_status, ours_amount_minor, theirs_amount_minor,
    COALESCE(ours_currency, theirs_currency, '') AS currency, detail, first_seen_at,
    GREATEST(last_seen_at, repaired_at, resolved_at) AS changed_at
FROM recon_items
WHERE discrepancy AND GREATEST(last_seen_at, repaired_at, resolved_at) >= %s
"""


async def sync_recon(conn: AsyncConnection[Any], client: ClickHouse, since_ms: int) -> int:
    """Copy runs and discrepancies changed since ``since_ms`` into ClickHouse; returns the
    newest change copied (ms), or ``since_ms`` when nothing changed."""
    since = _dt(since_ms)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_RUNS_SQL, (since,))
        runs = await cur.fetchall()
        await cur.execute(_ITEMS_SQL, (since,))
        items = await cur.fetchall()
    newest = since_ms
    run_rows, total_rows, item_rows = [], [], []
    for r in runs:
        version = dt_to_ms(r["changed_at"])
        newest = max(newest, version)
        run_rows.append(
            (
                r["run_id"],
                r["engine"],
                r["source"],
                r["source_ref"],
                r["status"],
                dt_to_ms(r["window_start"]),
                dt_to_ms(r["window_end"]),
                dt_to_ms(r["taken_at"]),
                dt_to_ms(r["started_at"]),
                dt_to_ms(r["finished_at"]) if r["finished_at"] is not None else None,
                r["duration_ms"],
                r["lines"],
                {k: int(v) for k, v in (r["counts"] or {}).items()},
                r["discrepancies"],
                r["new_discrepancies"],
                r["unresolved"],
                r["error"],
                version,
            )
        )
        for name, per_currency in (r["totals"] or {}).items():
            obj, _, side = name.partition("_")
            for currency, amount in per_currency.items():
                total_rows.append(
                    (r["run_id"], obj, side, currency, _minor(amount, currency), version)
                )
    for i in items:
        version = dt_to_ms(i["changed_at"])
        newest = max(newest, version)
        item_rows.append(
            (
                i["item_key"],
                i["run_id"],
                i["kind"],
                i["object"],
                i["status"],
                i["repair"],
                i["sub"],
                i["payment_id"],
                i["refund_id"],
                i["provider_id"],
                i["ours_status"],
                i["theirs_status"],
                i["ours_amount_minor"],
                i["theirs_amount_minor"],
                i["currency"].strip(),
                i["detail"],
                dt_to_ms(i["first_seen_at"]),
                version,
                version,
            )
        )
    await conn.commit()
    for table, rows in (
        ("recon_runs", run_rows),
        ("recon_run_totals", total_rows),
        ("discrepancies", item_rows),
    ):
        if rows:
            await asyncio.to_thread(client.insert, table, rows, COLUMNS[table])
    return newest


def _dt(ms: int) -> datetime:
    return ms_to_dt(ms)


def _minor(amount: str, currency: str) -> int:
    return Money.from_decimal(Decimal(amount), currency).amount_minor


class ReconSync:
    """The periodic copy, with its watermark."""

    def __init__(self, client: Callable[[], Awaitable[ClickHouse]], dsn: str) -> None:
        self.client = client
        self.dsn = dsn
        self.since = 0

    async def once(self) -> None:
        async with await AsyncConnection.connect(self.dsn) as conn:
            newest = await sync_recon(conn, await self.client(), self.since)
        self.since = max(0, newest - SYNC_OVERLAP_MS) if newest else self.since


async def wait_caught_up(
    bootstrap: str, group_id: str, *, timeout_s: float = CAUGHT_UP_TIMEOUT_S
) -> None:
    """Until group ``group_id`` has committed ``billing.events`` up to its end offsets as
    of now (every event published before the call is in the history)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        # A consumer without a subscription has no topic metadata yet (its bootstrap asks
        # for none): ask for the topic's, and refuse to call an unknown topic "caught up".
        described = await admin.describe_topics([EVENTS])
        parts = {p["partition"] for t in described for p in t.get("partitions") or []}
        if not parts:
            raise TimeoutError(f"{EVENTS} has no partitions the history could be behind on")
        tps = [TopicPartition(EVENTS, p) for p in sorted(parts)]
        ends = await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            try:
                committed = await admin.list_consumer_group_offsets(group_id)
            except KafkaError as exc:  # e.g. no coordinator yet: nothing is known committed
                log.info("history offsets not readable yet: %r", exc)
                committed = {}
            behind = {
                tp.partition: end - (committed[tp].offset if tp in committed else 0)
                for tp, end in ends.items()
                if end > (committed[tp].offset if tp in committed else 0)
            }
            if not behind:
                return
            if loop.time() >= deadline:
                raise TimeoutError(f"the history is behind billing.events: {behind}")
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
        await consumer.stop()


def run_summary_json(outcome: Any) -> dict[str, Any]:
    """What the batch endpoint answers when asked to wait."""
    return {
        "run_id": outcome.run_id,
        "lines": outcome.lines,
        "counts": outcome.summary.counts,
        "recorded": outcome.recorded,
        "repairs": outcome.repairs,
        "load_s": round(outcome.load_s, 3),
        "classify_s": round(outcome.classify_s, 3),
        "record_s": round(outcome.record_s, 3),
    }
