"""Feed a provider report into the streaming match: fetch or import it, publish it.

1. The report: the provider's payments and refunds created in ``[window_start,
   window_end + lag)`` through the YooKassa list API (``YooKassaProvider.list_payments`` /
   ``list_refunds``: cursor pagination, ``created_at`` filters, and backoff on 429/5xx are the
   adapter's), or a registry file (CSV, columns in ``reconciler.report``). The lag covers the
   delay between our request (the ledger's ``requested_at``, which the window judges) and the
   provider's create. A refund whose metadata names no subscription (one made outside our
   system) gets it from the payment it refunds: a payment line of the same report, else a
   re-read of that payment.
2. The run: a row in ``recon_runs`` (window, source, ``taken_at`` = the matcher's "now",
   SLAs), written before the first line so the agents can read it.
3. Publishing: lines in ``report_order`` (oldest first), each on the partition
   ``partition_for(subscription id)`` (the partitioner of every billing producer, so it is the
   partition of the subscription's ledger state), then an ``EndOfReport`` on every partition
   with the count of distinct lines sent there. One idempotent producer (acks=all) keeps each
   partition in order, so every marker follows its partition's lines. The lines of a
   partition travel ``LINES_PER_MESSAGE`` to a message (a ``ReportBatch``, in report order,
   with the partition it is for): the reconcile agent's cost is mostly Faust's, per message,
   so one message per line would cap a run at a few thousand lines a second. With
   ``lines_per_message=1`` each line is a ``ReportEnvelope`` keyed by its subscription id
   (the agent reads both).

A report is all or nothing: an object that cannot be read refuses the whole report (a
half-published report would make every missing line a discrepancy).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from itertools import repeat, zip_longest
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from psycopg import AsyncConnection

from billing.clock import now_ms
from billing.kafka_client import client_kwargs
from providers.port import ProviderPayment, ProviderRefund
from reconciler import store
from reconciler.report import (
    ReportError,
    payment_line,
    read_registry,
    refund_line,
)
from schemas import topics as topic_names
from schemas.errors import BillingError
from schemas.periods import dt_to_ms, ms_to_dt
from schemas.recon import (
    EndOfReport,
    PaymentLine,
    ReportBatch,
    ReportEnvelope,
    ReportLine,
    batch_key,
    encode_report_message,
    line_key,
    marker_key,
    message_key,
    report_order,
)
from schemas.recon_match import DEFAULT_HOLD_SLA_MS, DEFAULT_PENDING_SLA_MS
from schemas.recon_runs import RunSource, RunSpec
from schemas.topics import partition_for

log = logging.getLogger(__name__)

DEFAULT_REPORT_LAG_MS = 10 * 60_000
Progress = Callable[[int], None]  # called with how many more objects were fetched or sent
LINES_PER_MESSAGE = 200  # about 70 KB of JSON: far below the broker's 1 MB message limit
MAX_MESSAGE_BYTES = 512 * 1024  # a batch this large is split (long free-text fields)


# ----------------------------------------------------------------------------- messages
def _batches(
    run_id: str, partition: int, lines: list[ReportLine], size: int
) -> Iterator[tuple[bytes, int]]:
    """``ReportBatch`` messages of ``size`` lines at most, and how many lines each holds,
    encoded as they are asked for."""
    for i in range(0, len(lines), size):
        chunk = lines[i : i + size]
        value = encode_report_message(ReportBatch(run_id=run_id, partition=partition, lines=chunk))
        if len(value) > MAX_MESSAGE_BYTES and len(chunk) > 1:
            yield from _batches(run_id, partition, chunk, max(1, len(chunk) // 2))
        else:
            yield value, len(chunk)


class ReportProvider(Protocol):
    """What the feeder needs of the provider (``YooKassaProvider``)."""

    def list_payments(
        self, created_gte: datetime, created_lt: datetime
    ) -> AsyncIterator[ProviderPayment]: ...

    def list_refunds(
        self, created_gte: datetime, created_lt: datetime
    ) -> AsyncIterator[ProviderRefund]: ...

    async def get_payment(self, provider_payment_id: str) -> ProviderPayment: ...


class FeedError(BillingError):
    """The report could not be fetched, read or published."""


@dataclass(frozen=True)
class FeedResult:
    run: RunSpec
    lines: int
    per_partition: dict[int, int]  # distinct lines sent per partition
    dropped: int  # lines repeated in the report (same object and provider id)


# ------------------------------------------------------------------------------ reports
async def fetch_provider_report(
    provider: ReportProvider,
    window_start: int,
    window_end: int,
    *,
    lag_ms: int = DEFAULT_REPORT_LAG_MS,
    progress: Progress | None = None,
) -> list[ReportLine]:
    """The provider's payments and refunds created in ``[window_start, window_end + lag)``."""
    gte, lt = ms_to_dt(window_start), ms_to_dt(window_end + lag_ms)
    lines: list[ReportLine] = []
    ours: dict[str, tuple[str | None, str | None]] = {}  # provider payment -> (sub, payment)
    async for payment in provider.list_payments(gte, lt):
        line = payment_line(payment)
        ours[line.provider_payment_id] = (line.subscription_id, line.payment_id)
        lines.append(line)
        if progress:
            progress(1)
    async for refund in provider.list_refunds(gte, lt):
        sub = refund.metadata.get("subscription_id") or None
        pay = refund.metadata.get("payment_id") or None
        if sub is None:
            if refund.provider_payment_id not in ours:
                # Refunded payment created before the window: re-read it for our ids.
                refunded = await provider.get_payment(refund.provider_payment_id)
                ours[refund.provider_payment_id] = (refunded.subscription_id, refunded.payment_id)
            sub, pay_of_payment = ours[refund.provider_payment_id]
            pay = pay or pay_of_payment
        lines.append(refund_line(refund, subscription_id=sub, payment_id=pay))
        if progress:
            progress(1)
    return lines


