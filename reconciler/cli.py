"""Run a reconciliation on demand.

    python -m reconciler --from 2026-11-24 --to 2026-11-25 [--registry FILE.csv] [--wait]
    python -m reconciler --from … --to … --engine batch [--registry FILE.csv] [--wait]
    python -m reconciler --show RUN_ID [--wait]

``--from``/``--to``: the window ``[from, to)`` judged on the ledger's request times; a date is
its midnight in ``BILLING_RECON_TIMEZONE`` (default Europe/Moscow, or ``--tz``), a time must
carry its zone (``2026-11-24T00:00:00+03:00``). Without ``--registry`` the report is read from
the provider's list API (created_at in ``[from, to + BILLING_RECON_REPORT_LAG_S)``); with it,
from a registry file (CSV; columns in ``reconciler/report.py``). The lines are published to
billing.provider-report and matched by the workers' reconcile agents; ``--wait`` waits for
every partition (a progress bar) and prints the summary: counts per class and succeeded
totals per currency on both sides.

``--engine batch`` matches the report in ClickHouse SQL instead of the streaming agents (same
classes, same records in PostgreSQL; for large windows and backfills): the run is recorded
here and executed by the history worker (``BILLING_HISTORY_URL``), which reads the report
itself (a registry path must be readable by it).

Settings (``ReconcileSettings``) come from BILLING_* like every process (Kafka, PostgreSQL,
provider credentials, BILLING_RECON_*, BILLING_HISTORY_URL); ``billing reconcile`` and
``python -m reconciler`` fill the ones left unset from the running local stack's
``.state/stack.env``.

Exit status: 0 the run finished with no unresolved discrepancy (or, without --wait, it was
fed); 1 unresolved discrepancies remain (escalations waiting for an admin); 2 bad input;
3 the run did not complete (failed to feed, a partition was taken over mid-run: run the
window again, or --wait timed out).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from billing.clock import now_ms
from billing.kafka_client import client_kwargs
from reconciler import store
from reconciler.batch_run import mark_batch
from reconciler.feed import (
    FeedError,
    FeedProgress,
    ReconSettings,
    RunRequest,
    new_producer,
    run_report,
)
from reconciler.report import ReportError
from schemas.errors import BillingError
from schemas.periods import dt_to_ms, ms_to_dt
from schemas.recon_match import DISCREPANCY_CLASSES, MATCH_CLASSES
from schemas.recon_runs import DONE_STATUSES, ItemRow, RunReport

EXIT_OK = 0
EXIT_UNRESOLVED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
POLL_S = 0.3
CONNECT_TIMEOUT_S = 15.0


class UsageError(BillingError):
    """The command line asks for something impossible (exit status 2)."""


def parse_when(value: str, tz: Any) -> int:
    """A date (its midnight in ``tz``) or an ISO-8601 time with a zone -> epoch ms."""
    text = value.strip()
    try:
        if len(text) == 10:
            return dt_to_ms(datetime.combine(date.fromisoformat(text), dtime(0), tzinfo=tz))
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{value!r} is neither a date (2026-11-24) nor a time with a zone"
            " (2026-11-24T00:00:00+03:00)"
        ) from None
    if dt.tzinfo is None:
        raise UsageError(f"{value!r} has no time zone: add one (+03:00, Z) or give a date")
    return dt_to_ms(dt)


def build_parser(prog: str = "python -m reconciler") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Reconcile our books with the provider's for a window.",
        epilog="Exit status: 0 clean, 1 unresolved discrepancies, 2 bad input, 3 incomplete.",
    )
    when = "a date (its midnight in --tz) or an ISO time with a zone"
    parser.add_argument("--from", dest="start", metavar="WHEN", help=f"window start: {when}")
    parser.add_argument("--to", dest="end", metavar="WHEN", help=f"window end (excluded): {when}")
    parser.add_argument(
        "--registry",
        type=Path,
        metavar="FILE",
        help="import a registry CSV (columns: reconciler/report.py) instead of the list API",
    )
    parser.add_argument(
        "--engine",
        choices=("streaming", "batch"),
        default="streaming",
        help="streaming: the workers' reconcile agents (default); batch: ClickHouse SQL in the"
        " history worker, for large windows and backfills",
    )
    parser.add_argument("--show", metavar="RUN_ID", help="show (with --wait: wait for) a run")
    parser.add_argument("--wait", action="store_true", help="wait for the match, then summarise")
    parser.add_argument("--timeout", type=float, metavar="S", help="how long --wait waits")
    parser.add_argument(
        "--tz", metavar="ZONE", help="time zone of dates (default BILLING_RECON_TIMEZONE)"
    )
    parser.add_argument(
        "--items", type=int, default=20, metavar="N", help="unresolved items to list (20)"
    )
    return parser


def main(argv: list[str] | None = None, *, prog: str = "python -m reconciler") -> int:
    """The CLI; returns the exit status (``billing reconcile`` calls it with its own prog)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    from billing.config import ReconcileSettings

    try:
        settings = ReconcileSettings()
    except ValueError as exc:  # pydantic's ValidationError
        parser.error(f"bad BILLING_* settings: {exc}")
    try:
        request, cfg = _request(args, settings)
    except UsageError as exc:
        parser.error(str(exc))  # exits 2
    if settings.postgres_dsn is None:
        parser.error(
            "BILLING_POSTGRES_DSN is not set and no local stack is running (start it with"
            " `make run`, or set BILLING_* for your deployment)"
        )
    dsn = settings.postgres_dsn.get_secret_value()
    timeout = args.timeout if args.timeout is not None else cfg.wait_timeout_s
    try:
        return asyncio.run(_main(args, request, settings, dsn, timeout, console))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return EXIT_INCOMPLETE


