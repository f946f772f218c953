"""Publishing to Kafka behind a tiny port, so tests swap in a fake and a down broker is just a
:class:`PublishError` (the outbox relay recovers; no request waits on the broker for long)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from billing.config import ApiSettings

log = logging.getLogger(__name__)


class PublishError(Exception):
    """The message may not have reached the broker; whoever owns it retries."""


class Publisher(Protocol):
    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Return once the broker acknowledged (acks=all), or raise PublishError."""
        ...

    async def close(self) -> None: ...


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
                bootstrap_servers=self._settings.kafka_bootstrap,
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
