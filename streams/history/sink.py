"""The history sink: billing.events → ClickHouse, in the history worker (streams/history/).

Glue only: a plain consumer (streams/consumer.py) hands batches to the sink core,
``analytics.ingest.write_batch`` (the mapping and the deduplicated insert, shared with
``billing rebuild-history``).

Nothing acked before it is done (invariant 8): the consumer (group ``<worker_id>-history``,
the group the Faust agent used, so its offsets carry over) commits a batch only after
ClickHouse stored all of it; a failed insert is retried with backoff, a stop or a crash
replays the uncommitted batch. Not a Faust agent: Faust acknowledges ``take()`` input when the
agent is cancelled (a stop, a rebalance), so an insert cut short was committed and lost. A
group without offsets starts at ``earliest``, on purpose: the history must hold the whole log
(invariant 6) and a replay has no effect outside the store. Idempotent on replay: each block
is inserted under a deduplication token derived from its event ids, the tables are
ReplacingMergeTree by event id, and the queries collapse duplicates (analytics/ingest.py,
analytics/queries.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from analytics.ingest import write_batch
from billing.clickhouse import ClickHouse
from billing.config import HistorySettings
from billing.kafka_client import client_kwargs
from schemas.topics import EVENTS
from streams.consumer import Record, Start, run_consumer

MAX_BACKOFF_S = 30.0


def history_group(settings: HistorySettings) -> str:
    """The history's consumer group (its committed offsets say how far ClickHouse is)."""
    return f"{settings.worker_id}-history"


def register_sink(
    app: Any, settings: HistorySettings, client: Callable[[], Awaitable[ClickHouse]]
) -> None:
    """The consumer, as a task of the history worker's app."""

    async def insert(records: Sequence[Record]) -> None:
        await write_batch(await client(), [r.value for r in records if r.value is not None])

    @app.task
    async def history() -> None:
        await run_consumer(
            "history",
            bootstrap=client_kwargs(settings),
            topic=EVENTS,
            group=history_group(settings),
            start=Start("earliest"),
            handle=insert,
            max_records=settings.history_batch,
            linger_s=1.0,
            max_backoff_s=MAX_BACKOFF_S,
            session_timeout_s=settings.broker_session_timeout_s,
            heartbeat_interval_s=settings.broker_heartbeat_interval_s,
        )
