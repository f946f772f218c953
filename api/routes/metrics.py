"""``GET /metrics``: the process's Prometheus metrics (text format), for the scraper.

Not in the OpenAPI document (it is for Prometheus, not clients) and without credentials, like
``/healthz``: it holds counts and ages, never an id, a user or a secret; expose the port to
the monitoring network only. With several API worker processes (``BILLING_API_WORKERS``)
``python -m api`` sets ``PROMETHEUS_MULTIPROC_DIR`` and any worker answers for all of them.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from billing import metrics

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(metrics.exposition(registry), media_type=metrics.CONTENT_TYPE_LATEST)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE_LATEST)
