"""The billing worker with only the ledger agent: ``python -m bench.ledger_worker``.

The same app as ``python -m streams worker`` (``streams.app.create_app``, faust_fix applied,
settings from BILLING_* env) but ``agents=("ledger",)``: no gateway, no projection, so the
transport benchmark measures the ledger's path alone (decode, table get, decide, table set,
emit).
"""

from __future__ import annotations

import logging
import sys

from billing.config import Settings
from streams.app import create_app


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level)
    app = create_app(settings, agents=("ledger",))
    sys.argv = [sys.argv[0], "worker", "-l", "info"]
    app.main()


if __name__ == "__main__":
    main()
