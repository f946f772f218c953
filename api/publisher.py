"""Publishing to Kafka behind a tiny port, so tests swap in a fake and a down broker is just a
:class:`PublishError` (the outbox relay recovers; no request waits on the broker for long).

:class:`OutboxSender` publishes what intake has just committed, after the 202, in batches:
one task per process sends everything accepted meanwhile, waits for the broker once and
records the batch with one UPDATE on one connection, so a request holds one connection (its
intake transaction) and no task of its own. Whatever a batch misses, the relay republishes
(api/relay.py): an outbox row stays due until the projection closes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from psycopg_pool import AsyncConnectionPool

from api.intake import OutboxMessage
from billing.config import ApiSettings
from billing.kafka_client import client_kwargs

log = logging.getLogger(__name__)

MAX_BATCH = 1000
# How long the first message of a batch waits for company: one broker round trip and one
# UPDATE then serve every request of those milliseconds. Measured (bench.api_intake, issue
# 14): at 100 POST/s without it every request paid its own flush, API CPU 3.4 ms a POST
# against 1.3 ms at 500/s; the 202 does not wait for it, only the command's way to the ledger.
LINGER_S = 0.01
MAX_ERROR_LEN = 500


class PublishError(Exception):
    """The message may not have reached the broker; whoever owns it retries."""


class Publisher(Protocol):
    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Return once the broker acknowledged (acks=all), or raise PublishError."""
        ...

    async def close(self) -> None: ...


class BatchPublisher(Publisher, Protocol):
    async def publish_many(
        self, messages: Sequence[tuple[str, bytes, bytes]]
    ) -> list[BaseException | None]:
        """Send all, then wait for every acknowledgement: per message None or its error."""
        ...


class KafkaPublisher:
    """aiokafka producer, idempotent with acks=all, started lazily so the API starts (and
    accepts commands into the outbox) while the broker is down."""

    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def _ensure_started(self) -> Any:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is not None:
                return self._producer
            from aiokafka import AIOKafkaProducer

            timeout_ms = max(int(self._settings.publish_timeout_s * 1000), 1000)
            producer = AIOKafkaProducer(
                **client_kwargs(self._settings),
                client_id="billing-api",
                enable_idempotence=True,
                acks="all",
                linger_ms=2,
                request_timeout_ms=timeout_ms,
                retry_backoff_ms=200,
            )
            try:
                await asyncio.wait_for(producer.start(), self._settings.publish_timeout_s)
            except BaseException:
                await _stop_quietly(producer)
                raise
            self._producer = producer
            return producer

    async def start(self) -> None:
        """Try to connect now; failure is logged, not raised (the next publish retries)."""
        try:
            await self._ensure_started()
        except Exception as exc:
            log.warning("Kafka not reachable at start (%s); publishing will retry", exc)

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        producer = None
        try:
            producer = await self._ensure_started()
            await asyncio.wait_for(
                producer.send_and_wait(topic, value, key=key), self._settings.publish_timeout_s
            )
        except TimeoutError as exc:
            raise PublishError(f"publish to {topic} timed out") from exc
        except Exception as exc:
            if producer is not None and _fatal_for_producer(exc):
                # An idempotent producer that lost its sequence (e.g. OutOfOrderSequenceNumber
                # after a broker restart) never recovers in aiokafka: start a new one.
                await self._reset(producer)
            raise PublishError(f"publish to {topic} failed: {exc!r}") from exc

    async def publish_many(
        self, messages: Sequence[tuple[str, bytes, bytes]]
    ) -> list[BaseException | None]:
        """Hand every message to the producer's batches first, then await the acknowledgements
        together (one wait for the batch, not a task per message)."""
        results: list[BaseException | None] = [
            PublishError(f"publish to {topic} timed out") for topic, _, _ in messages
        ]
        producer = None
        try:
            async with asyncio.timeout(self._settings.publish_timeout_s):
                producer = await self._ensure_started()
                futures: list[tuple[int, asyncio.Future[Any]]] = []
                for i, (topic, key, value) in enumerate(messages):
                    try:
                        futures.append((i, await producer.send(topic, value, key=key)))
                    except Exception as exc:
                        results[i] = PublishError(f"publish to {topic} failed: {exc!r}")
                for i, fut in futures:
                    try:
                        await fut
                        results[i] = None
                    except Exception as exc:
                        results[i] = PublishError(f"publish to {messages[i][0]} failed: {exc!r}")
                        if _fatal_for_producer(exc):
                            await self._reset(producer)
        except TimeoutError:
            pass  # what was not acknowledged keeps its timeout error
        except Exception as exc:
            if producer is not None and _fatal_for_producer(exc):
                await self._reset(producer)
            return [PublishError(f"publish failed: {exc!r}") for _ in messages]
        return results

    async def _reset(self, broken: Any) -> None:
        async with self._lock:
            if self._producer is broken:
                self._producer = None
        log.warning("Kafka producer reset after a fatal error; the next publish starts a new one")
        await _stop_quietly(broken)

    async def close(self) -> None:
        if self._producer is not None:
            await _stop_quietly(self._producer)
            self._producer = None


