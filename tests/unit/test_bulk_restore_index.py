"""The ledger's index under a bulk restore (streams.ledger.restore, TableIndex): pure, with a
stand-in table and store, no Faust and no broker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from billing.config import WorkerSettings
from schemas.state import SubscriptionState, encode_state
from streams.app import policy_from
from streams.ledger.agent import TableIndex
from streams.ledger.due import fingerprint, pack
from streams.ledger.restore import BulkRestore

POLICY = policy_from(WorkerSettings(env="test"))


def _value(i: int, wake: int) -> bytes:
    state = SubscriptionState(subscription_id=f"s-{i}", user_id=f"u-{i}")
    return pack(encode_state(state), fingerprint(POLICY), wake, (i,))


def _records(n: int) -> list[Any]:
    return [SimpleNamespace(key=b"k%d" % i, value=_value(i, 1_000 + i)) for i in range(n)]


def test_a_fresh_partition_is_indexed_from_the_restore_and_complete() -> None:
    indexed = TableIndex(table=None, policy=POLICY, on_disk=True)
    indexed.fresh(2)
    indexed.restored(2, [(r.key, r.value) for r in _records(10)])
    indexed.restored(2, [(b"k3", None)])  # a deletion on the changelog
    assert 2 in indexed.complete
    assert indexed.index.size(2) == 9
    assert indexed.index.wake_of(2, b"k5") == 1_005
    assert indexed.index.wake_of(2, b"k3") is None


def test_a_partition_with_data_on_disk_waits_for_the_pass_over_its_database() -> None:
    indexed = TableIndex(table=None, policy=POLICY, on_disk=True)
    indexed.restored(1, [(r.key, r.value) for r in _records(10)])
    assert 1 not in indexed.complete and indexed.index.size(1) == 0
    in_memory = TableIndex(table=None, policy=POLICY, on_disk=False)
    in_memory.restored(1, [(r.key, r.value) for r in _records(10)])
    assert in_memory.index.size(1) == 10


def test_memory_store_gets_puts_and_deletions_with_their_partition() -> None:
    store = SimpleNamespace(data={b"gone": b"x"}, _key_partition={b"gone": 3})
    seen: list[tuple[int, int]] = []
    restore = BulkRestore(
        SimpleNamespace(data=store), {}, on_batch=lambda p, pairs: seen.append((p, len(pairs)))
    )
    recs = [*_records(3), SimpleNamespace(key=b"gone", value=None)]
    restore._write(3, recs)
    assert set(store.data) == {b"k0", b"k1", b"k2"}
    assert store._key_partition == {b"k0": 3, b"k1": 3, b"k2": 3}
    assert seen == [(3, 4)]


def test_due_stats_walk_only_the_due_part_and_match_a_count() -> None:
    from streams.ledger.due import LedgerIndex

    index = LedgerIndex()
    for i in range(1_000):
        index.put(i % 4, b"k%d" % i, (i * 7919) % 5_000)
    index.put(1, b"k1", 9_999)  # rewritten: its old heap entry is stale
    index.put(2, b"none", None)
    now = 2_000
    expected = [
        w
        for p in range(4)
        for k in [b"k%d" % i for i in range(1_000)]
        if (w := index.wake_of(p, k)) is not None and w <= now
    ]
    due, overdue, oldest = index.due_stats(now, {0, 1, 2, 3}, overdue_ms=1_500)
    assert due == len(expected) == index.due_count(now, {0, 1, 2, 3})
    assert overdue == sum(1 for w in expected if now - w > 1_500)
    assert oldest == now - min(expected)
    assert index.due_stats(now, {3}, 1_500)[0] < due
