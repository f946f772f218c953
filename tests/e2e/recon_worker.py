"""A billing worker with the reconcile agent registered on top of ``streams.app.create_app``,
as ``streams/app.py`` will once it registers it itself:

    python -m tests.e2e.recon_worker worker -l info

Settings from BILLING_* as for ``python -m streams``. ``RECON_WORKER_AGENTS`` (comma-separated,
default all of create_app's) picks the other agents, e.g. ``ledger`` alone for the agent's
integration test, where no gateway answers and the ledger keeps what the test tells it.
``RECON_WORKER_NIGHTLY=1`` keeps the nightly crontab (off by default in tests).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from billing.config import Settings
from streams.app import create_app
from streams.reconcile import register_reconciler
from streams.topics import declare


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level)
    chosen = [a for a in os.environ.get("RECON_WORKER_AGENTS", "").split(",") if a]
    kw: dict[str, Any] = {}
    if chosen:
        # "reconcile" too, for when create_app registers it itself (ignored until then)
        kw["agents"] = (*chosen, "reconcile")
    app = create_app(settings, **kw)
    if settings.postgres_dsn is None:
        raise SystemExit("BILLING_POSTGRES_DSN is required")
    if "reconcile" in app.agents:  # streams/app.py registers it itself now
        app.main()
        return
    register_reconciler(
        app,
        declare(app, settings.kafka_partitions),
        app.billing_ledger_table,
        settings,
        settings.postgres_dsn.get_secret_value(),
        nightly=os.environ.get("RECON_WORKER_NIGHTLY") == "1",
    )
    app.main()


if __name__ == "__main__":
    main()
