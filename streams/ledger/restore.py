"""Cold recovery of the ledger table in bulk: the changelog read in large batches straight
into the store, instead of one Faust event per record.

Faust 0.15.3 recovers a table record by record (``Recovery._slurp_changelogs``: a queue
get under ``asyncio.wait_for``, event objects, bookkeeping per record): about 4,000
states/s on this box, an hour for 10 M. Here, when recovery has computed where each active
changelog partition must be read from (``Recovery._build_offsets``) and far more is left
than a warm restart replays, a private aiokafka consumer (no group) reads the partition to
its high-water mark with large fetches and writes each fetched batch in one step: a
RocksDB ``WriteBatch`` without the write-ahead log (the memtables are flushed before the
partition's offset is stored, so a crash mid-restore leaves data without a newer offset and
the next start reads it again: puts in changelog order are idempotent), or the memory
store's dict. The partition's offset is then handed back to Faust, which reads only what
was appended since (its own path, unchanged).

Bounded: Faust runs ``_build_offsets`` under ``broker_request_timeout`` and cancels it on a
new rebalance; progress is stored every ``CHECKPOINT`` records and the restore stops at
``deadline_s``, leaving the rest to Faust. Actives only: standbys follow the changelog in
the background and do not gate readiness.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MIN_RECORDS = 2_000  # below this a partition is left to Faust's own path (a warm restart)
CHECKPOINT = 200_000  # records of a partition between stored offsets
FETCH_BYTES = 32 << 20

OnBatch = Callable[[int, list[tuple[bytes, bytes | None]]], None]
OnFresh = Callable[[int], None]


class BulkRestore:
    """Installs itself on the app's table recovery for one table (``install``).

    ``on_batch(partition, [(key, value or None), ...])`` sees every record restored (the
    ledger's index), ``on_fresh(partition)`` is told first when the partition's local store
    was empty (what is restored is then all it holds); ``client_kwargs`` are the aiokafka
    connection arguments."""

    def __init__(
        self,
        table: Any,
        client_kwargs: dict[str, Any],
        *,
        on_batch: OnBatch | None = None,
        on_fresh: OnFresh | None = None,
        min_records: int = MIN_RECORDS,
        deadline_s: float = 60.0,
    ) -> None:
        self.table = table
        self.client_kwargs = client_kwargs
        self.on_batch = on_batch
        self.on_fresh = on_fresh
        self.min_records = min_records
        self.deadline_s = deadline_s
        self.restored = 0  # records written by bulk restores (figures, tests)

    def install(self) -> None:
        recovery = self.table.app.tables.recovery
        build_offsets = recovery._build_offsets

        async def _build_offsets(consumer: Any, tps: Any, destination: Any, title: str) -> None:
            await build_offsets(consumer, tps, destination, title)
            if title == "active":
                await self.restore(destination, recovery.active_highwaters)

        recovery._build_offsets = _build_offsets

    async def restore(self, offsets: Any, highwaters: Any) -> None:
        """Read each of this table's active changelog partitions that is far behind
        (``offsets``: last applied, -1 none; ``highwaters``: last written) and advance its
        entry in ``offsets`` to what was applied."""
        topic = self.table.changelog_topic_name
        todo = {
            tp: offsets[tp]
            for tp in list(offsets)
            if tp.topic == topic
            and highwaters.get(tp) is not None
            and offsets[tp] is not None
            and highwaters[tp] - offsets[tp] >= self.min_records
        }
        if not todo:
            return
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            **self.client_kwargs,
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=FETCH_BYTES,
            fetch_max_bytes=FETCH_BYTES,
            auto_offset_reset="earliest",
        )
        if self.on_fresh is not None:
            for tp in todo:
                if self._empty(tp):
                    self.on_fresh(tp.partition)
        started, cpu = time.monotonic(), time.process_time()
        total = 0
        await consumer.start()
        try:
            parts = {TopicPartition(tp.topic, tp.partition): tp for tp in todo}
            consumer.assign(list(parts))
            for atp, tp in parts.items():
                consumer.seek(atp, todo[tp] + 1)
            left = set(parts)
            since: dict[Any, int] = {}
            while left and time.monotonic() - started < self.deadline_s:
                got = await consumer.getmany(*left, timeout_ms=1000, max_records=20_000)
                for atp, records in got.items():
                    tp = parts[atp]
                    if not records:
                        continue
                    self._write(tp.partition, records)
                    last = records[-1].offset
                    offsets[tp] = last
                    total += len(records)
                    since[tp] = since.get(tp, 0) + len(records)
                    if since[tp] >= CHECKPOINT:
                        self._checkpoint(tp, last)
                        since[tp] = 0
                for atp in list(left):
                    if await consumer.position(atp) > highwaters[parts[atp]]:
                        left.discard(atp)
            for tp in todo:
                if offsets[tp] > todo[tp]:
                    self._checkpoint(tp, offsets[tp])
        finally:
            await consumer.stop()
            self.restored += total
        took = time.monotonic() - started
        log.info(
            "bulk restore of %s: %d records in %.2fs (%.0f/s, %.1f us CPU each)%s",
            topic,
            total,
            took,
            total / max(took, 1e-6),
            (time.process_time() - cpu) * 1e6 / max(total, 1),
            "; the rest is left to Faust" if left else "",
        )

    def _write(self, partition: int, records: list[Any]) -> None:
        pairs: list[tuple[bytes, bytes | None]] = [(r.key, r.value) for r in records]
        store = self.table.data
        if hasattr(store, "_db_for_partition"):  # RocksDB
            import rocksdict

            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in pairs:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            opts = rocksdict.WriteOptions()
            # A property (its stub says method); flushed before the offset is stored.
            opts.disable_wal = True  # type: ignore[method-assign,assignment]
            store._db_for_partition(partition).write(batch, write_opt=opts)
        else:  # memory: a dict keyed as Faust's own apply_changelog_batch keys it
            data, where = store.data, store._key_partition
            for key, value in pairs:
                if value is None:
                    data.pop(key, None)
                    where.pop(key, None)
                else:
                    data[key] = value
                    where[key] = partition
        if self.on_batch is not None:
            self.on_batch(partition, pairs)

    def _empty(self, tp: Any) -> bool:
        store = self.table.data
        if hasattr(store, "_db_for_partition"):
            db = store._db_for_partition(tp.partition)
            return next(iter(db.keys()), None) is None
        return False  # memory: not asked (its batches are always indexed)

    def _checkpoint(self, tp: Any, offset: int) -> None:
        store = self.table.data
        if hasattr(store, "_db_for_partition"):
            db = store._db_for_partition(tp.partition)
            db.flush(True)  # what the WAL did not hold is on disk before the offset is
            store.set_persisted_offset(tp, offset)
