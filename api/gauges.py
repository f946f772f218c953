"""Gauges read from PostgreSQL and Kafka by the API, refreshed every few seconds.

Why here: these are facts about the whole system, not about one worker, and they must keep
being reported when a worker is stopped (that is when they matter: commands pile up, lag
grows). The API always runs, already holds the database pool and reaches the broker.
With several API replicas each reports the same values; the alert rules take ``max``.

- the outbox: open commands by status and the age of the oldest (``command_outbox_open``
  partial index);
- unknown provider outcomes (payments, refunds) and the oldest one's age;
- reconciliation: the end of the latest window covered by a finished run, the days of the
  watchdog's lookback without a complete run (``reconciler.watchdog``: a failed day between
  complete ones shows here, not in the latest window's end), recent runs by status, open
  discrepancies by class;
- consumer lag of every group on the billing topics, per partition (committed offset vs the
  end), measured from the broker so a dead consumer's lag still shows.

A failed refresh is logged (rate-limited) and leaves the previous values;
``billing_gauges_refreshed_timestamp_seconds`` shows how fresh they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from psycopg_pool import AsyncConnectionPool

from billing import metrics
from billing.clock import now_ms
from billing.config import ApiSettings
from reconciler import watchdog
from schemas.periods import ms_to_dt

log = logging.getLogger(__name__)

REFRESH_S = 5.0
KAFKA_TIMEOUT_S = 5.0
TOPIC_PREFIX = "billing."

_COMMANDS = """
SELECT status, count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM command_outbox WHERE status IN ('accepted', 'processing') GROUP BY status
"""
_UNKNOWN = """
SELECT 'payment', count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM payments WHERE status = 'unknown'
UNION ALL
SELECT 'refund', count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM refunds WHERE status = 'unknown'
"""
_RECON_LAST = (
    "SELECT extract(epoch FROM max(window_end))::float8 FROM recon_runs WHERE status = 'finished'"
)
_RECON_RECENT = (
    "SELECT status, count(*) FROM recon_runs WHERE started_at > now() - interval '48 hours'"
    " GROUP BY status"
)
_RECON_OPEN = (
    "SELECT kind, count(*) FROM recon_items WHERE discrepancy AND resolution IS NULL GROUP BY kind"
)
OUTBOX_STATUSES = ("accepted", "processing")
RUN_STATUSES = ("feeding", "matching", "finished", "incomplete", "failed")


async def refresh_database(pool: AsyncConnectionPool[Any], *, tz: tzinfo = UTC) -> None:
    """The database's gauges; ``tz`` is the zone reconciliation days are in."""
    async with pool.connection() as conn:
        rows = await (await conn.execute(_COMMANDS)).fetchall()
        found = {str(r[0]): (int(r[1]), float(r[2])) for r in rows}
        for status in OUTBOX_STATUSES:
            metrics.COMMANDS_OPEN.labels(status).set(found.get(status, (0, 0.0))[0])
        metrics.COMMANDS_OLDEST_AGE.set(max((age for _, age in found.values()), default=0.0))

        for obj, count, age in await (await conn.execute(_UNKNOWN)).fetchall():
            metrics.UNKNOWN_OUTCOMES.labels(obj).set(int(count))
            metrics.UNKNOWN_OLDEST_AGE.labels(obj).set(float(age))

        last = await (await conn.execute(_RECON_LAST)).fetchone()
        if last is not None and last[0] is not None:
            metrics.RECON_LAST_COMPLETE.set(float(last[0]))
        days = await watchdog.missing_complete_days(
            conn, ms_to_dt(now_ms()), watchdog.WatchdogPolicy(), tz=tz
        )
        metrics.RECON_DAYS_INCOMPLETE.set(len(days))
        recent = {
            str(r[0]): int(r[1]) for r in await (await conn.execute(_RECON_RECENT)).fetchall()
        }
        for status in RUN_STATUSES:
            metrics.RECON_RUNS_RECENT.labels(status).set(recent.get(status, 0))
        open_items = await (await conn.execute(_RECON_OPEN)).fetchall()
        metrics.RECON_DISCREPANCIES_OPEN.clear()
        for kind, count in open_items:
            metrics.RECON_DISCREPANCIES_OPEN.labels(str(kind)).set(int(count))
    metrics.GAUGES_REFRESHED.labels("database").set(time.time())


