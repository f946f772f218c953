"""The API's gauge of reconciliation days without a complete run (issue 15), read from
PostgreSQL's ``recon_runs`` by ``api.gauges.refresh_database``: a failed day between complete
ones shows as 1 (the latest finished window's end, the older gauge, cannot see it) and goes
back to 0 once a re-run of that day finishes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from psycopg_pool import AsyncConnectionPool

from api.gauges import refresh_database
from reconciler import store

pytestmark = pytest.mark.integration

GAUGE = "billing_recon_days_without_complete_run"


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@pytest.fixture
async def pool(module_pg_dsn: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(
        module_pg_dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    ) as p:
        async with p.connection() as conn:
            await conn.execute("DELETE FROM recon_runs")
        yield p


async def _run(pool: AsyncConnectionPool[Any], day: date, status: str, key: str = "") -> None:
    run_id = str(uuid.uuid4())
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    now = datetime.now(UTC)
    async with pool.connection() as conn:
        await store.create_run(
            conn,
            run_id=run_id,
            window_start=_ms(start),
            window_end=_ms(start + timedelta(days=1)),
            source="provider_api",
            taken_at=_ms(now),
            trigger="nightly" if not key else "watchdog",
            schedule_key=key or f"nightly:{day.isoformat()}",
        )
        if status == "failed":
            await store.fail_run(conn, run_id, "provider down", _ms(now))
        else:
            await conn.execute(
                "UPDATE recon_runs SET status = %s, finished_at = now() WHERE run_id = %s",
                (status, run_id),
            )


async def test_a_failed_day_between_complete_ones_is_counted_until_rerun(
    pool: AsyncConnectionPool[Any],
) -> None:
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=n) for n in (4, 3, 2, 1)]
    for day in days:
        await _run(pool, day, "failed" if day == days[1] else "finished")
    await refresh_database(pool, tz=UTC)
    assert REGISTRY.get_sample_value(GAUGE) == 1
    await _run(pool, days[1], "finished", key=f"nightly:{days[1].isoformat()}:retry:1")
    await refresh_database(pool, tz=UTC)
    assert REGISTRY.get_sample_value(GAUGE) == 0
