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

from aiokafka import AIOKafkaConsumer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from billing.clickhouse import connect
from billing.config import Settings
from schemas.topics import EVENTS
from streams.sinks.clickhouse import write_batch

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
    consumer = AIOKafkaConsumer(
        EVENTS,
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch,
    )
    rows: dict[str, int] = {}
    done = 0
    try:
        await consumer.start()
        async with asyncio.timeout(30):
            while not consumer.assignment():  # noqa: ASYNC110 - aiokafka has no event for it
                await asyncio.sleep(0.1)
        parts = list(consumer.assignment())
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        start = {tp: await consumer.position(tp) for tp in parts}
        total = sum(end[tp] - start[tp] for tp in parts)
        pending = {tp for tp in parts if end[tp] > start[tp]}
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            disable=not show,
        ) as progress:
            task = progress.add_task("events → ClickHouse", total=total)
            while pending:
                got = await consumer.getmany(timeout_ms=1000, max_records=batch)
                values: list[bytes] = []
                for tp, records in got.items():
                    values += [
                        r.value for r in records if r.value is not None and r.offset < end[tp]
                    ]
                    if records and records[-1].offset + 1 >= end[tp]:
                        pending.discard(tp)
                if values:
                    for table, n in (await write_batch(client, values)).items():
                        rows[table] = rows.get(table, 0) + n
                    done += len(values)
                    progress.update(task, completed=done)
    finally:
        await consumer.stop()
        client.close()
    return RebuildResult(events=done, rows=rows)


def main() -> None:
    result = asyncio.run(rebuild(Settings(), show=sys.stderr.isatty() or sys.stdout.isatty()))
    tables = ", ".join(f"{t} {n}" for t, n in sorted(result.rows.items()))
    sys.stdout.write(f"rebuilt from {result.events} events: {tables or 'nothing to write'}\n")
