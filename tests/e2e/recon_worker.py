"""A billing worker with a chosen set of agents, for the reconcile agent's integration test:

    RECON_WORKER_AGENTS=ledger python -m tests.e2e.recon_worker worker -l info

``streams.app.create_app`` with the agents named in ``RECON_WORKER_AGENTS`` (comma-separated;
default all of create_app's) plus ``reconcile``: e.g. the ledger and the reconcile agent
alone, with no gateway answering, so the ledger keeps exactly what the test tells it. Settings
from BILLING_* as for ``python -m streams``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from billing.config import Settings
from streams.app import create_app


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level)
    chosen = [a for a in os.environ.get("RECON_WORKER_AGENTS", "").split(",") if a]
    kw: dict[str, Any] = {"agents": (*chosen, "reconcile")} if chosen else {}
    app = create_app(settings, **kw)
    if "reconcile" not in app.agents:
        raise SystemExit("create_app did not register the reconcile agent")
    app.main()


if __name__ == "__main__":
    main()