def _request(args: argparse.Namespace, settings: Any) -> tuple[RunRequest | None, ReconSettings]:
    cfg = ReconSettings.of(settings)
    if args.tz:
        cfg = ReconSettings(**{**cfg.__dict__, "timezone": args.tz})
    try:
        tz = cfg.zone()
    except FeedError as exc:
        raise UsageError(str(exc)) from None
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if args.items < 0:
        raise UsageError("--items must not be negative")
    if args.show:
        if args.start or args.end or args.registry:
            raise UsageError("--show takes a run id only (no --from/--to/--registry)")
        try:
            uuid.UUID(args.show)
        except ValueError:
            raise UsageError(f"{args.show!r} is not a run id") from None
        return None, cfg
    if not args.start or not args.end:
        raise UsageError("--from and --to are required (or --show RUN_ID)")
    start, end = parse_when(args.start, tz), parse_when(args.end, tz)
    if start >= end:
        raise UsageError("--from must be before --to")
    if args.registry is not None and not args.registry.is_file():
        raise UsageError(f"registry file {args.registry} does not exist")
    request = RunRequest(
        window_start=start,
        window_end=end,
        registry=args.registry,
        pending_sla_ms=cfg.pending_sla_ms,
        hold_sla_ms=cfg.hold_sla_ms,
        lag_ms=cfg.lag_ms,
    )
    return request, cfg


async def _main(
    args: argparse.Namespace,
    request: RunRequest | None,
    settings: Any,
    dsn: str,
    wait_s: float,
    console: Console,
) -> int:
    try:
        conn = await asyncio.wait_for(
            AsyncConnection.connect(dsn, autocommit=True), CONNECT_TIMEOUT_S
        )
    except Exception as exc:
        console.print(f"[red]cannot connect to PostgreSQL:[/] {exc}")
        return EXIT_INCOMPLETE
    async with conn:
        if request is None:
            run_id = args.show
            try:
                await store.run_report(conn, run_id)
            except store.RunNotFound:
                console.print(f"[red]no run {run_id}[/]")
                return EXIT_USAGE
        else:
            if args.engine == "batch":
                fed = await _start_batch(conn, request, settings, console)
            else:
                fed = await _feed(conn, request, settings, console)
            if fed is None:
                return EXIT_INCOMPLETE
            run_id = fed
            if not args.wait:
                console.print(
                    f"run [bold]{run_id}[/] fed; the workers are matching it."
                    f" Result: billing reconcile --show {run_id} --wait"
                )
                return EXIT_OK
        report = await store.run_report(conn, run_id)
        if args.wait and not report.done:
            report = await _wait(conn, run_id, wait_s, console)
        _summary(console, report)
        if not report.done:
            console.print(f"[yellow]run {run_id} is still {report.spec.status}[/]")
            return EXIT_INCOMPLETE if args.wait else EXIT_OK
        if args.items and report.unresolved:
            items = await store.list_items(conn, run_id=run_id, limit=args.items)
            _items_table(console, items, report.unresolved)
        return _exit_code(report)