def _fatal_for_producer(exc: BaseException) -> bool:
    """Errors after which this producer instance is unusable (the relay republishes)."""
    from aiokafka.errors import KafkaError, OutOfOrderSequenceNumber, ProducerFenced

    if isinstance(exc, OutOfOrderSequenceNumber | ProducerFenced):
        return True
    return isinstance(exc, KafkaError) and not getattr(exc, "retriable", False)


async def _stop_quietly(producer: Any) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 10)
    except Exception as exc:
        log.warning("Kafka producer did not stop cleanly: %s", exc)


async def publish_batch(
    publisher: Publisher, messages: Sequence[OutboxMessage], timeout_s: float
) -> list[BaseException | None]:
    """Publish ``messages`` at once: per message None (acknowledged) or its error."""
    items = [(m.topic, m.key, m.payload) for m in messages]
    many = getattr(publisher, "publish_many", None)
    if many is not None:
        results: list[BaseException | None] = await many(items)
        return results

    async def one(topic: str, key: bytes, value: bytes) -> None:
        await asyncio.wait_for(publisher.publish(topic, key, value), timeout_s)

    return list(await asyncio.gather(*(one(*item) for item in items), return_exceptions=True))


def _error_text(exc: BaseException) -> str:
    return f"publish failed: {type(exc).__name__}: {exc}"[:MAX_ERROR_LEN]


class OutboxSender:
    """Publishes just-accepted outbox messages in batches, right after their 202.

    :meth:`send` only queues; a flush task (``spawn``: api.relay.Background's, so shutdown
    drains it) runs
    while anything is queued; it waits ``linger_s`` first. Messages queued meanwhile, or while
    a batch waits for the broker, form the batch: one broker round trip and one UPDATE serve
    many requests."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        publisher: Publisher,
        settings: ApiSettings,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        *,
        max_batch: int = MAX_BATCH,
        linger_s: float = LINGER_S,
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._settings = settings
        self._spawn = spawn
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._queued: list[OutboxMessage] = []
        self._flushing = False

    def send(self, message: OutboxMessage) -> None:
        """Queue ``message`` for the next batch (never blocks, never raises)."""
        self._queued.append(message)
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush_all())

    async def _flush_all(self) -> None:
        try:
            if self._linger_s > 0:
                await asyncio.sleep(self._linger_s)
            while self._queued:
                batch = self._queued[: self._max_batch]
                del self._queued[: self._max_batch]
                try:
                    await self._flush(batch)
                except Exception as exc:  # the rows are still due: the relay publishes them
                    log.warning("outbox sender: a batch of %d failed: %r", len(batch), exc)
        finally:
            self._flushing = False
            if self._queued:  # cancelled with work left (shutdown): the relay covers it
                log.info("outbox sender stopped with %d queued", len(self._queued))

    async def _flush(self, batch: list[OutboxMessage]) -> None:
        results = await publish_batch(self._publisher, batch, self._settings.publish_timeout_s)
        done = [m.command_id for m, r in zip(batch, results, strict=True) if r is None]
        failed = [(m, r) for m, r in zip(batch, results, strict=True) if r is not None]
        error = _error_text(failed[0][1]) if failed else None
        if failed:
            log.warning(
                "%d commands not published yet (%s); the relay will retry", len(failed), error
            )
        try:
            async with self._pool.connection() as conn:
                if done:
                    await conn.execute(
                        "UPDATE command_outbox SET publish_attempts = publish_attempts + 1,"
                        " published_at = now(), last_error = NULL, updated_at = now()"
                        " WHERE command_id = ANY(%s::uuid[])",
                        (done,),
                    )
                if failed:
                    await conn.execute(
                        "UPDATE command_outbox SET publish_attempts = publish_attempts + 1,"
                        " last_error = %s, updated_at = now() WHERE command_id = ANY(%s::uuid[])",
                        (error, [m.command_id for m, _ in failed]),
                    )
        except Exception as exc:  # bookkeeping only; the rows are still due for the relay
            log.warning("could not record the publish of %d commands: %s", len(batch), exc)