def import_registry(path: Path) -> list[ReportLine]:
    """A registry file (CSV, UTF-8, header row; columns in ``reconciler.report``). Refunds
    without a subscription get it from a payment line of the same file."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            lines = read_registry(fh)
    except OSError as exc:
        raise FeedError(f"cannot read registry {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise FeedError(f"registry {path} is not UTF-8: {exc}") from exc
    subs = {
        line.provider_payment_id: (line.subscription_id, line.payment_id)
        for line in lines
        if isinstance(line, PaymentLine)
    }
    out: list[ReportLine] = []
    for line in lines:
        if not isinstance(line, PaymentLine) and line.subscription_id is None:
            sub, pay = subs.get(line.provider_payment_id, (None, None))
            if sub is not None:
                line = msgspec.structs.replace(
                    line, subscription_id=sub, payment_id=line.payment_id or pay
                )
        out.append(line)
    return out


# ---------------------------------------------------------------------------- publishing
def plan(lines: Iterable[ReportLine], partitions: int) -> tuple[list[tuple[int, ReportLine]], int]:
    """The lines to publish, in report order, each with its partition; repeated objects
    (same object and provider id) are sent once. Returns (planned lines, dropped count)."""
    seen: set[str] = set()
    planned: list[tuple[int, ReportLine]] = []
    dropped = 0
    for line in sorted(lines, key=report_order):
        key = line_key(line)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        planned.append((partition_for(message_key(line), partitions), line))
    return planned, dropped


async def report_partitions(producer: Any, topic: str = topic_names.PROVIDER_REPORT) -> int:
    """The partition count of the report topic, checked against billing.commands: the agent
    reads the ledger state of the partition a line arrives on, so they must be co-partitioned.
    """
    report = await producer.partitions_for(topic)
    commands = await producer.partitions_for(topic_names.COMMANDS)
    if not report:
        raise FeedError(f"topic {topic} does not exist")
    if commands and len(report) != len(commands):
        raise FeedError(
            f"{topic} has {len(report)} partitions but {topic_names.COMMANDS} has "
            f"{len(commands)}: they must be co-partitioned"
        )
    return len(report)


async def publish_report(
    producer: Any,
    run_id: str,
    planned: list[tuple[int, ReportLine]],
    partitions: int,
    *,
    topic: str = topic_names.PROVIDER_REPORT,
    progress: Progress | None = None,
    lines_per_message: int = LINES_PER_MESSAGE,
) -> dict[int, int]:
    """Publish the planned lines, then a marker on every partition; returns the distinct
    lines sent per partition. Waits until the broker acknowledged everything."""
    sent: Counter[int] = Counter()
    pending: list[tuple[Any, int]] = []

    async def drain() -> None:
        for fut, _n in pending:
            await fut
        if progress:
            progress(sum(n for _fut, n in pending))
        pending.clear()

    if lines_per_message <= 1:
        for partition, line in planned:
            value = encode_report_message(ReportEnvelope(run_id=run_id, line=line))
            fut = await producer.send(topic, value, key=message_key(line), partition=partition)
            pending.append((fut, 1))
            sent[partition] += 1
            if len(pending) >= 1000:
                await drain()
    else:
        by_partition: dict[int, list[ReportLine]] = defaultdict(list)
        for partition, line in planned:
            by_partition[partition].append(line)
        # The partitions in turn, so every partition's agent has work from the start; each
        # message encoded just before it is sent.
        turns = [
            zip(repeat(p), _batches(run_id, p, by_partition[p], lines_per_message))
            for p in sorted(by_partition)
        ]
        for row in zip_longest(*turns):
            for entry in row:
                if entry is None:
                    continue
                partition, (value, n) = entry
                fut = await producer.send(
                    topic, value, key=batch_key(run_id, partition), partition=partition
                )
                pending.append((fut, n))
            if len(pending) >= 64:
                await drain()
        sent.update({p: len(lines) for p, lines in by_partition.items()})
    await drain()
    markers = []
    for partition in range(partitions):
        marker = EndOfReport(run_id=run_id, partition=partition, lines_sent=sent[partition])
        markers.append(
            await producer.send(
                topic,
                encode_report_message(marker),
                key=marker_key(run_id),
                partition=partition,
            )
        )
    for fut in markers:
        await fut
    return {p: sent[p] for p in range(partitions)}


def new_producer(client: str | Mapping[str, Any]) -> Any:
    """``client``: a bootstrap address (tests, benches) or billing.kafka_client.client_kwargs."""
    from aiokafka import AIOKafkaProducer

    connect = {"bootstrap_servers": client} if isinstance(client, str) else dict(client)
    return AIOKafkaProducer(
        **connect,
        client_id="billing-reconciler",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )


# ---------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunRequest:
    """What to reconcile: the window (epoch ms UTC), the source, and the matcher's SLAs."""

    window_start: int
    window_end: int
    registry: Path | None = None
    trigger: str = "cli"
    schedule_key: str | None = None
    pending_sla_ms: int = DEFAULT_PENDING_SLA_MS
    hold_sla_ms: int = DEFAULT_HOLD_SLA_MS
    lag_ms: int = DEFAULT_REPORT_LAG_MS


