"""ClickHouse history benchmark (embedded chdb): sink ingest rate and overview query latency.

    .venv/bin/python -m bench.bench_clickhouse [--events 100000] [--history 10000000] [--json]

1. Ingest: a synthetic history (analytics/synthetic.py, events as the ledger emits them) goes
   through ``write_batch`` (decode, map to rows, one deduplicated block per table) in batches
   of ``--batch`` events. Figures: rows/s and events/s, the mapping alone, a replay of the same
   batches (dropped by the insert tokens), 1k-event batches, and the sink's previous write
   path (the same rows and tokens through clickhouse-connect's row insert). Baseline: a plain
   INSERT of the same rows, already mapped, without deduplication, into plain MergeTree copies
   of the tables.
2. Queries: the overview page's queries (analytics/queries.py) over a history of ``--history``
   events, built in SQL by replicating an ingested template history under new ids (payments,
   refunds, access rows and lifecycle changes keep their relations), because generating 10 M
   events in Python would take minutes. The raw ``events`` table (JSON bodies) is not
   replicated: no overview query reads it. Baseline: one plain aggregate over the same
   payments (``sum(amount_minor)`` of succeeded payments per currency, no deduplication).
   MRR also without its cache (one query over the whole history), and through the cache's
   life: first read, a month closing, late rows, the same read again (``bench_mrr_cache``).
   Each run adds two duplicate access rows to the kept history (the late rows): no answer
   changes.

The replicated history is kept under .state/bench (about 200 MB for 10 M events), reused by
the next run with the same size and code; ``--fresh`` rebuilds it. Every figure also has its
CPU time (this process, the engine's threads included): on a shared
machine wall times swing with the load, CPU seconds much less. Ratios are against the baselines
of the same run. A run takes about a minute on 2 idle cores (half that with a kept history).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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
from datetime import date
from pathlib import Path
from typing import Any

from analytics import queries as q
from analytics.ingest import dedup_token, rows_from_events, write_batch
from analytics.synthetic import DAY_MS, synthetic_history
from billing.clickhouse import ClickHouseClient, connect
from schemas.clickhouse import COLUMNS, EVENT_TABLES, MIGRATIONS

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".state" / "bench"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HISTORY_DAYS = 365
TEMPLATE_USERS = 4000

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
    cpu_s: float | None = None
    note: str = ""


@dataclass
class Timing:
    wall: float
    cpu: float


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


def timed(fn: Callable[[], Any]) -> Timing:
    cpu, wall = cpu_now(), time.perf_counter()
    fn()
    return Timing(time.perf_counter() - wall, cpu_now() - cpu)


def batches(events: Sequence[bytes], size: int) -> list[Sequence[bytes]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def sink(ch: ClickHouseClient, parts: Sequence[Sequence[bytes]]) -> None:
    async def run() -> None:
        for part in parts:
            await write_batch(ch, part)

    asyncio.run(run())


# ---------------------------------------------------------------------------------- ingest
def bench_ingest(ch: ClickHouseClient, store_dir: Path, events: int, batch: int) -> list[Figure]:
    log(f"ingest: generating a history of about {events:,} events")
    history = synthetic_history(max(1, events // 9), start_ms=T0, days=HISTORY_DAYS, seed=11)
    evs = history.events[:events]
    cuts = batches(evs, batch)
    log(f"ingest: {len(evs):,} events in {len(cuts)} batches of {batch:,}")

    mapped: list[dict[str, list[tuple[Any, ...]]]] = []
    mapping = timed(lambda: mapped.extend(rows_from_events(b) for b in cuts))
    rows = sum(len(r) for m in mapped for r in m.values())
    sunk = timed(lambda: sink(ch, cuts))
    replay = timed(lambda: sink(ch, cuts))
    stored = sum(int(ch.query(f"SELECT count() FROM {t}")[0][0]) for t in EVENT_TABLES)
    assert stored == rows, (stored, rows)  # the replay was dropped whole

    for table in EVENT_TABLES:
        ch.command(
            f"CREATE TABLE plain_{table} AS {table} ENGINE = MergeTree ORDER BY tuple()"
            " SETTINGS non_replicated_deduplication_window = 0"
        )

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

    base = timed(plain)

    small = evs[: min(len(evs), 30_000)]
    small_rows = sum(len(r) for b in batches(small, 1000) for r in rows_from_events(b).values())
    small_ch = connect(store_dir, database=f"small_{uuid.uuid4().hex[:8]}")
    try:
        small_t = timed(lambda: sink(small_ch, batches(small, 1000)))
    finally:
        small_ch.close()

    # The sink's previous write path, for comparison in the same run: the same rows and
    # tokens through clickhouse-connect's row insert (Native serialised in Python).
    rows_ch = connect(store_dir, database=f"rows_{uuid.uuid4().hex[:8]}")

    def row_inserts() -> None:
        for part in cuts:
            for table, table_rows in rows_from_events(part).items():
                if table_rows:
                    rows_ch.insert(
                        table,
                        table_rows,
                        COLUMNS[table],
                        dedup_token=dedup_token(table, table_rows),
                    )

    try:
        previous = timed(row_inserts)
    finally:
        rows_ch.close()

    base_rate = rows / base.wall

    def fig(name: str, n: int, t: Timing, note: str = "") -> Figure:
        return Figure(
            name, n / t.wall, "rows/s", n / t.wall / base_rate, "plain INSERT", t.cpu, note
        )

    return [
        fig(
            "sink ingest (write_batch)",
            rows,
            sunk,
            f"{rows:,} rows from {len(evs):,} events, batches of {batch:,}; "
            f"{rows / sunk.cpu:,.0f} rows per CPU-second",
        ),
        Figure("sink ingest, events", len(evs) / sunk.wall, "events/s", cpu_s=sunk.cpu),
        fig("decode + map only", rows, mapping, "pure Python, one core"),
        fig(
            "plain INSERT (baseline)",
            rows,
            base,
            f"same rows, no tokens; {rows / base.cpu:,.0f} rows per CPU-second",
        ),
        fig("replay of the same batches", rows, replay, "every block dropped by its token"),
        fig("sink, 1k-event batches", small_rows, small_t, f"{len(small):,} events"),
        fig(
            "sink, previous path (row insert)",
            rows,
            previous,
            "decode + map + clickhouse-connect insert with the same tokens (before Arrow)",
        ),
    ]


# ---------------------------------------------------------------------------------- queries
def build_history(ch: ClickHouseClient, target_events: int) -> int:
    """Replicate an ingested template history until it stands for ``target_events`` events."""
    log(f"queries: template history of {TEMPLATE_USERS:,} subscriptions")
    history = synthetic_history(TEMPLATE_USERS, start_ms=T0, days=HISTORY_DAYS, seed=5)
    sink(ch, batches(history.events, 10_000))
    copies = max(1, round(target_events / len(history.events)))
    log(f"queries: {copies} copies of {len(history.events):,} events")
    for table in EVENT_TABLES:
        if table == "events":
            continue
        cols = COLUMNS[table]
        select = ", ".join(
            f"if({c} = '', '', concat({c}, '~', toString(copy.number)))" if c in ID_COLUMNS else c
            for c in cols
        )
        ch.command(f"CREATE TABLE big_{table} AS {table}")
        ch.command(
            f"INSERT INTO big_{table} ({', '.join(cols)})"
            f" SELECT {select} FROM {table}, numbers({copies}) AS copy"
            " SETTINGS max_insert_threads = 2"
        )
        ch.command(f"EXCHANGE TABLES {table} AND big_{table}")
    return copies * len(history.events)


def bench_queries(
    ch: ClickHouseClient, history_events: int, runs: int, *, reuse: bool
) -> list[Figure]:
    total_events = 0

    def build() -> None:
        nonlocal total_events
        total_events = build_history(ch, history_events)

    if reuse:
        built = None
        total_events = int(ch.query("SELECT max(value) FROM meta WHERE name = 'events'")[0][0])
        log(f"queries: reusing the {total_events:,}-event history kept from an earlier run")
    else:
        built = timed(build)
        ch.command("CREATE TABLE meta (name String, value UInt64) ENGINE = MergeTree ORDER BY name")
        ch.insert("meta", [("events", total_events)], ("name", "value"))
        log(f"queries: {total_events:,} events built in {built.wall:.1f} s")
    counts = {t: int(ch.query(f"SELECT count() FROM {t}")[0][0]) for t in EVENT_TABLES}
    now = T0 + (HISTORY_DAYS - 5) * DAY_MS
    since = now - 30 * DAY_MS
    first_month = q.month_start(now, 11)
    queries: dict[str, Callable[[], Any]] = {
        "revenue by day and plan (30 d)": lambda: q.revenue_by_day(ch, since, now),
        "active subscribers (now)": lambda: q.active_subscribers(ch, now),
        "payment success by day (30 d)": lambda: q.payment_success(ch, since, now),
        "decline reasons (30 d)": lambda: q.decline_reasons(ch, since, now),
        "MRR movements (12 months)": lambda: mrr_computed(ch, first_month, now),
        "refund rate (30 d)": lambda: q.refund_rate(ch, since, now),
        "dunning recovery (30 d)": lambda: q.dunning_recovery(ch, since, now),
    }
    baseline_sql = (
        "SELECT currency, sum(amount_minor) FROM payments WHERE status = 'succeeded'"
        " GROUP BY currency"
    )
    base_runs = [timed(lambda: ch.query(baseline_sql)) for _ in range(runs + 1)]
    base = statistics.median(t.wall for t in base_runs)
    figures = [
        Figure(
            "plain aggregate (baseline)",
            base * 1000,
            "ms",
            1.0,
            "plain aggregate",
            statistics.median(t.cpu for t in base_runs),
            f"{counts['payments']:,} payment rows",
        ),
    ]
    figures += bench_mrr_cache(ch, first_month, now, runs, base)
    total = total_cpu = 0.0
    for name, fn in queries.items():
        samples = [timed(fn) for _ in range(runs)]
        wall = statistics.median(t.wall for t in samples)
        cpu = statistics.median(t.cpu for t in samples)
        total, total_cpu = total + wall, total_cpu + cpu
        figures.append(
            Figure(
                name,
                wall * 1000,
                "ms",
                wall / base,
                "plain aggregate",
                cpu,
                f"median of {runs}, first {samples[0].wall * 1000:,.0f} ms" if runs > 1 else "",
            )
        )
    figures.append(
        Figure(
            "overview page (all of the above)",
            total * 1000,
            "ms",
            total / base,
            "plain aggregate",
            total_cpu,
            f"{total_events:,} events: "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "events"),
        )
    )
    if built is not None:
        figures.append(
            Figure(
                "history build (replication)",
                built.wall,
                "s",
                cpu_s=built.cpu,
                note="setup, kept for the next run (--fresh rebuilds it)",
            )
        )
    return figures


def mrr_computed(ch: ClickHouseClient, first_month: date, now: int) -> Any:
    """The overview's MRR with the cache filled, computed (the current month from the last
    close's state), not answered from this process's memo of the same read."""
    q.forget_mrr_answers()
    return q.mrr_movements(ch, first_month, 12, now_ms=now)


def bench_mrr_cache(
    ch: ClickHouseClient, first_month: date, now: int, runs: int, base: float
) -> list[Figure]:
    """MRR without the cache (one query over the whole history, as before it), then the cache's
    life: the first read a month ago (fills it: the closed months and the state at the last
    close), the read once that month has closed (it is cached, the next state built from the
    previous one), a late row for the month just closed (recomputed from the state before it),
    a late row for an older month (from scratch: no state kept that far back) and the same
    read again with no row since. The overview's MRR below is a read with the cache filled:
    the current month computed from the last close's state."""
    for table in ("mrr_months", "mrr_states", "mrr_state"):
        ch.command(f"TRUNCATE TABLE {table}")
    q.forget_mrr_answers()
    uncached = [
        timed(lambda: q.mrr_movements(ch, first_month, 12, cache=False)) for _ in range(runs)
    ]
    expected = q.mrr_movements(ch, first_month, 12, cache=False)
    got: list[Any] = []

    def read(at: int) -> Timing:
        t = timed(lambda: got.append(q.mrr_movements(ch, first_month, 12, now_ms=at)))
        assert got[-1] == expected, "the cache changed an answer"
        return t

    def late_row(month: date) -> None:
        # A copy of an access row of that month delivered again (the same event: no answer
        # changes, but that month's fingerprint and every later one do, as for a new row).
        cols = ", ".join(COLUMNS["subscription_periods"])
        ch.command(
            f"INSERT INTO subscription_periods ({cols}) SELECT {cols} FROM subscription_periods"
            " WHERE toStartOfMonth(occurred_at) = {m:Date} AND toDayOfMonth(occurred_at) > 1"
            " ORDER BY event_id LIMIT 1",
            {"m": month},
        )

    month_ago = now - 30 * DAY_MS
    fill = read(month_ago)
    rollover = read(now)
    just_closed, older = q.month_start(now, 1), q.month_start(now, 6)
    late_row(just_closed)
    late_recent = read(now)
    late_row(older)
    late_old = read(now)
    again = [timed(lambda: q.mrr_movements(ch, first_month, 12, now_ms=now)) for _ in range(3)]
    wall = statistics.median(t.wall for t in uncached)

    def fig(name: str, t: Timing, note: str) -> Figure:
        return Figure(name, t.wall * 1000, "ms", t.wall / base, "plain aggregate", t.cpu, note)

    return [
        Figure(
            "MRR movements, no cache",
            wall * 1000,
            "ms",
            wall / base,
            "plain aggregate",
            statistics.median(t.cpu for t in uncached),
            "one query over the whole history (the query before the cache)",
        ),
        fig("MRR, first read", fill, "a month ago: fills the cache (closed months + state)"),
        fig("MRR, a month closes", rollover, "cached from the last state; next state built"),
        fig(
            "MRR after a late row (last month)",
            late_recent,
            f"a {just_closed:%b %Y} row arrives: recomputed from the state before it",
        ),
        fig(
            "MRR after a late row (older)",
            late_old,
            f"a {older:%b %Y} row arrives: recomputed from scratch",
        ),
        fig(
            "MRR, same read again",
            min(again, key=lambda t: t.wall),
            "no row since: fingerprint + cached months + this process's memo",
        ),
    ]


