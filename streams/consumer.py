"""The loop of a consumer whose effect lives outside Kafka's input offsets: read a batch, make
its effect durable (retrying until it is), and only then commit the batch's offsets.

Not a Faust agent on purpose: Faust acknowledges ``stream.events()``/``take()`` input when the
agent is cancelled (a stop, a revocation), so a stop could commit input whose effect never
happened (ARCHITECTURE.md, invariant 8). Here a stop, a crash or a rebalance can only replay
what was not committed, so every handler must be idempotent (stable ids, deduplicated
inserts). The notifier and the history use it; the PostgreSQL projection has a loop of its own
of the same shape (streams/projection/agent.py).

Where a group without a committed offset starts is explicit (:class:`Start`), and it is pinned:
the start position is committed as soon as the partition is first assigned. Without that, a
``latest`` consumer that crashed before its first commit would start again from a later end
and skip what arrived in between.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from billing import metrics

log = logging.getLogger(__name__)

Record: TypeAlias = Any  # aiokafka's ConsumerRecord: topic, partition, offset, key, value
Handler = Callable[[Sequence[Record]], Awaitable[None]]


@dataclass(frozen=True)
class Start:
    """Where a partition with no committed offset in the group starts.

    ``earliest``: the whole log (for effects a replay cannot harm, e.g. the history).
    ``latest``: new records only, from ``lookback_s`` ago when given (the first records of a
    new install, or of a deploy that renamed the group, are still seen; a replay of them
    carries the same ids).
    """

    reset: Literal["earliest", "latest"]
    lookback_s: float = 0.0


class _PinStart(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped here
    """Resolves and commits the start of every newly assigned partition without an offset."""

    def __init__(self, name: str, consumer: AIOKafkaConsumer, start: Start) -> None:
        self.name = name
        self.consumer = consumer
        self.start = start

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Nothing to do: only what is durable was committed, the rest is replayed."""

    async def on_partitions_assigned(self, assigned: Any) -> None:
        missing = [tp for tp in assigned if await self.consumer.committed(tp) is None]
        if not missing:
            return
        if self.start.reset == "earliest":
            positions = dict(await self.consumer.beginning_offsets(missing))
        else:
            positions = dict(await self.consumer.end_offsets(missing))
            if self.start.lookback_s > 0:
                since = int((time.time() - self.start.lookback_s) * 1000)
                found = await self.consumer.offsets_for_times({tp: since for tp in missing})
                for tp, at in found.items():
                    if at is not None:
                        positions[tp] = at.offset
        for tp, offset in positions.items():
            self.consumer.seek(tp, offset)
        await self.consumer.commit(positions)
        log.info(
            "%s: no committed offset for %s; starting (%s) at %s",
            self.name,
            sorted(tp.partition for tp in missing),
            self.start.reset,
            {tp.partition: o for tp, o in sorted(positions.items())},
        )


async def _next_batch(
    consumer: AIOKafkaConsumer, max_records: int, linger_s: float
) -> list[Record]:
    got = await consumer.getmany(timeout_ms=200, max_records=max_records)
    records = [r for rs in got.values() for r in rs]
    if not records or linger_s <= 0:
        return records
    loop = asyncio.get_running_loop()
    deadline = loop.time() + linger_s
    while len(records) < max_records and (left := deadline - loop.time()) > 0:
        got = await consumer.getmany(
            timeout_ms=max(1, int(left * 1000)), max_records=max_records - len(records)
        )
        records += [r for rs in got.values() for r in rs]
    return records


async def _until_done(
    name: str, handle: Handler, records: list[Record], max_backoff_s: float
) -> None:
    backoff = 0.2
    while True:
        try:
            await handle(records)
            return
        except Exception as exc:  # not durable yet: the offsets must wait for it
            log.warning(
                "%s: batch of %d failed (%r); retrying in %.1fs", name, len(records), exc, backoff
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)


def next_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """The offsets to commit after ``records``: one past the last record of each partition."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        out[tp] = max(out.get(tp, 0), r.offset + 1)
    return out


async def run_consumer(
    name: str,
    *,
    bootstrap: str | Mapping[str, Any],  # an address, or billing.kafka_client.client_kwargs
    topic: str,
    group: str,
    start: Start,
    handle: Handler,
    max_records: int = 1000,
    linger_s: float = 0.0,
    max_backoff_s: float = 30.0,
    session_timeout_s: float = 10.0,
    heartbeat_interval_s: float = 1.0,
) -> None:
    """Consume ``topic`` in group ``group`` until cancelled: ``handle`` each batch (retried with
    backoff until it returns), then commit the batch's offsets.

    A batch is what one fetch returns, topped up for ``linger_s`` (bigger blocks for a store
    that likes them). A commit refused after a rebalance is only logged: the partition's new
    owner replays from the last commit.
    """
    connect = {"bootstrap_servers": bootstrap} if isinstance(bootstrap, str) else dict(bootstrap)
    consumer = AIOKafkaConsumer(
        **connect,
        group_id=group,
        client_id=group,
        enable_auto_commit=False,
        auto_offset_reset=start.reset,  # only if a pinned offset is gone (retention)
        max_poll_records=max_records,
        session_timeout_ms=int(session_timeout_s * 1000),
        heartbeat_interval_ms=int(heartbeat_interval_s * 1000),
    )
    consumer.subscribe([topic], listener=_PinStart(name, consumer, start))
    try:
        await consumer.start()
        while True:
            records = await _next_batch(consumer, max_records, linger_s)
            if not records:
                continue
            await _until_done(name, handle, records, max_backoff_s)
            metrics.made_durable(name, records)
            assigned = consumer.assignment()
            offsets = {tp: o for tp, o in next_offsets(records).items() if tp in assigned}
            if not offsets:
                continue
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:  # revoked meanwhile: the new owner replays
                log.info("%s: commit refused (%r); the batch will be replayed", name, exc)
    finally:
        await consumer.stop()
