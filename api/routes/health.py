"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from api.deps import PoolDep
from api.errors import ServiceUnavailable

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (no dependency checked)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(pool: PoolDep) -> dict[str, str]:
    """Ready to serve: the database answers. Kafka is not required: intake only needs the
    database, and the relay publishes once the broker is back."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with pool.connection(timeout=READY_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
    except Exception as exc:
        raise ServiceUnavailable("the database is not reachable", code="not_ready") from exc
    return {"status": "ready", "database": "ok"}
