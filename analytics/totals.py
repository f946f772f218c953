"""Invariant 6: the Kafka event log, PostgreSQL and ClickHouse give the same sums of money per
currency and day (succeeded payments gross, succeeded refunds).

Each source is read on its own terms: the log is every ``billing.events`` record, deduplicated
by event id (a replayed event is the same fact); PostgreSQL is the projection's audit trail
(``subscription_events``); ClickHouse is ``analytics.queries.totals_by_day`` (through the
history worker's web port, which owns the embedded store). Days are UTC.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

import httpx
import psycopg

from analytics.eventlog import event_log
from schemas.messages import DecodeError, PaymentSucceeded, RefundSucceeded, decode_event

Totals = dict[tuple[date, str], tuple[int, int]]  # (day, currency) -> (gross, refunds)


def _day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def _add(acc: dict[tuple[date, str], list[int]], day: date, cur: str, i: int, n: int) -> None:
    acc[(day, cur)][i] += n


def _freeze(acc: Mapping[tuple[date, str], list[int]]) -> Totals:
    return {k: (v[0], v[1]) for k, v in sorted(acc.items()) if v != [0, 0]}


async def from_event_log(bootstrap: str, timeout_s: float = 60) -> Totals:
    """Every billing.events record up to the log's current end, deduplicated by event id."""
    acc: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0, 0])
    seen: set[str] = set()
    async with event_log(bootstrap) as log, asyncio.timeout(timeout_s):
        async for values in log.batches():
            for value in values:
                try:
                    ev = decode_event(value)
                except DecodeError:
                    continue
                if ev.event_id in seen:
                    continue
                seen.add(ev.event_id)
                if isinstance(ev, PaymentSucceeded | RefundSucceeded):
                    column = 0 if isinstance(ev, PaymentSucceeded) else 1
                    _add(
                        acc,
                        _day(ev.occurred_at),
                        ev.amount.currency,
                        column,
                        ev.amount.amount_minor,
                    )
    return _freeze(acc)


def from_postgres(dsn: str) -> Totals:
    acc: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0, 0])
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT (occurred_at AT TIME ZONE 'UTC')::date, event_type,"
            " body->'amount'->>'currency', sum((body->'amount'->>'amount_minor')::bigint)"
            " FROM subscription_events"
            " WHERE event_type IN ('PaymentSucceeded', 'RefundSucceeded') GROUP BY 1, 2, 3"
        ).fetchall()
    for day, kind, cur, total in rows:
        _add(acc, day, cur, 0 if kind == "PaymentSucceeded" else 1, int(total))
    return _freeze(acc)


def from_history(history_url: str, from_ms: int, to_ms: int) -> Totals:
    resp = httpx.get(
        f"{history_url}/analytics/totals_by_day/",
        params={"from": from_ms, "to": to_ms},
        timeout=60,
    )
    resp.raise_for_status()
    rows: list[dict[str, Any]] = resp.json()
    acc: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        day = date.fromisoformat(str(r["day"]))
        _add(acc, day, r["currency"], 0, int(r["gross_minor"]))
        _add(acc, day, r["currency"], 1, int(r["refunds_minor"]))
    return _freeze(acc)


def differences(**sources: Totals) -> list[str]:
    """Human-readable differences between the sources (empty: they agree)."""
    keys = sorted({k for t in sources.values() for k in t})
    out = []
    for key in keys:
        values = {name: t.get(key, (0, 0)) for name, t in sources.items()}
        if len(set(values.values())) > 1:
            out.append(f"{key[0]} {key[1]}: {values}")
    return out
