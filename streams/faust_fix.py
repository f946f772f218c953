"""Fix for faust-streaming 0.15.3 losing input after a restart or rebalance (at_least_once).

Mechanism and measurements: STACK-NOTES.md ("at_least_once loses input"). In short, after
a rebalance faust resumes the source partitions *before* it seeks them to the committed
offset C. Records fetched in that window reach the agent queues and advance faust's read
offset; the seek then rewinds the fetch position to C, ``flow_control.resume()`` clears the
queues, and the re-fetched records are dropped as "already read", so C.. is never processed
while later offsets are acked and committed. Independently, the fetch passes faust's *live*
set of active partitions to aiokafka; when it is (or becomes) empty aiokafka reads it as
"every partition" and hands out records of paused partitions, which faust then drops
without rewinding the fetch position.

The fix has two parts, both on private code of exactly faust 0.15.3 (hence the version
guard; faust and aiokafka are pinned in pyproject):

1. Recovery seeks the source partitions to their committed offsets while they are still
   paused, and only then clears the queues and resumes them, with no await in between.
2. The consumer thread fetches with a snapshot of the active partitions, fetches nothing
   when none is active, and seeks back the records of any partition paused while it waited
   (faust would drop those records, and the fetch position had already moved past them).

Call :func:`apply` before the faust App is built (``streams/app.py`` does). Regression test:
``tests/integration/test_faust_restart_fix.py``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from faust.tables.recovery import Recovery
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

FAUST_VERSION = "0.15.3"
_MARK = "_billing_restart_fix"

_FetchRecords = Callable[..., Awaitable[Mapping[Any, list[Any]]]]


class UnsupportedFaustVersion(RuntimeError):
    """The installed faust is not the version this patch was written and tested against."""


def apply() -> None:
    """Install the fix (idempotent). Raises if faust is not exactly 0.15.3."""
    if faust.__version__ != FAUST_VERSION:
        raise UnsupportedFaustVersion(
            f"streams/faust_fix.py patches private code of faust-streaming {FAUST_VERSION}, "
            f"but {faust.__version__} is installed: re-check the restart-loss race "
            "(STACK-NOTES.md) and the regression test before changing the pin"
        )
    if getattr(AIOKafkaConsumerThread._fetch_records, _MARK, False):
        return
    Recovery.on_recovery_completed = _on_recovery_completed
    Recovery._resume_streams = _resume_streams
    AIOKafkaConsumerThread._fetch_records = _snapshot_fetch(AIOKafkaConsumerThread._fetch_records)


def is_applied() -> bool:
    return bool(getattr(AIOKafkaConsumerThread._fetch_records, _MARK, False))


# ----------------------------------------------------------------------------- part 1
async def _seek_then_resume(recovery: Any, generation_id: int) -> bool:
    """Seek the (still paused) source partitions to the committed offsets, then resume them.

    Returns False when another rebalance has started (faust's own check): the next
    recovery round resumes instead.
    """
    app = recovery.app
    consumer = app.consumer
    assignment = consumer.assignment()
    if app.consumer_generation_id != generation_id:
        recovery.log.warning("Recovery rebalancing again")
        return False
    if assignment:
        recovery.log.info("Seek stream partitions to committed offsets (still paused).")
        await recovery._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
    recovery.completed.set()
    # No await from here to resume_flow: flow_control.resume() clears the agent queues, so
    # no source record may be fetched and queued before it.
    app.flow_control.resume()
    consumer.resume_partitions({tp for tp in assignment if not recovery._is_changelog_tp(tp)})
    consumer.resume_flow()
    return True


async def _on_recovery_completed(self: Any, generation_id: int = 0) -> None:
    """``Recovery.on_recovery_completed`` (tables present) with seek-before-resume."""
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callbacks = [
        asyncio.ensure_future(
            table.on_recovery_completed(
                self.actives_for_table[table], self.standbys_for_table[table]
            )
        )
        for table in self.tables.values()
    ]
    if callbacks:
        await asyncio.wait(callbacks)
    if not await _seek_then_resume(self, generation_id):
        return
    await self.app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


async def _resume_streams(self: Any, generation_id: int = 0) -> None:
    """``Recovery._resume_streams`` (no tables) with seek-before-resume."""
    await self.app.on_rebalance_complete.send()
    if not await _seek_then_resume(self, generation_id):
        return
    await self.app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


# ----------------------------------------------------------------------------- part 2
def _snapshot_fetch(original: _FetchRecords) -> _FetchRecords:
    """Wrap ``AIOKafkaConsumerThread._fetch_records`` (runs on the consumer thread)."""

    @functools.wraps(original)
    async def _fetch_records(
        self: Any,
        consumer: Any,
        active_partitions: set[Any] | None,
        timeout: float | None = None,  # noqa: ASYNC109 (faust calls it with timeout=)
        max_records: int | None = None,
    ) -> Mapping[Any, list[Any]]:
        if active_partitions is None:  # client-only app: every partition is wanted
            return await original(self, consumer, None, timeout, max_records)
        # set() of a set is one C call under the GIL: a consistent copy of the live set.
        wanted = frozenset(active_partitions)
        if not wanted:
            # aiokafka reads an empty set as "all partitions"; fetch nothing instead (the
            # short sleep keeps the fetch loop from spinning).
            await asyncio.sleep(min(timeout or 0.0, 0.1))
            return {}
        records = await original(self, consumer, wanted, timeout, max_records)
        # No await since fetched_records drained these records (and moved the fetch
        # positions), so no seek can have run in between: rewinding here is exact.
        faust_consumer = self.consumer
        live = faust_consumer._active_partitions or frozenset()
        buffered = faust_consumer._buffered_partitions
        dropped = [tp for tp in records if tp not in live and tp not in buffered]
        if not dropped:
            return records
        kept = dict(records)
        assigned = consumer.assignment()
        for tp in dropped:
            batch = kept.pop(tp)
            if batch and tp in assigned:
                consumer.seek(tp, batch[0].offset)
        return kept

    setattr(_fetch_records, _MARK, True)
    return _fetch_records
