"""Operator CLI: ``billing token``, ``billing migrate``, ``billing init-topics``,
``billing reconcile --from … --to …`` (see ``billing reconcile --help``),
``billing rebuild-history``, ``billing maintain`` (retention, on one leader), ``billing demo``
(months of traffic played into the running local stack).

Settings (``CliSettings``) come from BILLING_* environment variables, as for every process;
a variable left unset is taken from the running local stack's ``.state/stack.env`` (under
``BILLING_STATE_DIR``), so the commands work as written beside ``make run``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from billing.config import CliSettings
from billing.processes import load_stack_env


def _dsn(settings: CliSettings) -> str:
    if settings.postgres_dsn is None:
        sys.exit(
            "BILLING_POSTGRES_DSN is not set and no local stack is running"
            " (start it with `make run`, or set BILLING_* for your deployment)"
        )
    return settings.postgres_dsn.get_secret_value()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    load_stack_env()
    if argv[:1] == ["reconcile"]:
        from reconciler.cli import main as reconcile

        sys.exit(reconcile(argv[1:], prog="billing reconcile"))
    if argv[:1] == ["demo"]:
        from billing.demo import main as demo

        sys.exit(demo(argv[1:]))
    parser = argparse.ArgumentParser(prog="billing", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    tok = sub.add_parser("token", help="mint a development JWT for a user (or an admin)")
    tok.add_argument("--user", required=True, help="user id (the token's sub)")
    tok.add_argument("--admin", action="store_true", help="add the admin role")
    tok.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    sub.add_parser("migrate", help="upgrade PostgreSQL to the latest schema")
    sub.add_parser("init-topics", help="create the billing topics (partition count from settings)")
    sub.add_parser("reconcile", help="reconcile a window against the provider's report")
    sub.add_parser(
        "demo",
        help="fill the running local stack with a few months of traffic (billing demo --help)",
    )
    maintain = sub.add_parser(
        "maintain",
        help="on one leader, every BILLING_MAINTENANCE_INTERVAL_S: retention (expired"
        " idempotency keys, closed outbox rows, event partitions; billing/maintenance.py) and"
        " the reconciliation watchdog (reconciler/watchdog.py)",
    )
    maintain.add_argument("--once", action="store_true", help="one round, then exit")
    sub.add_parser(
        "rebuild-history",
        help="write the whole billing.events log into ClickHouse again (idempotent; stop the"
        " history worker first when the store is embedded)",
    )
    args = parser.parse_args(argv)
    settings = CliSettings()

    if args.cmd == "token":
        from api.auth import mint_token

        roles = ("admin",) if args.admin else ()
        print(mint_token(settings, args.user, roles=roles, ttl_s=args.ttl))
    elif args.cmd == "migrate":
        from schemas.pg import migrate

        migrate(_dsn(settings))
        print("migrated to head")
    elif args.cmd == "maintain":
        import logging
        import logging.config
        import signal
        import threading

        from billing import logs
        from billing.config import ReconcileSettings
        from billing.maintenance import RetentionPolicy, run_forever

        recon = ReconcileSettings()  # the watchdog's re-runs: Kafka and provider settings
        # JSON lines like every process, secrets of both settings masked
        logging.config.dictConfig(
            logs.dict_config(
                process="maintenance",
                level=settings.log_level,
                fmt=str(getattr(settings, "log_format", "json")),
                secrets=[*logs.secrets_of(settings), *logs.secrets_of(recon)],
            )
        )
        policy = RetentionPolicy(
            idempotency_key_ttl_s=settings.idempotency_key_ttl_s,
            outbox_closed_retention_s=settings.outbox_closed_retention_s,
            events_retention_months=settings.events_retention_months,
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        logging.getLogger("billing.maintain").info(
            "maintenance: every %ss on the leader", settings.maintenance_interval_s
        )
        from reconciler.watchdog import watch_once

        run_forever(
            _dsn(settings),
            policy,
            settings.maintenance_interval_s,
            once=args.once,
            stop=stop,
            also=lambda: watch_once(recon),
        )
    elif args.cmd == "rebuild-history":
        from analytics.rebuild import main as rebuild

        rebuild()
    elif args.cmd == "init-topics":
        from billing.kafka_client import init_topics

        asyncio.run(init_topics(settings))
        print(f"topics ready ({settings.kafka_partitions} partitions)")


if __name__ == "__main__":
    main()
