"""ClickHouse history benchmark (embedded chdb): sink ingest rate and overview query latency.

    .venv/bin/python -m bench.bench_clickhouse [--events 200000] [--history 10000000] [--json]

1. Ingest: a synthetic history (analytics/synthetic.py, events as the ledger emits them) goes
   through ``write_batch`` (decode, map to rows, one deduplicated block per table) in batches
   of ``--batch`` events. Figures: rows/s and events/s, the mapping alone, a replay of the same
   batches (dropped by the insert tokens), small batches. Baseline: a plain INSERT of the same
   rows, already mapped, with no deduplication, into identical tables.
2. Queries: the overview page's queries (analytics/queries.py ``overview``) over a history of
   ``--history`` events. It is built in SQL by replicating an ingested template history under
   new ids (every relation kept: payments, periods, refunds, dunning), because generating 10 M
   events in Python would take minutes. The raw ``events`` table (JSON bodies) is not
   replicated: no overview query reads it. Baseline: one plain aggregate over the same
   payments table (``sum(amount_minor)`` of succeeded payments, no deduplication).

Ratios are against the baselines of the same run, so they travel between machines better
than the absolute figures. The whole run stays within about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from analytics import queries as q
from analytics.synthetic import DAY_MS, synthetic_history
from billing.clickhouse import ClickHouseClient, connect
from schemas.clickhouse import COLUMNS, EVENT_TABLES
from streams.sinks.clickhouse import rows_from_events, write_batch

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".state" / "bench"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HISTORY_DAYS = 365

# Id columns the overview's queries key or join on: replicated copies suffix them so every copy
# is a distinct set of subscriptions and payments. The other ids are copied as they are.
ID_COLUMNS = {"event_id", "payment_id", "refund_id", "subscription_id"}


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    ratio: float | None = None
    vs: str = ""
    note: str = ""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def batches(events: Sequence[bytes], size: int) -> list[Sequence[bytes]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def plain_tables(ch: ClickHouseClient) -> None:
    """The same tables, as plain MergeTree without deduplication (the baseline's target)."""
    for table in EVENT_TABLES:
        ch.command(
            f"CREATE TABLE plain_{table} AS {table}"
            f" ENGINE = MergeTree ORDER BY tuple() SETTINGS non_replicated_deduplication_window = 0"
        )


def bench_ingest(ch: ClickHouseClient, store_dir: Path, events: int, batch: int) -> list[Figure]:
    log(f"ingest: generating a history of about {events:,} events")
    users = max(1, events // 9)
    history = synthetic_history(users, start_ms=T0, days=HISTORY_DAYS, seed=11)
    evs = history.events[:events]
    cuts = batches(evs, batch)
    log(f"ingest: {len(evs):,} events in {len(cuts)} batches of {batch:,}")

    mapped: list[dict[str, list[tuple[Any, ...]]]] = []
    map_s = timed(lambda: mapped.extend(rows_from_events(b) for b in cuts))
    rows = sum(len(r) for m in mapped for r in m.values())

    async def sink(parts: Sequence[Sequence[bytes]]) -> None:
        for part in parts:
            await write_batch(ch, part)

    sink_s = timed(lambda: asyncio.run(sink(cuts)))
    replay_s = timed(lambda: asyncio.run(sink(cuts)))
    stored = sum(int(ch.query(f"SELECT count() FROM {t}")[0][0]) for t in EVENT_TABLES)
    assert stored == rows, (stored, rows)  # the replay was dropped whole

    plain_tables(ch)

    def plain() -> None:
        for m in mapped:
            for table, table_rows in m.items():
                if table_rows:
                    ch.raw.insert(
                        f"plain_{table}",
                        list(zip(*table_rows, strict=True)),
                        column_names=list(COLUMNS[table]),
                        column_oriented=True,
                        settings={"async_insert": 0, "insert_deduplicate": 0},
                    )

    plain_s = timed(plain)

    small = evs[: min(len(evs), 50_000)]
    small_cuts = batches(small, 1000)
    small_ch = connect(store_dir, database=f"small_{uuid.uuid4().hex[:8]}")
    try:
        small_rows = sum(len(r) for b in small_cuts for r in rows_from_events(b).values())

        async def small_sink() -> None:
            for part in small_cuts:
                await write_batch(small_ch, part)

        small_s = timed(lambda: asyncio.run(small_sink()))
    finally:
        small_ch.close()

    sink_rate, plain_rate = rows / sink_s, rows / plain_s
    return [
        Figure(
            "sink ingest",
            sink_rate,
            "rows/s",
            sink_rate / plain_rate,
            "plain INSERT",
            f"{rows:,} rows from {len(evs):,} events, batches of {batch:,}",
        ),
        Figure("sink ingest (events)", len(evs) / sink_s, "events/s"),
        Figure(
            "decode + map only", rows / map_s, "rows/s", (rows / map_s) / plain_rate, "plain INSERT"
        ),
        Figure(
            "plain INSERT (baseline)",
            plain_rate,
            "rows/s",
            1.0,
            "plain INSERT",
            "same rows, no tokens, plain MergeTree",
        ),
        Figure(
            "replay of the same batches",
            rows / replay_s,
            "rows/s",
            (rows / replay_s) / plain_rate,
            "plain INSERT",
            "all dropped by tokens",
        ),
        Figure(
            "sink, 1k-event batches",
            small_rows / small_s,
            "rows/s",
            (small_rows / small_s) / plain_rate,
            "plain INSERT",
            f"{len(small):,} events",
        ),
    ]


def build_history(ch: ClickHouseClient, target_events: int) -> int:
    """Replicate an ingested template history until it stands for ``target_events`` events."""
    template_users = 4000
    log(f"queries: template history of {template_users:,} subscriptions")
    history = synthetic_history(template_users, start_ms=T0, days=HISTORY_DAYS, seed=5)

    async def load() -> None:
        for part in batches(history.events, 10_000):
            await write_batch(ch, part)

    asyncio.run(load())
    copies = max(1, round(target_events / len(history.events)))
    log(
        f"queries: {copies} copies of {len(history.events):,} events -> "
        f"{copies * len(history.events):,} events"
    )
    for table in EVENT_TABLES:
        if table == "events":
            continue
        ch.command(f"CREATE TABLE big_{table} AS {table}")
        cols = COLUMNS[table]
        select = ", ".join(
            f"if({c} = '', '', concat({c}, '~', toString(copy.number)))" if c in ID_COLUMNS else c
            for c in cols
        )
        ch.command(
            f"INSERT INTO big_{table} ({', '.join(cols)})"
            f" SELECT {select} FROM {table}, numbers({copies}) AS copy"
            " SETTINGS max_insert_threads = 2"
        )
    for table in EVENT_TABLES:
        if table == "events":
            continue
        ch.command(f"EXCHANGE TABLES {table} AND big_{table}")
    return copies * len(history.events)


def bench_queries(ch: ClickHouseClient, history_events: int, runs: int) -> list[Figure]:
    started = time.perf_counter()
    total_events = build_history(ch, history_events)
    log(f"queries: history built in {time.perf_counter() - started:.1f} s")
    counts = {t: int(ch.query(f"SELECT count() FROM {t}")[0][0]) for t in EVENT_TABLES}
    now = T0 + (HISTORY_DAYS - 5) * DAY_MS
    since = now - 30 * DAY_MS
    first_month = q.month_start(now, 11)
    queries: dict[str, Callable[[], Any]] = {
        "revenue by day and plan (30 d)": lambda: q.revenue_by_day(ch, since, now),
        "active subscribers (now)": lambda: q.active_subscribers(ch, now),
        "payment success by day (30 d)": lambda: q.payment_success(ch, since, now),
        "decline reasons (30 d)": lambda: q.decline_reasons(ch, since, now),
        "MRR movements (12 months)": lambda: q.mrr_movements(ch, first_month, 12),
        "refund rate (30 d)": lambda: q.refund_rate(ch, since, now),
        "dunning recovery (30 d)": lambda: q.dunning_recovery(ch, since, now),
    }
    baseline_sql = (
        "SELECT currency, sum(amount_minor) FROM payments WHERE status = 'succeeded'"
        " GROUP BY currency"
    )
    base = statistics.median(timed(lambda: ch.query(baseline_sql)) for _ in range(runs + 1))
    figures = [
        Figure(
            "plain aggregate (baseline)",
            base * 1000,
            "ms",
            1.0,
            "plain aggregate",
            f"{counts['payments']:,} payment rows",
        ),
    ]
    total = 0.0
    for name, fn in queries.items():
        fn()  # warm
        samples = [timed(fn) for _ in range(runs)]
        med = statistics.median(samples)
        total += med
        figures.append(
            Figure(
                name,
                med * 1000,
                "ms",
                med / base,
                "plain aggregate",
                f"max {max(samples) * 1000:.0f} ms of {runs}",
            )
        )
    figures.append(
        Figure(
            "overview page (all of the above)",
            total * 1000,
            "ms",
            total / base,
            "plain aggregate",
            f"{total_events:,} events: "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "events"),
        )
    )
    return figures


def fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def print_table(figures: Sequence[Figure]) -> None:
    head = ("figure", "value", "unit", "ratio", "vs", "note")
    body = [
        (
            f.name,
            fmt(f.value),
            f.unit,
            f"{f.ratio:.3g}x" if f.ratio is not None else "",
            f.vs,
            f.note,
        )
        for f in figures
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    for line in (head, tuple("-" * w for w in widths), *body):
        cells = [
            str(c).rjust(w) if i in (1, 3) else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def run(events: int, history: int, batch: int, runs: int) -> list[Figure]:
    STATE.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="clickhouse-", dir=STATE))
    try:
        ch = connect(workdir / "clickhouse", database="ingest")
        try:
            figures = bench_ingest(ch, workdir / "clickhouse", events, batch)
        finally:
            ch.close()
        ch = connect(workdir / "clickhouse", database="overview")
        try:
            figures += bench_queries(ch, history, runs)
        finally:
            ch.close()
        return figures
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events through the sink")
    parser.add_argument("--history", type=int, default=10_000_000, help="events behind queries")
    parser.add_argument("--batch", type=int, default=10_000, help="events per sink batch")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per query")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    figures = run(args.events, args.history, args.batch, args.runs)
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "clickhouse",
                    "seconds": round(seconds, 1),
                    "rows": [asdict(f) for f in figures],
                },
                indent=1,
            )
        )
    else:
        print(f"\n== clickhouse (chdb, {os.cpu_count()} cores, {seconds:.0f} s) ==")
        print_table(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
