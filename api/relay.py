"""The outbox relay: every accepted command reaches billing.commands eventually (and every
outbox row its own ``topic``: an admin's reconciliation correction goes to
billing.provider-events).

Right after intake commits, the API publishes the new command in a background task
(:func:`publish_soon`); the answer never waits for the broker. Whatever that misses (broker
down, process killed, or a published command the ledger never processed: a skipped offset) is
republished by :func:`relay_once`, which runs every ``relay_interval_s``: a row stays
``accepted`` until the projection marks it processing/done, so it is due again after
``next_publish_at``, with exponential backoff up to ``relay_max_backoff_s``. Republishing is
harmless: the ledger applies a command id once.

A republish is only useful for a command the ledger will not reach by itself; one still
queued behind a backlog only adds to it (at a midnight renewal peak the commands topic can be
minutes behind). So the wait before a republish is ``relay_delay_s`` (then the backoff) plus
the ledger's consumer lag on billing.commands, in seconds (:class:`ConsumerLag`: its backlog
over the rate it drains, from the group's committed offsets every ``relay_lag_probe_s``);
caught up, that is the plain delay. Without a reading (group unknown, no rights to describe
it, broker down) the lag counts as zero, as before.

Rows are claimed (attempt counted, ``next_publish_at`` pushed forward) in a short
``FOR UPDATE SKIP LOCKED`` transaction and published outside it, so several API replicas share
the work without holding row locks across broker calls (the projection updates these rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.intake import OutboxMessage
from api.publisher import Publisher
from billing import metrics
from billing.config import ApiSettings
from billing.kafka_client import client_kwargs
from schemas import topics as topic_names

log = logging.getLogger(__name__)

BATCH_SIZE = 500
MAX_ERROR_LEN = 500
_MAX_EXPONENT = 30  # 2**30 * delay is far past any sane cap; power() must not overflow

_CLAIM = """
WITH due AS (
    SELECT command_id FROM command_outbox
    WHERE status = 'accepted' AND next_publish_at <= now() - make_interval(secs => %(lag)s)
    ORDER BY next_publish_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
UPDATE command_outbox AS o
SET publish_attempts = o.publish_attempts + 1,
    next_publish_at = now() + make_interval(secs => least(
        %(delay)s * power(2, least(o.publish_attempts, %(max_exp)s)), %(max_backoff)s)),
    updated_at = now()
FROM due
WHERE o.command_id = due.command_id
RETURNING o.command_id::text, o.subscription_id::text, o.payload, o.topic
"""


async def _publish(publisher: Publisher, settings: ApiSettings, msg: OutboxMessage) -> None:
    await asyncio.wait_for(
        publisher.publish(msg.topic, msg.key, msg.payload), settings.publish_timeout_s
    )


def _error_text(exc: BaseException) -> str:
    text = f"publish failed: {type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_LEN]


async def relay_once(
    pool: AsyncConnectionPool[Any],
    publisher: Publisher,
    settings: ApiSettings,
    *,
    batch: int = BATCH_SIZE,
    lag_s: float = 0.0,
) -> int:
    """Claim due commands, publish them, record the outcome; returns how many were published.
    ``lag_s``: the consumer's lag, added to every row's wait (the ledger may still reach it)."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            _CLAIM,
            {
                "lag": max(0.0, min(lag_s, settings.relay_max_backoff_s)),
                "batch": batch,
                "delay": settings.relay_delay_s,
                "max_exp": _MAX_EXPONENT,
                "max_backoff": settings.relay_max_backoff_s,
            },
        )
        rows = await cur.fetchall()
    if not rows:
        return 0
    messages = [OutboxMessage(r[0], r[1], bytes(r[2]), r[3]) for r in rows]
    results = await asyncio.gather(
        *(_publish(publisher, settings, m) for m in messages), return_exceptions=True
    )
    done = [m.command_id for m, r in zip(messages, results, strict=True) if r is None]
    failed = [
        (_error_text(r), m.command_id)
        for m, r in zip(messages, results, strict=True)
        if isinstance(r, BaseException)
    ]
    async with pool.connection() as conn, conn.transaction():
        if done:
            await conn.execute(
                "UPDATE command_outbox SET published_at = now(), last_error = NULL,"
                " updated_at = now() WHERE command_id = ANY(%s::uuid[])",
                (done,),
            )
        if failed:
            async with conn.cursor() as c:
                await c.executemany(
                    "UPDATE command_outbox SET last_error = %s, updated_at = now()"
                    " WHERE command_id = %s",
                    failed,
                )
    metrics.RELAY_REPUBLISHED.labels("published").inc(len(done))
    metrics.RELAY_REPUBLISHED.labels("failed").inc(len(failed))
    if failed:
        log.warning(
            "relay: %d of %d commands not published (%s); will retry with backoff",
            len(failed),
            len(messages),
            failed[0][0],
        )
    else:
        log.info("relay: republished %d commands", len(done))
    return len(done)


