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

Rows are claimed (attempt counted, ``next_publish_at`` pushed forward) in a short
``FOR UPDATE SKIP LOCKED`` transaction and published outside it, so several API replicas share
the work without holding row locks across broker calls (the projection updates these rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.intake import OutboxMessage
from api.publisher import Publisher
from billing.config import ApiSettings

log = logging.getLogger(__name__)

BATCH_SIZE = 500
MAX_ERROR_LEN = 500
_MAX_EXPONENT = 30  # 2**30 * delay is far past any sane cap; power() must not overflow

_CLAIM = """
WITH due AS (
    SELECT command_id FROM command_outbox
    WHERE status = 'accepted' AND next_publish_at <= now()
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
) -> int:
    """Claim due commands, publish them, record the outcome; returns how many were published."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            _CLAIM,
            {
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
            "command %s not published yet (%s); the relay will retry", msg.command_id, error
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


async def run_relay(
    pool: AsyncConnectionPool[Any], publisher: Publisher, settings: ApiSettings, stop: asyncio.Event
) -> None:
    """The relay loop of one API process; a full batch means more is due, so loop at once."""
    while not stop.is_set():
        published = 0
        try:
            published = await relay_once(pool, publisher, settings)
        except Exception as exc:
            log.warning("relay pass failed: %s", exc)
        if published >= BATCH_SIZE:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.relay_interval_s)
