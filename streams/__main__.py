"""Run a Faust worker: ``python -m streams worker -l info`` (settings from BILLING_* env)."""

from __future__ import annotations

import logging

from billing.config import WorkerSettings
from streams.app import create_app


def main() -> None:
    settings = WorkerSettings()
    logging.basicConfig(level=settings.log_level)
    app = create_app(settings)
    app.main()


if __name__ == "__main__":
    main()
