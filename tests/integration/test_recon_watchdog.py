"""The reconciliation watchdog (issue 15): a day whose nightly run failed, ended incomplete
or stayed ``feeding`` past the stale limit (its leader died mid-feed) is re-run under a new
schedule key, with backoff; a day with a complete run is left alone; a day the crontab never
ran is started (a gap, or yesterday after its night); ``last_complete_runs`` reports when
each day last finished. With real processes (a leader SIGKILLed mid-feed):
tests/e2e/test_recon_watchdog_kill.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from psycopg import AsyncConnection

from reconciler import store
from reconciler.watchdog import (
    DayRuns,
    WatchdogPolicy,
    due,
    last_complete_runs,
    missing_days,
    watch,
)

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
POLICY = WatchdogPolicy(stale_s=3600, backoff_base_s=300, max_attempts=3, lookback_days=7)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@pytest.fixture
async def conn(module_pg_dsn: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await AsyncConnection.connect(module_pg_dsn, autocommit=True) as c:
        await c.execute("DELETE FROM recon_runs")
        yield c


async def _run(
    conn: AsyncConnection[Any], day: date, started: datetime, status: str, key: str = ""
) -> str:
    run_id = str(uuid.uuid4())
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    await store.create_run(
        conn,
        run_id=run_id,
        window_start=_ms(start),
        window_end=_ms(start + timedelta(days=1)),
        source="provider_api",
        taken_at=_ms(started),
        trigger="nightly",
        schedule_key=key or f"nightly:{day.isoformat()}",
    )
    if status == "failed":
        await store.fail_run(conn, run_id, "broker down", _ms(started))
    elif status != "feeding":
        await conn.execute(
            "UPDATE recon_runs SET status = %s, finished_at = %s WHERE run_id = %s",
            (status, started + timedelta(minutes=5), run_id),
        )
    return run_id


async def test_failed_stuck_and_incomplete_days_are_rerun_with_backoff(
    conn: AsyncConnection[Any],
) -> None:
    d1, d2, d3, d4 = (date(2026, 12, d) for d in (1, 2, 3, 4))
    await _run(conn, d1, NOW - timedelta(hours=30), "finished")
    stuck = await _run(conn, d2, NOW - timedelta(hours=2), "feeding")  # leader killed mid-feed
    await _run(conn, d3, NOW - timedelta(hours=1), "incomplete")
    await _run(conn, d4, NOW - timedelta(minutes=2), "failed")  # backoff not over yet
    reran: list[DayRuns] = []
    clock = [NOW]

    async def rerun(runs: DayRuns) -> None:
        reran.append(runs)
        status = "finished" if runs.day == d2 else "failed"
        await _run(conn, runs.day, clock[0], status, runs.retry_key)

    async def round_at(at: datetime) -> list[date]:
        clock[0] = at
        return await watch(conn, at, POLICY, rerun, fill_missing=False)

    assert await round_at(NOW) == [d2, d3]
    assert [r.retry_key for r in reran] == [
        "nightly:2026-12-02:retry:1",
        "nightly:2026-12-03:retry:1",
    ]
    assert (await store.run_report(conn, stuck)).spec.status == "failed"

    # Next round at once: d2 is complete, d3's re-run failed just now (backoff 300 s doubles),
    # d4's backoff is over.
    reran.clear()
    assert await round_at(NOW + timedelta(minutes=4)) == [d4]
    assert await round_at(NOW + timedelta(minutes=11)) == [d3]
    assert reran[-1].retry_key == "nightly:2026-12-03:retry:2"
    # d3 used up its attempts (3): no more re-runs, the alert on the metric takes over.
    assert await round_at(NOW + timedelta(days=1)) == [d4]
    assert await round_at(NOW + timedelta(days=2)) == []

    complete = await last_complete_runs(conn, date(2026, 11, 28))
    assert set(complete) == {d1, d2}


def test_a_live_run_is_not_rerun_before_it_is_stale() -> None:
    started = NOW - timedelta(minutes=30)
    runs = DayRuns(date(2026, 12, 4), 1, False, "r", "matching", started, NOW, NOW)
    assert not due(runs, NOW, POLICY)
    assert due(runs, started + timedelta(hours=1), POLICY)


def test_missing_days_are_gaps_and_a_missed_last_night() -> None:
    d = [date(2026, 12, n) for n in range(1, 8)]
    ran = {d[0]: True, d[2]: True, d[3]: False}  # the 4th was run by the watchdog
    assert missing_days(ran, d[3], True) == [d[1]]  # yesterday ran
    assert missing_days(ran, d[4], False) == [d[1]]  # the 5th's night is not over
    assert missing_days({d[0]: True, d[3]: True}, d[4], True) == [d[1], d[2], d[4]]
    # the crontab did not run the day before: the nightly run is off, no chain is filled
    assert missing_days(ran, d[4], True) == [d[1]]
    assert missing_days({}, d[4], True) == []  # a new deployment is never backfilled


async def test_a_day_the_crontab_never_ran_is_started(conn: AsyncConnection[Any]) -> None:
    moscow = ZoneInfo("Europe/Moscow")
    d1, d2, d3, d4 = (date(2026, 12, n) for n in (1, 2, 3, 4))
    await _run(conn, d1, NOW - timedelta(days=4), "finished")
    await _run(conn, d3, NOW - timedelta(days=2), "finished")  # d2: the leader was down
    started: list[DayRuns] = []

    async def rerun(runs: DayRuns) -> None:
        started.append(runs)
        await _run(conn, runs.day, NOW, "finished", runs.retry_key)

    # 05:00 in Moscow on the 5th: d4's night (03:30) may still be running: only the gap.
    early = datetime(2026, 12, 5, 5, 0, tzinfo=moscow)
    assert await watch(conn, early, POLICY, rerun, tz=moscow) == [d2]
    assert started[0].retry_key == "nightly:2026-12-02"
    assert started[0].window_start == datetime(2026, 12, 2, tzinfo=moscow)
    assert started[0].window_end == datetime(2026, 12, 3, tzinfo=moscow)
    # 07:00: yesterday has no run: started; a round later nothing is missing any more.
    late = datetime(2026, 12, 5, 7, 0, tzinfo=moscow)
    assert await watch(conn, late, POLICY, rerun, tz=moscow) == [d4]
    assert await watch(conn, late, POLICY, rerun, tz=moscow) == []
    assert set(await last_complete_runs(conn, d1)) == {d1, d2, d3, d4}
