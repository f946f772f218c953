"""reconciler.store against a real PostgreSQL: runs, idempotent items across runs, the
streaming agent's progress (matched items counted, each message recorded once), partition ends
and the finished summary, and admin resolutions of escalations."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection

from reconciler import store
from reconciler.matcher import reconcile, summarize
from schemas.messages import PaymentObserved, RefundObserved
from schemas.recon_runs import RunSpec
from tests.integration.recon_support import HOUR, NOW, W0, day_items, new_run, record_run

pytestmark = pytest.mark.integration


@pytest.fixture
async def conn(module_pg_dsn: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await AsyncConnection.connect(module_pg_dsn, autocommit=True) as c:
        yield c


async def count(conn: AsyncConnection[Any], sql: str, *params: Any) -> int:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


# ------------------------------------------------------------------------------- runs
async def test_run_round_trip(conn: AsyncConnection[Any]) -> None:
    run = await new_run(conn, source_ref="http://provider/v3", trigger="cli")
    assert await store.load_run(conn, run.run_id) == run
    assert run.match_config().now == NOW
    assert await store.load_run(conn, str(uuid.uuid4())) is None
    with pytest.raises(ValueError, match="empty window"):
        await new_run(conn, window_start=W0, window_end=W0)


async def test_one_nightly_run_per_schedule_key(conn: AsyncConnection[Any]) -> None:
    key = f"nightly:{uuid.uuid4()}"
    first = await store.create_run(
        conn,
        run_id=str(uuid.uuid4()),
        window_start=W0,
        window_end=W0 + HOUR,
        source="provider_api",
        taken_at=NOW,
        trigger="nightly",
        schedule_key=key,
    )
    second = await store.create_run(
        conn,
        run_id=str(uuid.uuid4()),
        window_start=W0,
        window_end=W0 + HOUR,
        source="provider_api",
        taken_at=NOW,
        trigger="nightly",
        schedule_key=key,
    )
    assert first is not None and second is None
    assert await count(conn, "SELECT count(*) FROM recon_runs WHERE schedule_key = %s", key) == 1


async def test_fail_run_records_the_error_unless_already_finished(
    conn: AsyncConnection[Any],
) -> None:
    run = await new_run(conn)
    await store.fail_run(conn, run.run_id, "ProviderUnavailable: 503", NOW + 5000)
    report = await store.run_report(conn, run.run_id)
    assert report.spec.status == "failed" and report.error == "ProviderUnavailable: 503"
    assert report.duration_ms is not None and report.done
    _, items = day_items()
    done = await record_run(conn, items)
    await store.fail_run(conn, done.run_id, "late", NOW + 9000)
    assert (await store.run_report(conn, done.run_id)).spec.status == "finished"


async def test_run_report_of_unknown_run(conn: AsyncConnection[Any]) -> None:
    with pytest.raises(store.RunNotFound):
        await store.run_report(conn, str(uuid.uuid4()))


# ------------------------------------------------------------------------------ items
async def test_finished_run_summary_comes_from_its_items(conn: AsyncConnection[Any]) -> None:
    day, items = day_items()
    expected = reconcile(day.states, day.lines, day.cfg).summary
    run = await record_run(conn, items)
    report = await store.run_report(conn, run.run_id)
    assert report.spec.status == "finished"
    assert report.counts == expected.counts
    assert report.totals == store.totals_json(expected)
    assert report.totals["payments_theirs"] != report.totals["payments_ours"]
    assert report.discrepancies == expected.discrepancies == report.new_discrepancies
    escalated = sum(1 for i in items if i.discrepancy and i.repair == "escalate")
    assert report.unresolved == escalated > 0
    assert report.partitions_done == 2 and report.incomplete_partitions == 0
    assert sorted(map(store.item_key, await store.run_items(conn, run.run_id))) == sorted(
        map(store.item_key, items)
    )


async def test_recording_twice_and_rerunning_add_nothing(conn: AsyncConnection[Any]) -> None:
    _, items = day_items()
    keys = [store.item_key(i) for i in items]
    first = await record_run(conn, items)
    await store.record_items(conn, first.run_id, [(0, i) for i in items], NOW)  # a replay
    second = await record_run(conn, items)  # a re-run over the same window
    rows = await count(conn, "SELECT count(*) FROM recon_items WHERE item_key = ANY(%s)", keys)
    assert rows == len(set(keys)) == len(items)
    report = await store.run_report(conn, second.run_id)
    assert report.new_discrepancies == 0 and report.discrepancies > 0
    first_runs = await conn.execute(
        "SELECT DISTINCT first_run_id::text, last_run_id::text FROM recon_items"
        " WHERE item_key = ANY(%s)",
        (keys,),
    )
    assert await first_runs.fetchall() == [(first.run_id, second.run_id)]
    links = await count(
        conn,
        "SELECT count(*) FROM recon_run_items WHERE run_id = ANY(%s::uuid[])",
        [first.run_id, second.run_id],
    )
    assert links == 2 * len(items)


async def test_auto_repairs_are_resolved_escalations_wait(conn: AsyncConnection[Any]) -> None:
    _, items = day_items()
    run = await record_run(conn, items)
    rows = await store.list_items(
        conn, run_id=run.run_id, unresolved_only=False, discrepancies_only=False, limit=1000
    )
    assert len(rows) == len(items)
    for row in rows:
        if not row.discrepancy:
            assert row.resolution is None
        elif row.repair == "escalate":
            assert row.resolution is None and row.repaired_at is None
        else:
            assert row.resolution == "repaired" and row.resolved_by == "reconciler"
            assert row.repaired_at is not None
    open_rows = await store.list_items(conn, run_id=run.run_id)
    assert {r.kind for r in open_rows} == {
        "missing_internal",
        "amount_mismatch",
        "missing_at_provider",
        "refund_mismatch",
    }
    only = await store.list_items(conn, run_id=run.run_id, kinds=["amount_mismatch"])
    assert [r.kind for r in only] == ["amount_mismatch"]


async def test_a_repaired_item_found_escalated_is_reopened(conn: AsyncConnection[Any]) -> None:
    _, items = day_items()
    dup = next(i for i in items if i.kind == "duplicate_charge")
    await record_run(conn, [dup])
    key = store.item_key(dup)
    assert (await store.get_item(conn, key)).resolution == "repaired"
    escalated = msgspec.structs.replace(dup, repair="escalate", refund_key=None)
    await record_run(conn, [escalated])
    row = await store.get_item(conn, key)
    assert row.resolution is None and row.repair == "escalate"
    assert row.repaired_at is not None  # when it was repaired stays known


# ------------------------------------------------------------------------ resolutions
async def test_resolve_an_escalation(conn: AsyncConnection[Any]) -> None:
    _, items = day_items()
    run = await record_run(conn, items)
    odd = next(i for i in items if i.kind == "amount_mismatch")
    key = store.item_key(odd)
    done = await store.resolve(
        conn, key, resolution="write_off", actor="admin:7", note="partner promo", at=NOW + 1
    )
    assert done.changed and done.follow_up is None
    assert (done.item.resolution, done.item.resolved_by, done.item.note) == (
        "write_off",
        "admin:7",
        "partner promo",
    )
    again = await store.resolve(conn, key, resolution="write_off", actor="admin:8", at=NOW + 2)
    assert not again.changed and again.item.resolved_by == "admin:7"
    with pytest.raises(store.AlreadyResolved) as exc:
        await store.resolve(conn, key, resolution="accept_ours", actor="admin:8", at=NOW + 3)
    assert exc.value.resolution == "write_off"
    report = await store.run_report(conn, run.run_id)
    escalated = sum(1 for i in items if i.discrepancy and i.repair == "escalate")
    assert report.unresolved == escalated - 1
    # A re-run finds the item again: the admin's decision stands.
    await record_run(conn, [odd])
    assert (await store.get_item(conn, key)).resolution == "write_off"


async def test_resolve_refusals(conn: AsyncConnection[Any]) -> None:
    _, items = day_items()
    await record_run(conn, items)
    matched = next(i for i in items if i.kind == "matched")
    with pytest.raises(store.NotADiscrepancy):
        await store.resolve(
            conn, store.item_key(matched), resolution="accept_ours", actor="admin", at=NOW
        )
    with pytest.raises(store.ItemNotFound):
        await store.resolve(conn, "payment:nope:matched", resolution="write_off", actor="a", at=0)
    with pytest.raises(ValueError, match="resolution must be"):
        await store.resolve(
            conn,
            store.item_key(matched),
            resolution="ignore",  # type: ignore[arg-type]
            actor="admin",
            at=NOW,
        )


async def test_accept_provider_on_our_unreported_payment_cancels_it(
    conn: AsyncConnection[Any],
) -> None:
    _, items = day_items()
    await record_run(conn, items)
    gone = next(i for i in items if i.kind == "missing_at_provider")
    done = await store.resolve(
        conn, store.item_key(gone), resolution="accept_provider", actor="admin", at=NOW + 7
    )
    obs = done.follow_up
    assert isinstance(obs, PaymentObserved)
    assert (obs.source, obs.status, obs.payment_id, obs.provider_payment_id) == (
        "reconciliation",
        "canceled",
        gone.payment_id,
        gone.provider_id,
    )
    assert obs.subscription_id == gone.subscription_id and obs.amount == gone.ours_amount
    # Repeated: the same observation (same id), so publishing it again is harmless.
    again = await store.resolve(
        conn, store.item_key(gone), resolution="accept_provider", actor="admin", at=NOW + 9
    )
    assert again.follow_up is not None
    assert again.follow_up.observation_id == obs.observation_id


async def test_accept_provider_on_a_refund_we_never_saw_records_only(
    conn: AsyncConnection[Any],
) -> None:
    _, items = day_items()
    await record_run(conn, items)
    outside = next(i for i in items if i.kind == "refund_mismatch")
    done = await store.resolve(
        conn, store.item_key(outside), resolution="accept_provider", actor="admin", at=NOW
    )
    assert done.follow_up is None  # no refund of ours to adopt the provider's view into
    assert not isinstance(done.follow_up, RefundObserved)


# -------------------------------------------------------------------------- partitions
async def test_run_finishes_only_when_every_partition_is_done(
    conn: AsyncConnection[Any],
) -> None:
    run = await new_run(conn)
    assert not await store.finish_if_complete(conn, run.run_id, NOW)  # partitions unknown yet
    await store.start_feeding(conn, run.run_id, lines=0, partitions=3)
    assert await store.run_progress(conn, run.run_id) == ("feeding", 3, 0)
    for p in (0, 1):
        await store.mark_partition_done(
            conn, run.run_id, p, lines_sent=0, lines_matched=0, complete=True, items=0, at=NOW
        )
        assert not await store.finish_if_complete(conn, run.run_id, NOW)
    assert await store.run_progress(conn, run.run_id) == ("feeding", 3, 2)
    await store.mark_partition_done(
        conn, run.run_id, 2, lines_sent=5, lines_matched=2, complete=False, items=0, at=NOW
    )
    assert await store.finish_if_complete(conn, run.run_id, NOW)
    report = await store.run_report(conn, run.run_id)
    assert report.spec.status == "incomplete" and report.incomplete_partitions == 1
    assert await store.run_progress(conn, run.run_id) == ("incomplete", 3, 3)
    with pytest.raises(store.RunNotFound):
        await store.run_progress(conn, str(uuid.uuid4()))
    # A replayed marker processed by a worker that saw everything completes it.
    await store.mark_partition_done(
        conn, run.run_id, 2, lines_sent=5, lines_matched=5, complete=True, items=0, at=NOW
    )
    assert not await store.finish_if_complete(conn, run.run_id, NOW + 1)
    report = await store.run_report(conn, run.run_id)
    assert report.spec.status == "finished" and report.incomplete_partitions == 0
    assert report.counts["matched"] == 0 and report.lines == 0


async def test_list_runs_newest_first_with_live_counts(conn: AsyncConnection[Any]) -> None:
    _, items = day_items()
    older = await record_run(conn, items, taken_at=NOW + 10 * HOUR)
    newer = await record_run(conn, items, taken_at=NOW + 11 * HOUR)
    page = await store.list_runs(conn, limit=1000)
    ids = [r.spec.run_id for r in page]
    assert ids.index(newer.run_id) < ids.index(older.run_id)
    listed = next(r for r in page if r.spec.run_id == newer.run_id)
    assert listed == await store.run_report(conn, newer.run_id)
    assert listed.partitions_done == 2 and listed.unresolved > 0
    assert len(await store.list_runs(conn, limit=1)) == 1


# ----------------------------------------------------------------------------- progress
async def finish(conn: AsyncConnection[Any], run: RunSpec, partitions: int) -> None:
    for p in range(partitions):
        await store.mark_partition_done(
            conn, run.run_id, p, lines_sent=1, lines_matched=1, complete=True, items=0, at=NOW
        )
    assert await store.finish_if_complete(conn, run.run_id, NOW + 1000)


async def test_progress_counts_matched_items_and_records_the_others(
    conn: AsyncConnection[Any],
) -> None:
    """The streaming agent's way: matched items only in the (run, partition) tally, the
    others as rows; the finished run shows what recording every item would."""
    day, items = day_items()
    expected = reconcile(day.states, day.lines, day.cfg).summary
    run = await new_run(conn)
    await store.start_feeding(conn, run.run_id, lines=len(items), partitions=2)
    groups = [store.Progress(run.run_id, p, -1) for p in range(2)]
    for offset, item in enumerate(items):
        group = groups[offset % 2]
        group.found.append((offset, item))
        group.through_offset = offset
    assert await store.record_progress(conn, groups, NOW) == len(items)
    await finish(conn, run, 2)
    report = await store.run_report(conn, run.run_id)
    assert report.counts == expected.counts and report.counts["matched"] > 0
    assert report.totals == store.totals_json(expected)
    assert report.discrepancies == report.new_discrepancies == expected.discrepancies
    recorded = await store.run_items(conn, run.run_id)
    assert sorted(map(store.item_key, recorded)) == sorted(
        store.item_key(i) for i in items if i.kind not in store.TALLIED_CLASSES
    )
    tally = await store.run_tally(conn, run.run_id)
    assert tally.counts == {"matched": expected.counts["matched"]}
    # The console's queue is the same as when every item is recorded.
    open_rows = await store.list_items(conn, run_id=run.run_id)
    assert {r.kind for r in open_rows} == {
        "missing_internal",
        "amount_mismatch",
        "missing_at_provider",
        "refund_mismatch",
    }


async def test_a_replayed_message_records_nothing_twice(conn: AsyncConnection[Any]) -> None:
    """A message at or before the partition's recorded offset adds nothing, even classified
    otherwise the second time (the state moved meanwhile); later ones add as usual."""
    _, items = day_items()
    matched = [i for i in items if i.kind == "matched"]
    odd = next(i for i in items if i.kind == "amount_mismatch")
    run = await new_run(conn)
    await store.start_feeding(conn, run.run_id, lines=len(matched) + 1, partitions=1)
    first = store.Progress(run.run_id, 0, 11, [(10, matched[0]), (11, matched[1])])
    assert await store.record_progress(conn, [first], NOW) == 2
    # Replayed from offset 10 by the partition's next owner, which also reads one more.
    replay = store.Progress(
        run.run_id,
        0,
        12,
        [(10, matched[0]), (11, msgspec.structs.replace(odd, provider_id="x")), (12, odd)],
    )
    assert await store.record_progress(conn, [replay], NOW) == 1
    assert await store.record_progress(conn, [replay], NOW) == 0  # and once more
    await finish(conn, run, 1)
    report = await store.run_report(conn, run.run_id)
    assert report.counts["matched"] == 2 and report.counts["amount_mismatch"] == 1
    assert sum(report.counts.values()) == 3
    assert [i.provider_id for i in await store.run_items(conn, run.run_id)] == [odd.provider_id]


async def test_concurrent_writers_of_one_partition_count_once(module_pg_dsn: str) -> None:
    """Two owners of a partition at once (a rebalance's overlap) with the same messages: the
    tally's row lock makes one of them record and the other find it done."""
    _, items = day_items()
    matched = [i for i in items if i.kind == "matched"]
    async with (
        await AsyncConnection.connect(module_pg_dsn, autocommit=True) as a,
        await AsyncConnection.connect(module_pg_dsn, autocommit=True) as b,
    ):
        run = await new_run(a)
        await store.start_feeding(a, run.run_id, lines=len(matched), partitions=1)
        found = list(enumerate(matched))
        progress = store.Progress(run.run_id, 0, len(found) - 1, found)
        counts = await asyncio.gather(
            store.record_progress(a, [progress], NOW), store.record_progress(b, [progress], NOW)
        )
        assert sorted(counts) == [0, len(matched)]
        assert (await store.run_tally(a, run.run_id)).counts == {"matched": len(matched)}


def test_a_tally_adds_to_a_summary() -> None:
    day, items = day_items()
    tally = store.Tally()
    for item in items:
        if item.kind in store.TALLIED_CLASSES:
            tally.add(item)
    rest = [i for i in items if i.kind not in store.TALLIED_CLASSES]
    assert (
        store.add_tally(summarize(rest), tally) == reconcile(day.states, day.lines, day.cfg).summary
    )
