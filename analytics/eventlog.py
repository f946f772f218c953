"""Read ``billing.events`` from the beginning to its end as it is now (every partition, no
consumer group, nothing committed): the event log as the book of record, for the totals
check and the ClickHouse rebuild."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer

from schemas.topics import EVENTS


@dataclass
class EventLog:
    consumer: Any
    end: dict[Any, int]
    total: int  # records between the beginning and the end when it was opened

    async def batches(self, max_records: int = 10_000) -> AsyncIterator[list[bytes]]:
        """Raw values in batches, up to the end offsets taken when the log was opened."""
        pending = {tp for tp, end in self.end.items() if end > 0}
        while pending:
            got = await self.consumer.getmany(timeout_ms=500, max_records=max_records)
            values: list[bytes] = []
            for tp, records in got.items():
                values += [
                    r.value for r in records if r.value is not None and r.offset < self.end[tp]
                ]
                if records and records[-1].offset + 1 >= self.end[tp]:
                    pending.discard(tp)
            if values:
                yield values


@asynccontextmanager
async def event_log(bootstrap: str, *, timeout_s: float = 30) -> AsyncIterator[EventLog]:
    consumer = AIOKafkaConsumer(
        EVENTS, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):  # no group: every partition is ours
            while not consumer.assignment():  # noqa: ASYNC110 - aiokafka has no event for it
                await asyncio.sleep(0.1)
        parts = list(consumer.assignment())
        await consumer.seek_to_beginning(*parts)
        start = {tp: await consumer.position(tp) for tp in parts}
        end = await consumer.end_offsets(parts)
        yield EventLog(consumer, end, sum(end[tp] - start[tp] for tp in parts))
    finally:
        await consumer.stop()
