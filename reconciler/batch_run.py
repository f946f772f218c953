"""A reconciliation run through the ClickHouse batch path, for large windows and backfills.

The streaming path sends every report line through Kafka to the reconcile agents, which
match it against the ledger's state table. The batch path computes the same classification
in ClickHouse SQL (``reconciler.batch``) over the report, loaded into ``recon_report_lines``,
and the analytical history (``payments``/``refunds``, fed from ``billing.events``). It runs
in the history worker, which owns the (embedded) ClickHouse store: ``billing reconcile
--engine batch`` records the run in PostgreSQL and asks the worker to execute it.

What a batch run records is what a streaming run records, so the console, the API and the
CLI show both alike: the run's counts per class and succeeded totals (computed in SQL), every
item that is not ``matched`` (``store.TALLIED_CLASSES``: discrepancies and in-flight items)
in ``recon_items`` linked to the run, one "partition" (the whole report), and the repairs,
published as the agent publishes them (provider observations on
``billing.provider-events``, duplicate-charge refunds on ``billing.commands``; their ids are
derived, so a re-run repeats nothing). Matched items are only counted: a row per agreeing
line is what a 1 M-line window must not pay for.

The history must be caught up with the events up to the report (``caught_up``): a batch run
over a lagging history would see payments we did record as missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

from billing.clickhouse import ClickHouse
from billing.clock import now_ms
from reconciler import store
from reconciler.batch import classify, load_report
from reconciler.feed import FeedError, ReportProvider, fetch_provider_report, import_registry
from reconciler.repairs import repair_for
from schemas.errors import BillingError
from schemas.periods import ms_to_dt
from schemas.recon import ReportLine
from schemas.recon_match import MatchItem, Summary
from schemas.recon_runs import DONE_STATUSES, RunSpec
from schemas.state import SubscriptionState

log = logging.getLogger(__name__)

ENGINE = "batch"
RECORD_CHUNK = 5_000  # items per PostgreSQL transaction

Send = Callable[[str, bytes, bytes], Awaitable[Any]]


class BatchRunError(BillingError):
    """The run cannot be executed as asked (unknown run, not a batch run, already done)."""


@dataclass(frozen=True)
class BatchOutcome:
    run_id: str
    lines: int
    summary: Summary
    recorded: int  # items recorded in PostgreSQL (all but matched)
    repairs: int
    load_s: float
    classify_s: float
    record_s: float


async def mark_batch(conn: AsyncConnection[Any], run_id: str) -> None:
    """A run just created (``store.create_run``) is to be matched by the batch path."""
    async with conn.transaction():
        await conn.execute("UPDATE recon_runs SET engine = %s WHERE run_id = %s", (ENGINE, run_id))


async def load_batch_run(conn: AsyncConnection[Any], run_id: str) -> RunSpec:
    """The run to execute, refusing what is not a batch run waiting to be matched."""
    cur = await conn.execute("SELECT engine FROM recon_runs WHERE run_id = %s", (run_id,))
    row = await cur.fetchone()
    spec = await store.load_run(conn, run_id)
    if row is None or spec is None:
        raise BatchRunError(f"no run {run_id}")
    if row[0] != ENGINE:
        raise BatchRunError(f"run {run_id} is a {row[0]} run")
    if spec.status in DONE_STATUSES:
        raise BatchRunError(f"run {run_id} is already {spec.status}")
    return spec


async def read_report(
    spec: RunSpec, *, provider: ReportProvider | None, lag_ms: int
) -> list[ReportLine]:
    """The run's report: the registry file it names, or the provider's list API."""
    if spec.source == "registry":
        return await asyncio.to_thread(import_registry, Path(spec.source_ref))
    if provider is None:
        raise FeedError("no provider to fetch the report from")
    return await fetch_provider_report(provider, spec.window_start, spec.window_end, lag_ms=lag_ms)


async def execute(
    conn: AsyncConnection[Any],
    client: ClickHouse,
    spec: RunSpec,
    lines: Sequence[ReportLine],
    send: Send,
    *,
    caught_up: Callable[[], Awaitable[None]] | None = None,
) -> BatchOutcome:
    """Match ``lines`` (the run's report) in ClickHouse and record the run like the agents
    would. Fails the run (and re-raises) on any error; re-running the window is harmless."""
    run_id = spec.run_id
    try:
        await store.start_feeding(conn, run_id, lines=len(lines), partitions=1)
        t0 = time.perf_counter()
        loaded = await asyncio.to_thread(load_report, client, run_id, lines)
        await store.mark_fed(conn, run_id, now_ms())
        if caught_up is not None:
            await caught_up()
        t1 = time.perf_counter()
        result = await asyncio.to_thread(
            classify, client, run_id, spec.match_config(), omit=store.TALLIED_CLASSES
        )
        t2 = time.perf_counter()
        at = now_ms()
        items = result.items
        for i in range(0, len(items), RECORD_CHUNK):
            chunk = [(0, item) for item in items[i : i + RECORD_CHUNK]]
            await store.record_items(conn, run_id, chunk, at)
        repairs = await _repair(client, items, send, at)
        await store.mark_partition_done(
            conn,
            run_id,
            0,
            lines_sent=loaded,
            lines_matched=loaded,
            complete=True,
            items=len(items),
            at=at,
        )
        await _finish(conn, run_id, loaded, result.summary, now_ms())
        t3 = time.perf_counter()
    except Exception as exc:
        log.exception("batch reconciliation run %s failed", run_id)
        await store.fail_run(conn, run_id, f"{type(exc).__name__}: {exc}", now_ms())
        raise
    return BatchOutcome(
        run_id=run_id,
        lines=loaded,
        summary=result.summary,
        recorded=len(items),
        repairs=repairs,
        load_s=t1 - t0,
        classify_s=t2 - t1,
        record_s=t3 - t2,
    )


async def _repair(client: ClickHouse, items: Sequence[MatchItem], send: Send, at: int) -> int:
    """Publish each item's repair. A duplicate charge's refund command names the user, which
    a report line may not carry: it is read from the history."""
    subs = sorted(
        {
            i.subscription_id
            for i in items
            if i.repair == "refund_later_duplicate" and i.subscription_id is not None
        }
    )
    users: dict[str, str] = {}
    if subs:
        rows = await asyncio.to_thread(
            client.query,
            "SELECT subscription_id, any(user_id) FROM payments"
            " WHERE subscription_id IN {subs:Array(String)} AND user_id != ''"
            " GROUP BY subscription_id",
            {"subs": subs},
        )
        users = {str(s): str(u) for s, u in rows}
    sent = 0
    for item in items:
        if not item.discrepancy or item.subscription_id is None:
            continue
        user = users.get(item.subscription_id)
        state = (
            SubscriptionState(subscription_id=item.subscription_id, user_id=user)
            if user is not None
            else None
        )
        repair = repair_for(item, state, at)
        if repair is None:
            if item.repair == "refund_later_duplicate":
                log.error("batch run: no user for %s; duplicate not refunded", item.provider_id)
            continue
        await send(repair.topic, repair.key, repair.value)
        sent += 1
    return sent


async def _finish(
    conn: AsyncConnection[Any], run_id: str, lines: int, summary: Summary, at: int
) -> None:
    async with conn.transaction():
        values = await store.summary_values(conn, run_id, summary)
        await conn.execute(
            f"UPDATE recon_runs SET status = 'finished', lines = %s, {store.SUMMARY_SET},"
            " finished_at = %s,"
            " duration_ms = (EXTRACT(EPOCH FROM (%s - started_at)) * 1000)::bigint,"
            " error = NULL WHERE run_id = %s",
            (lines, *values, ms_to_dt(at), ms_to_dt(at), run_id),
        )
