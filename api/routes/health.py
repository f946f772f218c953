"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from api.deps import PoolDep
from api.errors import ServiceUnavailable
from billing import metrics

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (no dependency checked)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(pool: PoolDep, request: Request) -> dict[str, str]:
    """Ready to serve: the database answers. Kafka is not required: intake only needs the
    database, and the relay publishes once the broker is back; ``broker`` says whether it
    answered the last check (``unknown`` before the first), for people, not for routing."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with pool.connection(timeout=READY_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
    except Exception as exc:
        metrics.PROCESS_READY.set(0)
        raise ServiceUnavailable("the database is not reachable", code="not_ready") from exc
    metrics.PROCESS_READY.set(1)
    broker = getattr(request.app.state, "broker_ok", None)
    seen = "unknown" if broker is None else "ok" if broker else "unreachable"
    return {"status": "ready", "database": "ok", "broker": seen}
