"""The ledger timer's price book read from PostgreSQL (``plan_prices`` joined to ``plans``):
the I/O edge of ``streams/ledger/prices.py``, which stays pure."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from streams.ledger.prices import PriceBook

_MIN_MS = -(2**62)

_QUERY = """
SELECT pp.plan_id, pp.version,
       CASE WHEN pp.effective_from = '-infinity' THEN NULL
            ELSE (extract(epoch FROM pp.effective_from) * 1000)::bigint END,
       pp.amount_minor, pp.currency, p.period_months
FROM plan_prices pp JOIN plans p USING (plan_id)
"""


async def load_price_book(dsn: str) -> PriceBook:
    """Every price version of every plan; one in force since the beginning (effective_from
    -infinity) is dated at the smallest instant."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(_QUERY)
        rows: list[Any] = await cur.fetchall()
    book = PriceBook.of(
        (r[0], r[1], _MIN_MS if r[2] is None else r[2], r[3], r[4], r[5]) for r in rows
    )
    book.loaded_at = time.monotonic()
    return book