class LagReader:
    """Committed offsets of every consumer group on the billing topics against the ends."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._admin: Any = None
        self._consumer: Any = None
        self._labels: set[tuple[str, str, str]] = set()

    async def _clients(self) -> tuple[Any, Any]:
        if self._admin is None:
            from aiokafka import AIOKafkaConsumer
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.settings.kafka_bootstrap, client_id="billing-api-lag"
            )
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                client_id="billing-api-lag",
                enable_auto_commit=False,
            )
            try:
                await asyncio.wait_for(admin.start(), KAFKA_TIMEOUT_S)
                await asyncio.wait_for(consumer.start(), KAFKA_TIMEOUT_S)
            except BaseException:
                await self._close(admin, consumer)
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def refresh(self) -> None:
        try:
            admin, consumer = await self._clients()
            async with asyncio.timeout(KAFKA_TIMEOUT_S):
                groups = [str(g[0]) for g in await admin.list_consumer_groups()]
                committed: dict[str, dict[Any, int]] = {}
                for group in groups:
                    offsets = await admin.list_consumer_group_offsets(group)
                    mine = {
                        tp: int(meta.offset)
                        for tp, meta in offsets.items()
                        if tp.topic.startswith(TOPIC_PREFIX) and meta.offset >= 0
                    }
                    if mine:
                        committed[group] = mine
                tps = {tp for offsets in committed.values() for tp in offsets}
                ends = await consumer.end_offsets(list(tps)) if tps else {}
        except Exception:
            await self.close()  # a fresh pair next time (the broker may have moved)
            raise
        seen: set[tuple[str, str, str]] = set()
        for group, offsets in committed.items():
            for tp, offset in offsets.items():
                labels = (group, tp.topic, str(tp.partition))
                metrics.CONSUMER_LAG.labels(*labels).set(max(0, int(ends[tp]) - offset))
                seen.add(labels)
        for gone in self._labels - seen:
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(*gone)
        self._labels = seen
        metrics.GAUGES_REFRESHED.labels("kafka").set(time.time())

    @staticmethod
    async def _close(admin: Any, consumer: Any) -> None:
        for stopping in (
            admin.close() if admin is not None else None,
            consumer.stop() if consumer is not None else None,
        ):
            if stopping is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(stopping, KAFKA_TIMEOUT_S)

    async def close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        await self._close(admin, consumer)


def recon_zone(settings: ApiSettings) -> tzinfo:
    """``BILLING_RECON_TIMEZONE``; an unknown zone is said once and read as UTC (the nightly
    runs themselves refuse it)."""
    try:
        return ZoneInfo(settings.recon_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning(
            "gauges: unknown BILLING_RECON_TIMEZONE %r: days in UTC", settings.recon_timezone
        )
        return UTC


async def run_gauges(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    stop: asyncio.Event,
    *,
    interval_s: float = REFRESH_S,
    app_state: Any = None,
) -> None:
    """Refresh the gauges until ``stop``; ``app_state.broker_ok`` says whether Kafka answered."""
    lag = LagReader(settings)
    tz = recon_zone(settings)
    try:
        while not stop.is_set():
            try:
                await refresh_database(pool, tz=tz)
            except Exception as exc:
                log.warning("gauges: database refresh failed: %r", exc)
            try:
                await lag.refresh()
                ok = True
            except Exception as exc:
                ok = False
                log.warning("gauges: consumer lag refresh failed: %r", exc)
            if app_state is not None:
                app_state.broker_ok = ok
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
    finally:
        await lag.close()
