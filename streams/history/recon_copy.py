"""Reconciliation results into ClickHouse, in the history worker (streams/history/).

Runs and discrepancies are decided in PostgreSQL (``reconciler.store``: the agents and the
batch path write there, admins resolve there). The history worker copies what changed into
ClickHouse every ``RECON_SYNC_S``: ``recon_runs`` and ``recon_run_totals`` (one row per run
state) and ``discrepancies`` (one row per discrepancy state, with its resolution), for the
queries of analytics/recon.py. Every row carries a version (the time of its last change, ms),
the tables are ``ReplacingMergeTree(version)``, so copying a row twice, or copying with an
overlap, changes nothing. The watermark lives in memory: a restarted worker copies everything
once more (the tables are small: runs and discrepancies, never the matched items).

The queries name their columns as the ClickHouse tables do (schemas.clickhouse.COLUMNS), so
a row is those columns in order, instants as epoch ms.
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

log = logging.getLogger(__name__)

RECON_SYNC_S = 10.0
SYNC_OVERLAP_MS = 5 * 60_000  # clocks of the writers (workers, API) may differ this much

_RUNS_SQL = """
SELECT run_id::text AS run_id, engine, source, source_ref, status, window_start, window_end,
    taken_at, started_at, finished_at, duration_ms, lines, counts, totals, discrepancies,
    new_discrepancies, unresolved, COALESCE(error, '') AS error, changed AS version
FROM recon_runs CROSS JOIN LATERAL (SELECT GREATEST(started_at, fed_at, finished_at) AS changed) c
WHERE changed >= %s
"""

_ITEMS_SQL = """
SELECT item_key AS discrepancy_id, first_run_id::text AS run_id, kind AS class, object,
    COALESCE(resolution, 'open') AS status, repair,
    COALESCE(subscription_id, '') AS subscription_id, COALESCE(payment_id, '') AS payment_id,
    COALESCE(refund_id, '') AS refund_id, COALESCE(provider_id, '') AS provider_object_id,
    COALESCE(ours_status, '') AS ours_status, COALESCE(theirs_status, '') AS theirs_status,
    ours_amount_minor, theirs_amount_minor,
    btrim(COALESCE(ours_currency, theirs_currency, '')) AS currency, detail,
    first_seen_at AS detected_at, changed AS updated_at, changed AS version
FROM recon_items
    CROSS JOIN LATERAL (SELECT GREATEST(last_seen_at, repaired_at, resolved_at) AS changed) c
WHERE discrepancy AND changed >= %s
"""


async def sync_recon(conn: AsyncConnection[Any], client: ClickHouse, since_ms: int) -> int:
    """Copy runs and discrepancies changed since ``since_ms`` into ClickHouse; returns the
    newest change copied (ms), or ``since_ms`` when nothing changed."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_RUNS_SQL, (ms_to_dt(since_ms),))
        runs = await cur.fetchall()
        await cur.execute(_ITEMS_SQL, (ms_to_dt(since_ms),))
        items = await cur.fetchall()
    await conn.commit()
    totals = []
    for r in runs:
        r["counts"] = {k: int(v) for k, v in (r["counts"] or {}).items()}
        for name, per_currency in (r["totals"] or {}).items():
            obj, _, side = name.partition("_")
            for currency, amount in per_currency.items():
                minor = _minor(amount, currency)
                totals.append((r["run_id"], obj, side, currency, minor, dt_to_ms(r["version"])))
    for table, rows in (
        ("recon_runs", _rows("recon_runs", runs)),
        ("recon_run_totals", totals),
        ("discrepancies", _rows("discrepancies", items)),
    ):
        if rows:
            await asyncio.to_thread(client.insert, table, rows, COLUMNS[table])
    return max([since_ms, *(dt_to_ms(r["version"]) for r in (*runs, *items))])


def _rows(table: str, records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The table's columns of each record, in order, instants as epoch ms."""
    return [tuple(_ms(r[c]) for c in COLUMNS[table]) for r in records]


def _ms(value: Any) -> Any:
    return dt_to_ms(value) if isinstance(value, datetime) else value


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


def register_copy(app: Any, sync: ReconSync) -> None:
    """The copy, every ``RECON_SYNC_S``, as a timer of the history worker's app."""

    @app.timer(RECON_SYNC_S)
    async def recon_to_clickhouse() -> None:
        try:
            await sync.once()
        except Exception as exc:  # retried at the next tick; nothing is lost meanwhile
            log.warning("reconciliation copy to ClickHouse failed: %r", exc)