async def publish_now(
    pool: AsyncConnectionPool[Any], publisher: Publisher, settings: ApiSettings, msg: OutboxMessage
) -> bool:
    """Publish a just-accepted command once and record it; on failure the relay takes over."""
    error: str | None = None
    try:
        await _publish(publisher, settings, msg)
    except Exception as exc:
        error = _error_text(exc)
        log.warning(
            "command %s not published yet (%s); the relay will retry",
            msg.command_id,
            error,
            extra={"command_id": msg.command_id, "subscription_id": msg.subscription_id},
        )
    try:
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE command_outbox SET publish_attempts = publish_attempts + 1,"
                " published_at = CASE WHEN %s THEN now() ELSE published_at END,"
                " last_error = %s, updated_at = now() WHERE command_id = %s",
                (error is None, error, msg.command_id),
            )
    except Exception as exc:  # bookkeeping only; the row is still due for the relay
        log.warning("could not record publish of %s: %s", msg.command_id, exc)
    return error is None


class Background:
    """Tracks fire-and-forget tasks so they are not garbage-collected mid-flight and can be
    drained at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, within_s: float) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=within_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def __len__(self) -> int:
        return len(self._tasks)


def publish_soon(
    background: Background,
    pool: AsyncConnectionPool[Any],
    publisher: Publisher,
    settings: ApiSettings,
    msg: OutboxMessage,
) -> asyncio.Task[Any]:
    return background.spawn(publish_now(pool, publisher, settings, msg))


class ConsumerLag:
    """The consumer's lag in seconds from its backlog and its progress, pure: ``observe``
    takes the group's committed offsets and the log end offsets summed over partitions.
    The drain rate is the committed offsets' progress over the last ``window_s``; a backlog
    that does not drain at all reads as ``stalled_s`` (republishing cannot help it then)."""

    def __init__(self, *, window_s: float = 30.0, stalled_s: float = 300.0) -> None:
        self.window_s = window_s
        self.stalled_s = stalled_s
        self._samples: deque[tuple[float, int]] = deque()
        self.lag_s = 0.0
        self.backlog = 0

    def observe(self, at: float, committed: int, end: int) -> float:
        samples = self._samples
        samples.append((at, committed))
        while len(samples) > 2 and at - samples[1][0] >= self.window_s:
            samples.popleft()
        self.backlog = max(0, end - committed)
        first_at, first_committed = samples[0]
        rate = (committed - first_committed) / (at - first_at) if at > first_at else 0.0
        if self.backlog == 0:
            self.lag_s = 0.0
        elif rate <= 0:
            # No progress seen yet: a backlog is waiting for the first commit, or stuck.
            self.lag_s = self.stalled_s if len(samples) > 1 else 0.0
        else:
            self.lag_s = min(self.stalled_s, self.backlog / rate)
        return self.lag_s

    def forget(self) -> None:
        """No reading: the lag counts as zero (the plain delay, as without a probe)."""
        self._samples.clear()
        self.lag_s, self.backlog = 0.0, 0


async def read_offsets(admin: Any, consumer: Any, group: str, topic: str) -> tuple[int, int] | None:
    """(committed, end) offsets of ``group`` on ``topic``, summed over partitions; None when
    the group has committed nothing there."""
    from aiokafka import TopicPartition

    committed = await admin.list_consumer_group_offsets(group)
    mine = {tp: meta.offset for tp, meta in committed.items() if tp.topic == topic}
    if not mine or all(o < 0 for o in mine.values()):
        return None
    parts = consumer.partitions_for_topic(topic) or {tp.partition for tp in mine}
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    ends = await consumer.end_offsets(tps)
    done = sum(max(0, mine.get(tp, 0)) for tp in tps)
    return done, sum(ends.values())


async def probe_lag(settings: ApiSettings, lag: ConsumerLag, stop: asyncio.Event) -> None:
    """Keep ``lag`` current: the workers' group (``relay_lag_group``) on billing.commands."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    kwargs = client_kwargs(settings)
    admin = AIOKafkaAdminClient(**kwargs)
    consumer = AIOKafkaConsumer(**kwargs, enable_auto_commit=False)
    started = False
    failed_before = False
    try:
        while not stop.is_set():
            try:
                if not started:
                    await admin.start()
                    await consumer.start()
                    started = True
                read = await read_offsets(
                    admin, consumer, settings.relay_lag_group, topic_names.COMMANDS
                )
                if read is None:
                    lag.forget()
                else:
                    lag.observe(time.monotonic(), *read)
                failed_before = False
            except Exception as exc:
                lag.forget()
                if not failed_before:
                    log.warning("relay: consumer lag unknown (%r); plain delay", exc)
                failed_before = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.relay_lag_probe_s)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        with contextlib.suppress(Exception):
            await admin.close()


async def run_relay(
    pool: AsyncConnectionPool[Any], publisher: Publisher, settings: ApiSettings, stop: asyncio.Event
) -> None:
    """The relay loop of one API process; a full batch means more is due, so loop at once."""
    lag = ConsumerLag(stalled_s=settings.relay_max_backoff_s)
    probe = asyncio.create_task(probe_lag(settings, lag, stop), name="relay-lag-probe")
    try:
        while not stop.is_set():
            published = 0
            try:
                published = await relay_once(pool, publisher, settings, lag_s=lag.lag_s)
            except Exception as exc:
                log.warning("relay pass failed: %s", exc)
            if published >= BATCH_SIZE:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.relay_interval_s)
    finally:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await probe
