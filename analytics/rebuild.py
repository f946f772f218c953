"""Rebuild the ClickHouse history from the event log: ``billing rebuild-history``.

Reads every ``billing.events`` record from the beginning to the current end of each partition
and writes it through the same sink as the history worker (``write_batch``), with a progress
bar. Idempotent: blocks carry deduplication tokens and the tables are keyed by event id, so
running it over a history that already has the events changes no answer. With the embedded
engine the history worker owns the data directory: stop it first (the store refuses a second
owner, and the CLI says so).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from analytics.eventlog import event_log
from analytics.ingest import write_batch
from billing.clickhouse import connect
from billing.config import Settings

BATCH = 10_000


@dataclass
class RebuildResult:
    events: int
    rows: dict[str, int]


async def rebuild(settings: Settings, *, batch: int = BATCH, show: bool = True) -> RebuildResult:
    try:
        client = await asyncio.to_thread(connect, settings)
    except Exception as exc:
        # chdb reports a second owner as "Cannot lock file" on stderr and a vague init error
        raise SystemExit(
            f"cannot open the ClickHouse store ({exc}). With the embedded store, stop the"
            " history worker first (it owns the data directory), or set"
            " BILLING_CLICKHOUSE_URL to a server."
        ) from exc
    rows: dict[str, int] = {}
    done = 0
    try:
        async with event_log(settings.kafka_bootstrap) as log:
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                disable=not show,
            ) as progress:
                task = progress.add_task("events → ClickHouse", total=log.total)
                async for values in log.batches(batch):
                    for table, n in (await write_batch(client, values)).items():
                        rows[table] = rows.get(table, 0) + n
                    done += len(values)
                    progress.update(task, completed=done)
    finally:
        client.close()
    return RebuildResult(events=done, rows=rows)


def main() -> None:
    result = asyncio.run(rebuild(Settings(), show=sys.stderr.isatty() or sys.stdout.isatty()))
    tables = ", ".join(f"{t} {n}" for t, n in sorted(result.rows.items()))
    sys.stdout.write(f"rebuilt from {result.events} events: {tables or 'nothing to write'}\n")