@dataclass
class FeedProgress:
    """Hooks for a progress display: ``fetching(n)`` per object read from the provider or the
    file, ``publishing(total)`` once the report is complete, then ``sent(n)`` per batch."""

    fetching: Progress | None = None
    publishing: Callable[[int], None] | None = None
    sent: Progress | None = None


async def run_report(
    conn: AsyncConnection[Any],
    producer: Any,
    request: RunRequest,
    *,
    provider: ReportProvider | None = None,
    api_url: str = "",
    progress: FeedProgress | None = None,
    topic: str = topic_names.PROVIDER_REPORT,
) -> FeedResult | None:
    """Start a run and feed it: record it, read the report, publish lines and markers. The
    producer must be started. Returns None when ``schedule_key`` names a run that exists
    already (the nightly run of that day was started by someone else). On failure the run is
    recorded as failed and the error re-raised as ``FeedError``."""
    progress = progress or FeedProgress()
    source: RunSource = "registry" if request.registry else "provider_api"
    ref = str(request.registry) if request.registry else api_url
    run = await store.create_run(
        conn,
        run_id=str(uuid.uuid4()),
        window_start=request.window_start,
        window_end=request.window_end,
        source=source,
        source_ref=ref,
        trigger=request.trigger,
        taken_at=now_ms(),
        pending_sla_ms=request.pending_sla_ms,
        hold_sla_ms=request.hold_sla_ms,
        schedule_key=request.schedule_key,
    )
    if run is None:
        return None
    try:
        if request.registry is not None:
            lines = import_registry(request.registry)
            if progress.fetching:
                progress.fetching(len(lines))
        else:
            if provider is None:
                raise FeedError("no provider to fetch the report from")
            lines = await fetch_provider_report(
                provider,
                request.window_start,
                request.window_end,
                lag_ms=request.lag_ms,
                progress=progress.fetching,
            )
        result = await publish_run(conn, producer, run, lines, topic=topic, progress=progress)
    except Exception as exc:
        await store.fail_run(conn, run.run_id, f"{type(exc).__name__}: {exc}", now_ms())
        if isinstance(exc, FeedError | ReportError):
            raise
        raise FeedError(f"{type(exc).__name__}: {exc}") from exc
    return result


