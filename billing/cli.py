"""Operator CLI: ``billing token``, ``billing migrate``, ``billing init-topics``,
``billing reconcile --from … --to …`` (see ``billing reconcile --help``),
``billing rebuild-history``.

Settings (``CliSettings``) come from BILLING_* environment variables, as for every process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from billing.config import CliSettings


def _dsn(settings: CliSettings) -> str:
    if settings.postgres_dsn is None:
        sys.exit("BILLING_POSTGRES_DSN is not set (the local stack sets it for its children)")
    return settings.postgres_dsn.get_secret_value()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reconcile"]:
        from reconciler.cli import main as reconcile

        sys.exit(reconcile(argv[1:], prog="billing reconcile"))
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
    elif args.cmd == "rebuild-history":
        from analytics.rebuild import main as rebuild

        rebuild()
    elif args.cmd == "init-topics":
        from billing.kafka_local import ensure_topics

        asyncio.run(ensure_topics(settings.kafka_bootstrap, settings.kafka_partitions))
        print(f"topics ready ({settings.kafka_partitions} partitions)")


if __name__ == "__main__":
    main()
