"""The history worker's Faust app: what it runs, wired (streams/history/ says what each is).

Faust runs the web server and the timers only: its own Kafka consumer is off (the sink reads
billing.events with a plain consumer, streams/history/sink.py). The ClickHouse store is opened
once, at its first use, and shared by the sink, the query page and reconciliation's side;
``connect`` migrates it. Reconciliation's side (the copy of results, batch runs) needs
PostgreSQL and is left out without ``BILLING_POSTGRES_DSN``.

Run: ``python -m streams.history worker -l info``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from billing import logs
from billing.clickhouse import ClickHouseClient, connect
from billing.config import HistorySettings
from billing.kafka_client import faust_kwargs
from streams import faust_fix
from streams.history.batch import register_batch
from streams.history.recon_copy import ReconSync, register_copy
from streams.history.server import register_queries
from streams.history.sink import history_group, register_sink
from streams.ops import register_ops


def create_history_app(settings: HistorySettings) -> Any:
    faust_fix.apply()
    datadir = settings.state_dir / "faust-history"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        history_group(settings),
        **faust_kwargs(settings),  # broker, credentials, replication of its own topics
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=settings.kafka_partitions,
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
        logging_config=logs.dict_config(
            process="history",
            level=settings.log_level,
            fmt=str(getattr(settings, "log_format", "json")),
            secrets=logs.secrets_of(settings),
        ),
    )
    # Faust's own consumer stays off: it has nothing to read, and it would join the group of
    # the app id, which is the history consumer's group (with another assignor).
    app.boot_strategy = app.BootStrategy(app, enable_kafka_consumer=False)
    holder: list[ClickHouseClient] = []
    lock = asyncio.Lock()

    async def client() -> ClickHouseClient:
        async with lock:
            if not holder:
                holder.append(await asyncio.to_thread(connect, settings))
            return holder[0]

    register_sink(app, settings, client)
    register_queries(app, client, settings)
    register_ops(app, ready=lambda: True)  # /metrics, /healthz, /readyz beside the queries
    if settings.postgres_dsn is not None:
        dsn = settings.postgres_dsn.get_secret_value()
        sync = ReconSync(client, dsn)
        register_copy(app, sync)
        register_batch(app, settings, client, dsn, sync)
    return app


def main() -> None:
    settings = HistorySettings()
    logs.configure(settings, "history")
    create_history_app(settings).main()
