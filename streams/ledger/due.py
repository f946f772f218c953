"""What the ledger's timers and the reconcile agent's end of report need, without a scan.

Two things are kept per table partition, in memory, updated on every write of the ledger
table and rebuilt while the table is recovered:

- the *due index*: each subscription's next wake-up (``machine.next_wakeup``) in a heap, so
  the sweeper pops only what is due (its CPU per tick follows what is due, not the table);
- the *day index*: the days (UTC) on which the subscription's payments and refunds were
  requested, so the end of a reconciliation report decodes only the states with an item in
  its window.

Recovering the index must not decode every state (a million states would cost tens of
seconds), so the table value carries what the index needs in a leading JSON member:
``{"_due":[F,W,d1,d2,...],<the state's own members>}``, F the fingerprint of the policy and
index format the wake-up was computed with, W the wake-up in epoch ms (-1: none), d… the
days. msgspec ignores unknown members, so ``decode_state`` (and every reader of the table
or its changelog) reads such a value unchanged; a value without the member (written before
it existed) or with another fingerprint (the policy changed) is decoded once, the slow way.

Even the headers cost a read of every value (~70 µs a state on this box: a minute at 1 M),
so a graceful stop (or a revocation) also leaves each partition's index beside its database
(``LedgerIndex.dump``), tagged with the changelog offset the database was at; a start that
finds the database still at that offset loads it in seconds, any other case reads the values.

Pure: no I/O, no Faust. ``streams.ledger.agent`` wires it to the table.
"""

from __future__ import annotations

import dataclasses
import heapq
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import msgspec

from schemas.state import SubscriptionState

DAY_MS = 86_400_000
INDEX_FORMAT = 1  # bump when what the header means changes: every value is then re-derived
_HEAD = b'{"_due":['
_HEAD_LEN = len(_HEAD)
NO_WAKE = -1


def fingerprint(policy: object) -> int:
    """A number for the policy and the index format, the same in every process: a header
    written under another one is not trusted. (A plain ``repr`` is not stable: a frozenset
    of strings prints in an order that follows the process's hash seed, which made every
    header look stale after a restart.)"""
    return zlib.crc32(f"{INDEX_FORMAT}:{_canonical(policy)}".encode()) & 0x7FFFFFFF


