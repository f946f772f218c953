"""The baseline of ``bench.api_intake``: a bare FastAPI app whose POST inserts one row with
psycopg (one pooled connection, one INSERT, no auth, no idempotency, no outbox, no Kafka),
served like the API (uvicorn, ``BENCH_BARE_WORKERS`` processes). What the real intake costs
above it is ours to answer for.

Run by the benchmark as ``uvicorn bench.bare_intake:app`` with ``BENCH_BARE_DSN`` set.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel


class Body(BaseModel):
    plan_id: str
    return_url: str


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        os.environ["BENCH_BARE_DSN"],
        min_size=1,
        max_size=10,
        open=False,
        kwargs={"autocommit": True},
    )
    await pool.open()
    async with pool.connection() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_bare (id bigserial PRIMARY KEY, body jsonb)"
        )
    app.state.pool = pool
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


@app.post("/bare", status_code=202)
async def bare(body: Body) -> dict[str, str]:
    async with app.state.pool.connection() as conn:
        await conn.execute("INSERT INTO bench_bare (body) VALUES (%s)", (Jsonb(body.model_dump()),))
    return {"status": "accepted"}
