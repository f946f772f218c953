"""History worker: billing.events → ClickHouse, and the analytics queries for the API.

A process of its own so that an insert or a multi-second analytical query never delays the
ledger; Faust runs its web server and timers only (its own Kafka consumer is off). In embedded
mode it owns the chdb store (one process per data directory); the API reaches the queries
through this worker's loopback web port (``/analytics/<name>/``), never by opening the store.

Run: ``python -m streams.history worker -l info``.

It also carries reconciliation's ClickHouse side (streams/recon_history.py): it copies runs
and discrepancies from PostgreSQL into ClickHouse, and executes batch runs
(``POST /recon/batch/`` with ``{"run_id": ..., "wait": false}``; the run is recorded in
PostgreSQL first by ``billing reconcile --engine batch``).

Nothing acked before it is done (invariant 8): billing.events is read by a plain consumer
(streams/consumer.py, group ``<worker_id>-history``, the group the Faust agent used, so its
offsets carry over) that commits a batch only after ClickHouse stored all of it; a failed
insert is retried with backoff, a stop or a crash replays the uncommitted batch. Not a Faust
agent: Faust acknowledges ``take()`` input when the agent is cancelled (a stop, a rebalance),
so an insert cut short was committed and lost. A group without offsets starts at
``earliest``, on purpose: the history must hold the whole log (invariant 6) and a replay has no
effect outside the store. Idempotent on replay: each block is inserted under a deduplication
token derived from its event ids, the tables are ReplacingMergeTree by event id, and the
queries collapse duplicates (streams/sinks/clickhouse.py, analytics/queries.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import date
from typing import Any

import faust
import msgspec
from faust.web import View
from psycopg import AsyncConnection

from analytics import queries, recon
from billing.clickhouse import ClickHouseClient, connect
from billing.clock import now_ms
from billing.config import Settings
from reconciler import batch_run, store
from reconciler.feed import FeedError, ReconSettings, new_producer
from reconciler.report import ReportError
from schemas.topics import EVENTS
from streams import faust_fix
from streams.consumer import Record, Start, run_consumer
from streams.ledger.agent import partition_for
from streams.recon_history import RECON_SYNC_S, ReconSync, run_summary_json, wait_caught_up
from streams.sinks.clickhouse import write_batch

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


def _int(params: Any, name: str, default: int) -> int:
    value = params.get(name)
    return int(value) if value not in (None, "") else default


def run_query(client: ClickHouseClient, name: str, params: Any) -> Any:
    """One named analytics query with its parameters (epoch ms windows); raises KeyError for
    an unknown name and ValueError for bad parameters."""
    now = now_ms()
    to_ms = _int(params, "to", now)
    from_ms = _int(params, "from", to_ms - 30 * 86_400_000)
    if from_ms > to_ms:
        raise ValueError("from is after to")
    if name == "overview":
        return queries.overview(client, _int(params, "at", now))
    if name == "active_subscribers":
        return queries.active_subscribers(client, _int(params, "at", now))
    if name == "recon_runs":
        limit = _int(params, "limit", 50)
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be 1..1000")
        return recon.runs(client, limit)
    if name == "recon_run_totals":
        run_id = params.get("run_id")
        if not run_id:
            raise ValueError("run_id is required")
        return recon.run_totals(client, str(run_id))
    if name == "discrepancies_by_day":
        return recon.discrepancies_by_day(client, from_ms, to_ms)
    if name == "mrr_movements":
        months = _int(params, "months", 12)
        if not 1 <= months <= 60:
            raise ValueError("months must be 1..60")
        start = params.get("from_month")
        first = date.fromisoformat(start) if start else queries.month_start(now, months - 1)
        return queries.mrr_movements(client, first, months)
    windowed = {
        "revenue_by_day": queries.revenue_by_day,
        "totals_by_day": queries.totals_by_day,
        "refund_rate": queries.refund_rate,
        "payment_success": queries.payment_success,
        "decline_reasons": queries.decline_reasons,
        "dunning_recovery": queries.dunning_recovery,
    }
    return windowed[name](client, from_ms, to_ms)


def history_group(settings: Settings) -> str:
    """The history's consumer group (its committed offsets say how far ClickHouse is)."""
    return f"{settings.worker_id}-history"