def _exit_code(report: RunReport) -> int:
    if report.spec.status != "finished":
        return EXIT_INCOMPLETE
    return EXIT_UNRESOLVED if report.unresolved else EXIT_OK


async def _feed(
    conn: AsyncConnection[Any], request: RunRequest, settings: Any, console: Console
) -> str | None:
    producer = new_producer(client_kwargs(settings))
    try:
        await asyncio.wait_for(producer.start(), CONNECT_TIMEOUT_S)
    except Exception as exc:
        console.print(f"[red]cannot reach Kafka at {settings.kafka_bootstrap}:[/] {exc!r}")
        await producer.stop()
        return None
    provider: Any = None
    if request.registry is None:
        from providers.yookassa_adapter import YooKassaProvider

        provider = YooKassaProvider(settings)
    source = str(request.registry) if request.registry else settings.provider_api_url
    started = time.monotonic()
    try:
        with _progress(console) as bar:
            fetch = bar.add_task(f"reading report from {source}", total=None)
            send = bar.add_task("publishing to billing.provider-report", total=None, start=False)

            def publishing(total: int) -> None:
                bar.update(fetch, total=bar.tasks[fetch].completed)
                bar.start_task(send)
                bar.update(send, total=total)

            hooks = FeedProgress(
                fetching=lambda n: bar.advance(fetch, n),
                publishing=publishing,
                sent=lambda n: bar.advance(send, n),
            )
            result = await run_report(
                conn,
                producer,
                request,
                provider=provider,
                api_url=settings.provider_api_url,
                progress=hooks,
            )
    except (FeedError, ReportError) as exc:
        console.print(f"[red]reconciliation failed:[/] {exc}")
        return None
    finally:
        await producer.stop()
        if provider is not None:
            await provider.close()
    assert result is not None  # no schedule key: a run is always created
    took = time.monotonic() - started
    rate = result.lines / took if took > 0 else 0.0
    console.print(
        f"run [bold]{result.run.run_id}[/]: {result.lines} lines in {took:.1f}s"
        f" ({rate:.0f}/s) over {len(result.per_partition)} partitions"
        + (f", {result.dropped} repeated lines dropped" if result.dropped else "")
    )
    return result.run.run_id


async def _start_batch(
    conn: AsyncConnection[Any], request: RunRequest, settings: Any, console: Console
) -> str | None:
    """Record a batch run and ask the history worker (which owns ClickHouse) to execute it.
    The worker reads the report itself: a registry path must be readable there."""
    import httpx

    registry = request.registry.resolve() if request.registry else None
    run = await store.create_run(
        conn,
        run_id=str(uuid.uuid4()),
        window_start=request.window_start,
        window_end=request.window_end,
        source="registry" if registry else "provider_api",
        source_ref=str(registry) if registry else settings.provider_api_url,
        trigger=request.trigger,
        taken_at=now_ms(),
        pending_sla_ms=request.pending_sla_ms,
        hold_sla_ms=request.hold_sla_ms,
    )
    assert run is not None  # no schedule key: a run is always created
    await mark_batch(conn, run.run_id)
    url = f"{settings.history_url.rstrip('/')}/recon/batch/"
    try:
        async with httpx.AsyncClient(timeout=CONNECT_TIMEOUT_S) as client:
            resp = await client.post(
                url, json={"run_id": run.run_id, "wait": False}, headers=settings.history_headers()
            )
        if resp.status_code != 202:
            raise FeedError(f"history worker answered {resp.status_code}: {resp.text[:300]}")
    except (httpx.HTTPError, FeedError) as exc:
        await store.fail_run(conn, run.run_id, f"not started: {exc}", now_ms())
        console.print(f"[red]cannot start the batch run at {url}:[/] {exc}")
        return None
    console.print(f"batch run [bold]{run.run_id}[/] started in the history worker ({url})")
    return run.run_id