# ---------------------------------------------------------------------------------- output
def fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def print_table(figures: Sequence[Figure]) -> None:
    head = ("figure", "value", "unit", "ratio", "vs", "cpu s", "note")
    body = [
        (
            f.name,
            fmt(f.value),
            f.unit,
            f"{f.ratio:.3g}x" if f.ratio is not None else "",
            f.vs,
            f"{f.cpu_s:.2f}" if f.cpu_s is not None else "",
            f.note,
        )
        for f in figures
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    for line in (head, tuple("-" * w for w in widths), *body):
        cells = [
            str(c).rjust(w) if i in (1, 3, 5) else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def history_dir(history: int) -> Path:
    """Where the replicated history is kept between runs: keyed by its size, the template and
    the code that shapes it (the DDL, the generator, the sink's mapping)."""
    digest = hashlib.sha256(repr(MIGRATIONS).encode())
    for module in ("analytics/synthetic.py", "analytics/ingest.py"):
        digest.update((REPO / module).read_bytes())
    digest.update(f"{history}:{TEMPLATE_USERS}:{HISTORY_DAYS}".encode())
    return STATE / f"clickhouse-history-{digest.hexdigest()[:12]}"


def run(events: int, history: int, batch: int, runs: int, fresh: bool) -> list[Figure]:
    STATE.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="clickhouse-", dir=STATE))
    store = workdir / "clickhouse"
    try:
        ch = connect(store, database="ingest")
        try:
            figures = bench_ingest(ch, store, events, batch)
        finally:
            ch.close()
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    # One engine directory at a time per process: the ingest store is closed by now.
    kept = history_dir(history)
    done = kept / "complete"
    if fresh or not done.exists():
        shutil.rmtree(kept, ignore_errors=True)
    ch = connect(kept / "clickhouse", database="overview")
    try:
        figures += bench_queries(ch, history, runs, reuse=done.exists())
    finally:
        ch.close()
    done.touch()
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events through the sink")
    parser.add_argument("--history", type=int, default=10_000_000, help="events behind queries")
    parser.add_argument("--batch", type=int, default=10_000, help="events per sink batch")
    parser.add_argument("--runs", type=int, default=1, help="timed runs per query")
    parser.add_argument("--fresh", action="store_true", help="rebuild the kept history")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    figures = run(args.events, args.history, args.batch, args.runs, args.fresh)
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "clickhouse",
                    "seconds": round(seconds, 1),
                    "load": load,
                    "rows": [asdict(f) for f in figures],
                },
                indent=1,
            )
        )
    else:
        print(
            f"\n== clickhouse (chdb, {os.cpu_count()} cores, load {load:.1f} at start,"
            f" {seconds:.0f} s) =="
        )
        print_table(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