def _canonical(value: object) -> str:
    """``repr`` with sets sorted and dataclasses spelt field by field."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = (
            f"{f.name}={_canonical(getattr(value, f.name))}" for f in dataclasses.fields(value)
        )
        return f"{type(value).__name__}({','.join(fields)})"
    if isinstance(value, set | frozenset):
        return "{" + ",".join(sorted(map(_canonical, value))) + "}"
    if isinstance(value, dict):
        items = sorted(f"{_canonical(k)}:{_canonical(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(map(_canonical, value)) + "]"
    return repr(value)


def request_days(state: SubscriptionState) -> tuple[int, ...]:
    """The distinct UTC days on which the state's payments and refunds were requested (what
    ``reconciler.matcher.end_of_report`` judges against a window)."""
    days = {p.requested_at // DAY_MS for p in state.payments.values()}
    days.update(r.requested_at // DAY_MS for r in state.refunds.values())
    return tuple(sorted(days))


def pack(encoded_state: bytes, fp: int, wake: int | None, days: Iterable[int]) -> bytes:
    """The table value: ``encoded_state`` (a JSON object, ``encode_state``) with the index
    header as its first member."""
    nums = ",".join(map(str, (fp, NO_WAKE if wake is None else wake, *days)))
    return b"".join((_HEAD, nums.encode(), b"],", encoded_state[1:]))


@dataclass(frozen=True, slots=True)
class Header:
    fp: int
    wake: int | None
    days: tuple[int, ...]


def unpack(value: bytes) -> Header | None:
    """The index header of a table value, or None when it has none (or a malformed one)."""
    if not value.startswith(_HEAD):
        return None
    end = value.find(b"]", _HEAD_LEN)
    if end < 0:
        return None
    try:
        nums = [int(n) for n in value[_HEAD_LEN:end].split(b",")]
    except ValueError:
        return None
    if len(nums) < 2:
        return None
    wake = nums[1]
    return Header(nums[0], None if wake == NO_WAKE else wake, tuple(nums[2:]))


# -------------------------------------------------------------------------------- index
@dataclass
class _Part:
    """One table partition: wake-ups (a heap with lazy deletion: an entry is live while it
    equals ``wake[key]``) and request days."""

    wake: dict[bytes, int] = field(default_factory=dict)
    heap: list[tuple[int, bytes]] = field(default_factory=list)
    days: dict[bytes, tuple[int, ...]] = field(default_factory=dict)
    by_day: dict[int, set[bytes]] = field(default_factory=dict)

    def set_wake(self, key: bytes, at: int | None) -> None:
        if at is None:
            self.wake.pop(key, None)
            return
        if self.wake.get(key) == at:
            return
        self.wake[key] = at
        heapq.heappush(self.heap, (at, key))
        if len(self.heap) > 2 * len(self.wake) + 1024:
            self.heap = [(w, k) for k, w in self.wake.items()]
            heapq.heapify(self.heap)

    def set_days(self, key: bytes, days: tuple[int, ...]) -> None:
        old = self.days.get(key, ())
        if old == days:
            return
        for d in old:
            keys = self.by_day.get(d)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_day[d]
        if days:
            self.days[key] = days
            for d in days:
                self.by_day.setdefault(d, set()).add(key)
        else:
            self.days.pop(key, None)

    def head(self) -> int | None:
        """The earliest live wake-up (dropping stale heap entries on the way)."""
        heap, wake = self.heap, self.wake
        while heap:
            at, key = heap[0]
            if wake.get(key) == at:
                return at
            heapq.heappop(heap)
        return None

    def pop(self) -> bytes:
        """Remove the earliest live entry (after ``head`` said there is one)."""
        _at, key = heapq.heappop(self.heap)
        del self.wake[key]
        return key


class LedgerIndex:
    """The due and day indexes of the table partitions this process holds."""

    def __init__(self) -> None:
        self._parts: dict[int, _Part] = {}

    def partitions(self) -> set[int]:
        return set(self._parts)

    def _part(self, partition: int) -> _Part:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Part()
        return part

    def put(self, partition: int, key: bytes, wake: int | None, days: tuple[int, ...] = ()) -> None:
        """The subscription ``key`` (on ``partition``) was written: its wake-up and days."""
        part = self._part(partition)
        part.set_wake(key, wake)
        part.set_days(key, days)

    def remove(self, partition: int, key: bytes) -> None:
        part = self._parts.get(partition)
        if part is not None:
            part.set_wake(key, None)
            part.set_days(key, ())

    def defer(self, partition: int, key: bytes, at: int) -> None:
        """Look at ``key`` again at ``at`` (the sweeper, after sending its due commands,
        waits for the ledger to apply them; the write that follows replaces this)."""
        self._part(partition).set_wake(key, at)

    def drop(self, partition: int) -> None:
        """Forget a partition (revoked)."""
        self._parts.pop(partition, None)

    def wake_of(self, partition: int, key: bytes) -> int | None:
        part = self._parts.get(partition)
        return part.wake.get(key) if part else None

    def pop_due(self, now: int, partitions: Iterable[int], limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` (partition, key) whose wake-up is at or before ``now``, taken
        from ``partitions`` in turn (a cohort due at once is spread over ticks, fairly across
        partitions); each is removed from the due index. Cost: what is returned plus stale
        heap entries, never the table."""
        parts = [(p, self._parts[p]) for p in sorted(partitions) if p in self._parts]
        out: list[tuple[int, bytes]] = []
        while parts and len(out) < limit:
            still = []
            for p, part in parts:
                if len(out) >= limit:
                    break
                at = part.head()
                if at is None or at > now:
                    continue
                out.append((p, part.pop()))
                still.append((p, part))
            parts = still
        return out

    def due_count(self, now: int, partitions: Iterable[int]) -> int:
        """How many keys are due (for figures; walks the due part of the heaps)."""
        n = 0
        for p in partitions:
            part = self._parts.get(p)
            if part is None:
                continue
            n += sum(1 for at, key in part.heap if at <= now and part.wake.get(key) == at)
        return n

    def due_stats(
        self, now: int, partitions: Iterable[int], overdue_ms: int
    ) -> tuple[int, int, int]:
        """(due, overdue by more than ``overdue_ms``, age in ms of the oldest due) for the
        gauges: a walk of the due part of each heap only (a heap's subtree below an entry
        not yet due holds nothing due)."""
        due = overdue = oldest = 0
        for p in partitions:
            part = self._parts.get(p)
            if part is None:
                continue
            heap, wake = part.heap, part.wake
            todo = [0] if heap else []
            while todo:
                i = todo.pop()
                at, key = heap[i]
                if at > now:
                    continue
                if wake.get(key) == at:
                    due += 1
                    oldest = max(oldest, now - at)
                    if now - at > overdue_ms:
                        overdue += 1
                todo.extend(j for j in (2 * i + 1, 2 * i + 2) if j < len(heap))
        return due, overdue, oldest

    def keys_requested(self, partition: int, start_ms: int, end_ms: int) -> set[bytes]:
        """Keys of ``partition`` with a payment or refund requested on a day that touches
        ``[start_ms, end_ms]`` (a superset of what the window holds: check the state)."""
        part = self._parts.get(partition)
        if part is None or end_ms < start_ms:
            return set()
        first, last = start_ms // DAY_MS, end_ms // DAY_MS
        keys: set[bytes] = set()
        if last - first + 1 > len(part.by_day):
            days: Iterator[int] = (d for d in part.by_day if first <= d <= last)
        else:
            days = iter(range(first, last + 1))
        for d in days:
            keys |= part.by_day.get(d, set())
        return keys

    def size(self, partition: int) -> int:
        part = self._parts.get(partition)
        return len(part.wake) if part else 0

    def dump(self, partition: int, fp: int, offset: int | None) -> bytes:
        """A snapshot of ``partition``'s index as of the store's changelog ``offset``
        (``load`` trusts it only for a store still at that offset)."""
        part = self._parts.get(partition) or _Part()
        keys = list(part.wake.keys() | part.days.keys())
        wake, days = part.wake, part.days
        snap = _Snapshot(
            format=INDEX_FORMAT,
            fp=fp,
            offset=offset,
            keys=keys,
            wakes=[wake.get(k, NO_WAKE) for k in keys],
            days=[days.get(k, ()) for k in keys],
        )
        return _SNAP_ENCODER.encode(snap)

    def load(self, partition: int, blob: bytes, fp: int, offset: int | None) -> int | None:
        """Replace ``partition``'s index by the snapshot ``blob`` when it was taken under
        the same policy and index format at the store's current changelog ``offset``;
        returns how many keys it holds, or None (the caller then rebuilds the slow way)."""
        try:
            snap = _SNAP_DECODER.decode(blob)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if (snap.format, snap.fp, snap.offset) != (INDEX_FORMAT, fp, offset):
            return None
        if not len(snap.keys) == len(snap.wakes) == len(snap.days):
            return None
        part = _Part()
        part.wake = {k: w for k, w in zip(snap.keys, snap.wakes, strict=True) if w != NO_WAKE}
        part.heap = [(w, k) for k, w in part.wake.items()]
        heapq.heapify(part.heap)
        part.days = {k: d for k, d in zip(snap.keys, snap.days, strict=True) if d}
        by_day = part.by_day
        for key, ds in part.days.items():
            for d in ds:
                keys = by_day.get(d)
                if keys is None:
                    by_day[d] = {key}
                else:
                    keys.add(key)
        self._parts[partition] = part
        return len(snap.keys)


def snapshot_offset(blob: bytes) -> int | None:
    """The changelog offset a snapshot was taken at (for the log line of a stale one)."""
    try:
        return _SNAP_DECODER.decode(blob).offset
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class _Snapshot(msgspec.Struct, array_like=True):
    """A partition's index at a changelog offset (``LedgerIndex.dump``)."""

    format: int
    fp: int
    offset: int | None
    keys: list[bytes]
    wakes: list[int]
    days: list[tuple[int, ...]]


_SNAP_ENCODER = msgspec.msgpack.Encoder()
_SNAP_DECODER = msgspec.msgpack.Decoder(_Snapshot)