async def _wait(
    conn: AsyncConnection[Any], run_id: str, wait_s: float, console: Console
) -> RunReport:
    """Poll the run's progress (cheap: no count of its open discrepancies, which a 1 M-line
    run would pay for on every poll) until it is done; then read the whole report once."""
    status, partitions, done = await store.run_progress(conn, run_id)
    deadline = time.monotonic() + wait_s
    with _progress(console) as bar:
        task = bar.add_task("matching (partitions done)", total=partitions)
        while status not in DONE_STATUSES and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            status, partitions, done = await store.run_progress(conn, run_id)
            bar.update(task, total=partitions, completed=done)
        bar.update(task, completed=done)
    return await store.run_report(conn, run_id)


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _summary(console: Console, report: RunReport) -> None:
    spec = report.spec
    window = f"{_iso(spec.window_start)} .. {_iso(spec.window_end)}"
    took = f"{report.duration_ms / 1000:.1f}s" if report.duration_ms is not None else "-"
    console.print(
        f"\nrun [bold]{spec.run_id}[/] ({spec.trigger}, {spec.source}"
        f"{': ' + spec.source_ref if spec.source_ref else ''})\n"
        f"window {window}; status [bold]{spec.status}[/]; {report.lines} lines;"
        f" partitions {report.partitions_done}/{spec.partitions or '?'}; duration {took}"
    )
    if report.error:
        console.print(f"[red]error:[/] {report.error}")
    if report.incomplete_partitions:
        console.print(
            f"[yellow]{report.incomplete_partitions} partition(s) were taken over mid-run:"
            " run the window again[/]"
        )
    counts = Table(title="Items per class")
    counts.add_column("class")
    counts.add_column("items", justify="right")
    for kind in MATCH_CLASSES:
        n = report.counts.get(kind, 0)
        style = "red" if kind in DISCREPANCY_CLASSES and n else None
        counts.add_row(kind, str(n), style=style)
    counts.add_row("discrepancies", str(report.discrepancies), style="bold")
    counts.add_row("  new in this run", str(report.new_discrepancies))
    counts.add_row("  unresolved now", str(report.unresolved), style="bold")
    console.print(counts)
    currencies = sorted({c for side in report.totals.values() for c in side})
    if currencies:
        totals = Table(title="Succeeded totals per currency")
        totals.add_column("currency")
        for head in ("payments ours", "payments provider", "refunds ours", "refunds provider"):
            totals.add_column(head, justify="right")
        for cur in currencies:
            row = [
                report.totals.get(side, {}).get(cur, "0")
                for side in ("payments_ours", "payments_theirs", "refunds_ours", "refunds_theirs")
            ]
            style = "red" if row[0] != row[1] or row[2] != row[3] else None
            totals.add_row(cur, *row, style=style)
        console.print(totals)


def _items_table(console: Console, items: list[ItemRow], total: int) -> None:
    table = Table(title=f"Unresolved discrepancies ({len(items)} of {total})")
    for head in ("item", "subscription", "ours", "provider", "detail"):
        table.add_column(head)
    for it in items:
        ours = f"{it.ours_status or '-'} {it.ours_amount or ''}".strip()
        theirs = f"{it.theirs_status or '-'} {it.theirs_amount or ''}".strip()
        table.add_row(it.item_key, it.subscription_id or "-", ours, theirs, it.detail)
    console.print(table)


def _iso(ms: int) -> str:
    return ms_to_dt(ms).isoformat(timespec="seconds")


def run() -> None:
    sys.exit(main())