async def publish_run(
    conn: AsyncConnection[Any],
    producer: Any,
    run: RunSpec,
    lines: Iterable[ReportLine],
    *,
    topic: str = topic_names.PROVIDER_REPORT,
    progress: FeedProgress | None = None,
) -> FeedResult:
    """Publish the report of a recorded run: its size first (so the agent that ends the last
    partition can finish the run), then lines and markers, then the run is ``matching``."""
    progress = progress or FeedProgress()
    partitions = await report_partitions(producer, topic)
    planned, dropped = plan(lines, partitions)
    if dropped:
        log.warning("run %s: %d repeated report lines sent once", run.run_id, dropped)
    await store.start_feeding(conn, run.run_id, lines=len(planned), partitions=partitions)
    if progress.publishing:
        progress.publishing(len(planned))
    per_partition = await publish_report(
        producer, run.run_id, planned, partitions, topic=topic, progress=progress.sent
    )
    await store.mark_fed(conn, run.run_id, now_ms())
    return FeedResult(run=run, lines=len(planned), per_partition=per_partition, dropped=dropped)


# ------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class ReconSettings:
    """Reconciliation settings (``BILLING_RECON_*``), read from the process's settings:
    ``WorkerSettings`` (nightly runs), ``ReconcileSettings`` (the CLI), ``HistorySettings``
    (the report lag only); a field its class lacks keeps the default here."""

    timezone: str = "Europe/Moscow"  # the day a nightly run reconciles, and CLI dates
    cron: str = "30 3 * * *"  # nightly: yesterday's run, on the leader worker
    nightly: bool = True
    pending_sla_ms: int = DEFAULT_PENDING_SLA_MS
    hold_sla_ms: int = DEFAULT_HOLD_SLA_MS
    lag_ms: int = DEFAULT_REPORT_LAG_MS
    wait_timeout_s: float = 900.0  # the CLI's --wait

    @classmethod
    def of(cls, settings: Any) -> ReconSettings:
        d = cls()
        return cls(
            timezone=str(getattr(settings, "recon_timezone", d.timezone)),
            cron=str(getattr(settings, "recon_cron", d.cron)),
            nightly=bool(getattr(settings, "recon_nightly", d.nightly)),
            pending_sla_ms=int(
                float(getattr(settings, "recon_pending_sla_s", d.pending_sla_ms / 1000)) * 1000
            ),
            hold_sla_ms=int(
                float(getattr(settings, "recon_hold_sla_s", d.hold_sla_ms / 1000)) * 1000
            ),
            lag_ms=int(float(getattr(settings, "recon_report_lag_s", d.lag_ms / 1000)) * 1000),
            wait_timeout_s=float(getattr(settings, "recon_wait_timeout_s", d.wait_timeout_s)),
        )

    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise FeedError(f"unknown time zone {self.timezone!r}") from exc


# ------------------------------------------------------------------------------- nightly
def nightly_window(now: int, tz: tzinfo) -> tuple[int, int, date]:
    """Yesterday in ``tz`` as of ``now``: [its midnight, today's midnight) in epoch ms, and
    the day (the nightly run's schedule key). A DST day is 23 or 25 hours long."""
    today = datetime.fromtimestamp(now / 1000, tz).date()
    yesterday = today - timedelta(days=1)
    start = datetime.combine(yesterday, time(0), tzinfo=tz)
    end = datetime.combine(today, time(0), tzinfo=tz)
    return dt_to_ms(start), dt_to_ms(end), yesterday


async def run_nightly(
    settings: Any, dsn: str, *, provider: ReportProvider | None = None
) -> FeedResult | None:
    """Yesterday's run from the provider's list API, unless that day's nightly run exists
    (another leader, a restart): its ``schedule_key`` is the day. A failed nightly run stays
    recorded as failed; run the window again with the CLI."""
    cfg = ReconSettings.of(settings)
    start, end, day = nightly_window(now_ms(), cfg.zone())
    own_provider = provider is None
    if provider is None:
        from providers.yookassa_adapter import YooKassaProvider

        provider = YooKassaProvider(settings)
    producer = new_producer(client_kwargs(settings))
    await producer.start()
    try:
        async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
            result = await run_report(
                conn,
                producer,
                RunRequest(
                    window_start=start,
                    window_end=end,
                    trigger="nightly",
                    schedule_key=f"nightly:{day.isoformat()}",
                    pending_sla_ms=cfg.pending_sla_ms,
                    hold_sla_ms=cfg.hold_sla_ms,
                    lag_ms=cfg.lag_ms,
                ),
                provider=provider,
                api_url=str(getattr(settings, "provider_api_url", "")),
            )
    finally:
        await producer.stop()
        if own_provider:
            close = getattr(provider, "close", None)
            if close is not None:
                await close()
    if result is None:
        log.info("nightly reconciliation of %s already started elsewhere", day)
    else:
        log.info(
            "nightly reconciliation of %s: run %s, %d lines", day, result.run.run_id, result.lines
        )
    return result
