"""Batch reconciliation runs, executed in the history worker (streams/history/).

``POST /recon/batch/`` with ``{"run_id": ..., "wait": false}`` executes a run that
``billing reconcile --engine batch`` recorded in PostgreSQL first; the work is
``reconciler.batch_run`` (load the report, classify it against the ClickHouse history, record
and repair), here because this process owns the ClickHouse store. Before classifying, the run
waits until the history's consumer group has committed ``billing.events`` up to the end
offsets read when the run started (``wait_caught_up``), so the history holds every event the
report can refer to. The run's results are copied into ClickHouse when it ends
(streams/history/recon_copy.py). One execution per run id at a time; ``wait`` answers the
run's summary (409 ``bad_run``, 503 ``failed``), otherwise 202 at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from faust.web import View
from psycopg import AsyncConnection

from billing.clickhouse import ClickHouse
from billing.clock import now_ms
from billing.config import HistorySettings
from billing.kafka_client import client_kwargs
from reconciler import batch_run, store
from reconciler.feed import FeedError, ReconSettings, new_producer
from reconciler.report import ReportError
from schemas.topics import EVENTS, partition_for
from streams.history.recon_copy import ReconSync
from streams.history.server import UNAUTHORIZED
from streams.history.sink import history_group

log = logging.getLogger(__name__)

CAUGHT_UP_TIMEOUT_S = 300.0


def register_batch(
    app: Any,
    settings: HistorySettings,
    client: Callable[[], Awaitable[ClickHouse]],
    dsn: str,
    sync: ReconSync,
) -> None:
    running: dict[str, asyncio.Task[Any]] = {}
    cfg = ReconSettings.of(settings)

    async def execute(run_id: str) -> Any:
        producer = new_producer(client_kwargs(settings))
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
                        client_kwargs(settings), history_group(settings)
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
            if not settings.history_authorized(request.headers.get("Authorization")):
                return self.json(UNAUTHORIZED, status=401)
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


async def wait_caught_up(
    bootstrap: str | Mapping[str, Any], group_id: str, *, timeout_s: float = CAUGHT_UP_TIMEOUT_S
) -> None:
    """Until group ``group_id`` has committed ``billing.events`` up to its end offsets as
    of now (every event published before the call is in the history)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    connect = {"bootstrap_servers": bootstrap} if isinstance(bootstrap, str) else dict(bootstrap)
    consumer = AIOKafkaConsumer(**connect, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(**connect)
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
            done = {tp: committed[tp].offset if tp in committed else 0 for tp in ends}
            behind = {tp.partition: end - done[tp] for tp, end in ends.items() if end > done[tp]}
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