def create_history_app(settings: Settings) -> Any:
    faust_fix.apply()
    datadir = settings.state_dir / "faust-history"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.worker_id}-history",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=1,
        topic_allow_declare=False,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        web_port=settings.history_port,
        web_host=settings.history_host,
        web_bind=settings.history_host,
        datadir=str(datadir),
        producer_acks=-1,
        stream_wait_empty=False,
    )
    # Faust's own consumer stays off: it has nothing to read, and it would join the group of
    # the app id, which is the history consumer's group (with another assignor).
    app.boot_strategy = app.BootStrategy(app, enable_kafka_consumer=False)
    group = history_group(settings)
    holder: list[ClickHouseClient] = []
    lock = asyncio.Lock()

    async def client() -> ClickHouseClient:
        async with lock:
            if not holder:
                holder.append(await asyncio.to_thread(connect, settings))
            return holder[0]

    async def insert(records: Sequence[Record]) -> None:
        await write_batch(await client(), [r.value for r in records if r.value is not None])

    @app.task
    async def history() -> None:
        await run_consumer(
            "history",
            bootstrap=settings.kafka_bootstrap,
            topic=EVENTS,
            group=group,
            start=Start("earliest"),
            handle=insert,
            max_records=settings.history_batch,
            linger_s=1.0,
            max_backoff_s=MAX_BACKOFF_S,
            session_timeout_s=settings.broker_session_timeout_s,
            heartbeat_interval_s=settings.broker_heartbeat_interval_s,
        )

    @app.page("/analytics/{name}/")
    async def analytics(self: Any, request: Any, name: str) -> Any:
        try:
            result = await asyncio.to_thread(run_query, await client(), name, request.query)
        except KeyError:
            return self.json({"error": {"code": "unknown_query", "message": name}}, status=404)
        except ValueError as exc:
            return self.json({"error": {"code": "bad_query", "message": str(exc)}}, status=400)
        return self.json(msgspec.to_builtins(result))

    if settings.postgres_dsn is not None:
        register_recon(app, settings, client, settings.postgres_dsn.get_secret_value())
    return app


def register_recon(app: Any, settings: Settings, client: Any, dsn: str) -> None:
    """Reconciliation's ClickHouse side: the periodic copy of results, and batch runs."""
    sync = ReconSync(client, dsn)
    running: dict[str, asyncio.Task[Any]] = {}
    cfg = ReconSettings.of(settings)

    @app.timer(RECON_SYNC_S)
    async def recon_to_clickhouse() -> None:
        try:
            await sync.once()
        except Exception as exc:  # retried at the next tick; nothing is lost meanwhile
            log.warning("reconciliation copy to ClickHouse failed: %r", exc)

    async def execute(run_id: str) -> Any:
        producer = new_producer(settings.kafka_bootstrap)
        await producer.start()
        provider: Any = None
        try:
            async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
                spec = await batch_run.load_batch_run(conn, run_id)
                if spec.source != "registry":
                    from providers.yookassa_adapter import YooKassaProvider

                    provider = YooKassaProvider(settings)
                try:
                    lines = await batch_run.read_report(spec, provider=provider, lag_ms=cfg.lag_ms)
                except (FeedError, ReportError, OSError) as exc:
                    await store.fail_run(conn, run_id, f"{type(exc).__name__}: {exc}", now_ms())
                    raise

                async def send(topic: str, key: bytes, value: bytes) -> Any:
                    partitions = len(await producer.partitions_for(topic))
                    return await producer.send_and_wait(
                        topic, value, key=key, partition=partition_for(key, partitions)
                    )

                outcome = await batch_run.execute(
                    conn,
                    await client(),
                    spec,
                    lines,
                    send,
                    caught_up=lambda: wait_caught_up(
                        settings.kafka_bootstrap, history_group(settings)
                    ),
                )
            await sync.once()
            return outcome
        finally:
            await producer.stop()
            if provider is not None:
                await provider.close()

    class ReconBatch(View):  # type: ignore[misc]  # Faust's View is untyped
        """``POST {"run_id": ..., "wait": false}``: execute a batch run recorded by the CLI."""

        async def post(self, request: Any) -> Any:
            try:
                body = await request.json()
                run_id = str(body["run_id"])
                wait = bool(body.get("wait", False))
            except Exception:
                return self.json(
                    {"error": {"code": "bad_request", "message": "JSON {run_id, wait}"}},
                    status=400,
                )
            task = running.get(run_id)
            if task is None or task.done():
                task = asyncio.ensure_future(execute(run_id))
                running[run_id] = task
                task.add_done_callback(lambda t: _forget(running, run_id, t))
            if not wait:
                return self.json({"run_id": run_id, "status": "accepted"}, status=202)
            try:
                outcome = await asyncio.shield(task)
            except batch_run.BatchRunError as exc:
                return self.json({"error": {"code": "bad_run", "message": str(exc)}}, status=409)
            except Exception as exc:
                return self.json({"error": {"code": "failed", "message": repr(exc)}}, status=503)
            return self.json(run_summary_json(outcome))

    app.page("/recon/batch/")(ReconBatch)


def _forget(running: dict[str, Any], run_id: str, task: asyncio.Task[Any]) -> None:
    if running.get(run_id) is task:
        del running[run_id]
    if not task.cancelled() and task.exception() is not None:
        log.warning("batch run %s: %r", run_id, task.exception())


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level)
    create_history_app(settings).main()


if __name__ == "__main__":
    main()
