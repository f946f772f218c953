"""Run the API: ``python -m api`` (host, port and everything else from BILLING_* settings).

``BILLING_API_WORKERS`` > 1 runs that many processes on the one port (uvicorn's workers: each
imports :func:`app_from_env` and builds its own app, pool, producer and relay; the relays
share the outbox through ``FOR UPDATE SKIP LOCKED``). One process uses one core at most.
"""

from __future__ import annotations

import os
import shutil
import sys

import uvicorn
from fastapi import FastAPI

from api.main import create_app
from billing import logs
from billing.config import ApiSettings
from billing.kafka_client import exit_on_topic_mismatch


def _logging(settings: ApiSettings) -> None:
    logs.configure(settings, "api")


def _metrics_dir(settings: ApiSettings) -> None:
    """Several workers: prometheus-client's multiprocess mode (each process writes its
    metrics to files there, /metrics of any of them sums them up). Set before the workers
    import prometheus_client; emptied at start so a dead run's counters do not count."""
    path = settings.state_dir.resolve() / f"prometheus-api-{settings.api_port}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def app_from_env() -> FastAPI:
    """The app of one worker process, from its environment (uvicorn's factory)."""
    settings = ApiSettings()
    _logging(settings)
    return create_app(settings)


def main() -> None:
    settings = ApiSettings()
    _logging(settings)
    if settings.postgres_dsn is None:
        sys.exit("BILLING_POSTGRES_DSN is not set (the local stack sets it for its children)")
    exit_on_topic_mismatch(settings, "the API")
    # Several workers: each process imports the factory and builds its own app.
    if settings.api_workers > 1:
        _metrics_dir(settings)
    app: str | FastAPI = (
        "api.__main__:app_from_env" if settings.api_workers > 1 else create_app(settings)
    )
    uvicorn.run(
        app,
        factory=settings.api_workers > 1,
        workers=settings.api_workers,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # ours (billing.logs): uvicorn's loggers propagate to it
        proxy_headers=False,  # X-Forwarded-For is honoured only where the settings say so
        access_log=False,  # a line per request costs more CPU than the request itself
    )


if __name__ == "__main__":
    main()
