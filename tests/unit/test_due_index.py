"""The ledger's due and day indexes (streams.ledger.due): pure, no Faust."""

from __future__ import annotations

from schemas.state import SubscriptionState, decode_state, encode_state
from streams.ledger.due import DAY_MS, LedgerIndex, fingerprint, pack, unpack


def test_header_round_trips_and_state_still_decodes() -> None:
    state = SubscriptionState(subscription_id="s-1", user_id="u-1")
    raw = pack(encode_state(state), 7, 1_000, (3, 5))
    head = unpack(raw)
    assert head is not None and (head.fp, head.wake, head.days) == (7, 1_000, (3, 5))
    assert decode_state(raw) == state  # every reader of the table sees the state unchanged
    none = unpack(pack(encode_state(state), 7, None, ()))
    assert none is not None and none.wake is None and none.days == ()
    assert unpack(encode_state(state)) is None  # a value written before the header


def test_fingerprint_follows_the_policy() -> None:
    assert fingerprint("a") == fingerprint("a") != fingerprint("b")


def test_pop_due_returns_only_what_is_due_within_the_budget() -> None:
    index = LedgerIndex()
    for i in range(100):
        index.put(i % 4, f"k{i}".encode(), 1_000 + i)
    index.put(0, b"never", None)
    due = index.pop_due(1_009, {0, 1, 2, 3}, limit=1_000)
    assert sorted(k for _p, k in due) == sorted(f"k{i}".encode() for i in range(10))
    assert index.pop_due(1_009, {0, 1, 2, 3}, limit=1_000) == []  # popped: not due again
    # A budget spreads a cohort: partitions take turns.
    first = index.pop_due(10_000, {0, 1, 2, 3}, limit=8)
    assert len(first) == 8 and {p for p, _k in first} == {0, 1, 2, 3}
    assert len(index.pop_due(10_000, {0, 1, 2, 3}, limit=1_000)) == 100 - 10 - 8


def test_rewrite_replaces_the_wake_and_inactive_partitions_are_not_swept() -> None:
    index = LedgerIndex()
    index.put(0, b"a", 100)
    index.put(0, b"a", 5_000)  # written again: the old entry is stale
    index.put(1, b"b", 100)
    assert index.pop_due(1_000, {0, 1}, 10) == [(1, b"b")]
    index.defer(0, b"a", 200)
    assert index.pop_due(1_000, {1}, 10) == []  # partition 0 is not active here
    assert index.pop_due(1_000, {0}, 10) == [(0, b"a")]
    index.put(2, b"c", 1)
    index.drop(2)  # revoked
    assert index.pop_due(1_000, {2}, 10) == []
    index.put(3, b"d", 1)
    index.remove(3, b"d")
    assert index.pop_due(1_000, {3}, 10) == []


def test_heap_stays_bounded_under_rewrites() -> None:
    index = LedgerIndex()
    for t in range(10_000):
        index.put(0, b"k", t + 1)
    assert len(index._parts[0].heap) <= 2 * 1 + 1024 + 1
    assert index.pop_due(10**9, {0}, 10) == [(0, b"k")]


def test_keys_requested_by_day_window() -> None:
    index = LedgerIndex()
    index.put(0, b"a", None, (10, 40))
    index.put(0, b"b", None, (11,))
    index.put(1, b"c", None, (10,))
    assert index.keys_requested(0, 10 * DAY_MS, 10 * DAY_MS + 5) == {b"a"}
    assert index.keys_requested(0, 10 * DAY_MS, 12 * DAY_MS - 1) == {b"a", b"b"}
    assert index.keys_requested(0, 0, 10**15) == {b"a", b"b"}
    index.put(0, b"a", None, (40,))  # its day-10 item left the state
    assert index.keys_requested(0, 10 * DAY_MS, 10 * DAY_MS + 5) == set()
    assert index.keys_requested(0, 5, 4) == set()


def test_end_of_report_from_the_day_index_finds_what_the_scan_finds() -> None:
    """The reconcile agent's end of report reads only the states the day index names, and
    finds the same items as looking at every state of the partition."""
    from typing import Any

    from streams.ledger.due import request_days
    from streams.reconcile.agent import Reconciler
    from tests.integration.recon_support import make_day

    w0 = 1_764_547_200_000  # 2025-12-01 00:00 UTC
    day = make_day(w0)
    index = LedgerIndex()
    table: dict[bytes, bytes] = {}
    for s in day.states:
        key = s.subscription_id.encode()
        table[key] = pack(encode_state(s), 1, None, request_days(s))
        index.put(0, key, None, request_days(s))

    async def nothing(*_a: Any) -> Any:
        raise AssertionError("no I/O here")

    found = []
    for idx in (None, index):
        rec = Reconciler(table, nothing, nothing, 1, idx)
        rec._configs["run"] = day.cfg
        unreadable: list[bytes] = []
        states = list(rec._partition_states("run", 0, unreadable))
        items, complete = rec.memory.end(day.cfg, "run", 0, states, 0)
        assert complete and not unreadable
        found.append((items, len(states)))
    (scan, n_scan), (indexed, n_indexed) = found
    assert scan and sorted(map(repr, indexed)) == sorted(map(repr, scan))
    assert n_indexed <= n_scan


def test_a_snapshot_restores_the_index_only_at_the_same_offset_and_policy() -> None:
    index = LedgerIndex()
    for i in range(50):
        index.put(1, f"k{i}".encode(), 1_000 + i if i % 5 else None, (i % 3, 7) if i % 2 else ())
    blob = index.dump(1, fp=9, offset=1234)

    restored = LedgerIndex()
    held = sum(1 for i in range(50) if i % 5 or i % 2)  # neither a wake-up nor days: none
    assert restored.load(1, blob, fp=9, offset=1234) == held == 45
    for i in range(50):
        assert restored.wake_of(1, f"k{i}".encode()) == index.wake_of(1, f"k{i}".encode())
    assert restored.keys_requested(1, 7 * DAY_MS, 7 * DAY_MS) == index.keys_requested(
        1, 7 * DAY_MS, 7 * DAY_MS
    )
    assert restored.pop_due(1_020, {1}, 100) == index.pop_due(1_020, {1}, 100)

    # Written since (another offset), another policy, or garbage: not trusted.
    for fp, offset, data in ((9, 1235, blob), (9, None, blob), (8, 1234, blob), (9, 1234, b"x")):
        other = LedgerIndex()
        other.put(1, b"mine", 5)
        assert other.load(1, data, fp=fp, offset=offset) is None
        assert other.wake_of(1, b"mine") == 5  # left as it was


def test_the_fingerprint_is_the_same_in_every_process() -> None:
    """The policy holds frozensets of strings, whose order follows the hash seed: a header
    or snapshot written by one process must be trusted by the next."""
    import os
    import subprocess
    import sys

    code = (
        "from streams.ledger.machine import Policy;"
        "from streams.ledger.due import fingerprint;"
        "print(fingerprint(Policy()))"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in (1, 2, 3, 4)
    }
    assert len(seen) == 1, seen
