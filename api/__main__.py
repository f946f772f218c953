"""Run the API: ``python -m api`` (host, port and everything else from BILLING_* settings)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from api.main import create_app
from billing.config import ApiSettings


def main() -> None:
    settings = ApiSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.postgres_dsn is None:
        sys.exit("BILLING_POSTGRES_DSN is not set (the local stack sets it for its children)")
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,  # X-Forwarded-For is honoured only where the settings say so
    )


if __name__ == "__main__":
    main()
