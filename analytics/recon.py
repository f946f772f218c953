"""Reconciliation history in ClickHouse: runs, their totals, and discrepancies over time.

The rows are copied from PostgreSQL by the history worker (streams/history/recon_copy.py), one row
per state of a run or a discrepancy with a version; a query takes each one's latest state
(``argMax(…, version)``), so a row copied twice, or not yet merged, never counts twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from billing.clickhouse import ClickHouse

RUNS = """
SELECT run_id, argMax(engine, version) AS engine, argMax(source, version) AS source,
       argMax(status, version) AS status,
       toUnixTimestamp64Milli(argMax(window_start, version)) AS window_start,
       toUnixTimestamp64Milli(argMax(window_end, version)) AS window_end,
       toUnixTimestamp64Milli(argMax(started_at, version)) AS started_at,
       argMax(duration_ms, version) AS duration_ms, argMax(lines, version) AS lines,
       argMax(counts, version) AS counts, argMax(discrepancies, version) AS discrepancies,
       argMax(new_discrepancies, version) AS new_discrepancies
FROM recon_runs
GROUP BY run_id
ORDER BY started_at DESC, run_id
LIMIT {limit:UInt32}
"""

RUN_TOTALS = """
SELECT object, side, currency, argMax(amount_minor, version) AS amount_minor
FROM recon_run_totals
WHERE run_id = {run_id:String}
GROUP BY object, side, currency
ORDER BY object, side, currency
"""

# Discrepancies found per day (by when first found), class and current status.
DISCREPANCIES_BY_DAY = """
SELECT toDate(detected) AS day, class, status, count() AS items
FROM (
    SELECT discrepancy_id, argMax(class, version) AS class, argMax(status, version) AS status,
           min(detected_at) AS detected
    FROM discrepancies
    GROUP BY discrepancy_id
)
WHERE detected >= fromUnixTimestamp64Milli({from_ms:Int64}, 'UTC')
  AND detected < fromUnixTimestamp64Milli({to_ms:Int64}, 'UTC')
GROUP BY day, class, status
ORDER BY day, class, status
"""


@dataclass(frozen=True)
class RunRow:
    run_id: str
    engine: str
    source: str
    status: str
    window_start: int
    window_end: int
    started_at: int
    duration_ms: int | None
    lines: int
    counts: dict[str, int]
    discrepancies: int
    new_discrepancies: int


@dataclass(frozen=True)
class RunTotal:
    object: str  # payments | refunds
    side: str  # ours | theirs
    currency: str
    amount_minor: int


@dataclass(frozen=True)
class DiscrepancyDay:
    day: str
    kind: str  # the class
    status: str  # open | repaired | accept_provider | accept_ours | write_off
    items: int


def runs(ch: ClickHouse, limit: int = 50) -> list[RunRow]:
    return [
        RunRow(
            run_id=str(r[0]),
            engine=str(r[1]),
            source=str(r[2]),
            status=str(r[3]),
            window_start=int(r[4]),
            window_end=int(r[5]),
            started_at=int(r[6]),
            duration_ms=int(r[7]) if r[7] is not None else None,
            lines=int(r[8]),
            counts={str(k): int(v) for k, v in dict(r[9]).items()},
            discrepancies=int(r[10]),
            new_discrepancies=int(r[11]),
        )
        for r in ch.query(RUNS, {"limit": limit})
    ]


def run_totals(ch: ClickHouse, run_id: str) -> list[RunTotal]:
    return [
        RunTotal(object=str(o), side=str(s), currency=str(c), amount_minor=int(a))
        for o, s, c, a in ch.query(RUN_TOTALS, {"run_id": run_id})
    ]


def discrepancies_by_day(ch: ClickHouse, from_ms: int, to_ms: int) -> list[DiscrepancyDay]:
    params: dict[str, Any] = {"from_ms": from_ms, "to_ms": to_ms}
    return [
        DiscrepancyDay(day=str(d), kind=str(c), status=str(s), items=int(n))
        for d, c, s, n in ch.query(DISCREPANCIES_BY_DAY, params)
    ]
