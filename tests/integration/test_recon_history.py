"""Reconciliation results in ClickHouse: the history worker's copy from PostgreSQL
(streams/history/recon_copy.py) and the queries over it (analytics/recon.py), against a real
PostgreSQL and the embedded engine."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import AsyncConnection

from analytics import recon
from billing.clickhouse import ClickHouseClient, connect, embedded_dir
from reconciler import store
from schemas.money import Money
from schemas.recon_match import DISCREPANCY_CLASSES
from streams.history.recon_copy import sync_recon
from tests.integration.recon_support import NOW, W0, day_items, record_run

pytestmark = pytest.mark.integration


@pytest.fixture
async def conn(module_pg_dsn: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await AsyncConnection.connect(module_pg_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[ClickHouseClient]:
    client = connect(embedded_dir(tmp_path), database=f"t_{uuid.uuid4().hex[:12]}")
    yield client
    client.close()


def discrepancy_rows(ch: ClickHouseClient, run_id: str) -> dict[str, tuple[str, str]]:
    rows = ch.query(
        "SELECT discrepancy_id, argMax(class, version), argMax(status, version)"
        " FROM discrepancies WHERE run_id = {r:String} GROUP BY discrepancy_id",
        {"r": run_id},
    )
    return {str(k): (str(c), str(s)) for k, c, s in rows}


async def test_runs_totals_and_discrepancies_are_copied_once_and_follow_resolutions(
    conn: AsyncConnection[Any], ch: ClickHouseClient
) -> None:
    _, items = day_items()
    run = await record_run(conn, items)
    report = await store.run_report(conn, run.run_id)
    expected = Counter(i.kind for i in items if i.discrepancy)
    assert expected, "the day has discrepancies of several classes"

    newest = await sync_recon(conn, ch, 0)
    assert newest >= NOW
    again = await sync_recon(conn, ch, 0)  # a restarted worker copies everything again
    assert again == newest

    [row] = [r for r in recon.runs(ch, 1000) if r.run_id == run.run_id]
    assert row.status == "finished" and row.engine == "streaming"
    assert row.counts == report.counts and row.lines == report.lines
    assert row.discrepancies == report.discrepancies == sum(expected.values())
    totals = {
        (t.object, t.side, t.currency): t.amount_minor for t in recon.run_totals(ch, run.run_id)
    }
    for name, per_currency in report.totals.items():
        obj, _, side = name.partition("_")
        for currency, amount in per_currency.items():
            assert (
                totals[(obj, side, currency)] == Money.from_decimal(amount, currency).amount_minor
            )

    found = discrepancy_rows(ch, run.run_id)
    assert Counter(c for c, _ in found.values()) == expected
    listed = await store.list_items(conn, run_id=run.run_id, unresolved_only=False, limit=1000)
    keys = {i.item_key for i in listed}
    assert set(found) <= keys  # one row per recon_items key
    assert all(c in DISCREPANCY_CLASSES for c, _ in found.values())
    by_day = recon.discrepancies_by_day(ch, W0 - 86_400_000, NOW + 86_400_000)
    assert sum(d.items for d in by_day) >= sum(expected.values())

    # An admin decides an escalation: the next copy carries the new state, counted once.
    escalated = [
        i for i in await store.list_items(conn, run_id=run.run_id) if i.repair == "escalate"
    ]
    assert escalated
    target = escalated[0]
    await store.resolve(
        conn, target.item_key, resolution="write_off", actor="admin:t", note="n", at=NOW + 5000
    )
    await sync_recon(conn, ch, newest - 60_000)
    found = discrepancy_rows(ch, run.run_id)
    assert found[target.item_key][1] == "write_off"
    assert Counter(c for c, _ in found.values()) == expected
