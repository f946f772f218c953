"""The whole local stack in one command: ``python -m billing.stack run`` (``make run``).

Starts, in order: a single-node Apache Kafka (KRaft) from release jars fetched with Maven, the
billing topics, an embedded PostgreSQL (migrated), the YooKassa emulator (unless real shop
credentials and BILLING_YOOKASSA_API_URL are set), the Faust worker, the history worker
(ClickHouse, embedded chdb), the API and the admin console (Streamlit). Prints the
URLs, and on Ctrl-C stops everything in reverse order. State lives under BILLING_STATE_DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from billing.config import Settings
from billing.processes import ManagedProcess, http_ok, log_contains


def _child_env(settings: Settings, dsn: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BILLING_POSTGRES_DSN=dsn,
        BILLING_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        BILLING_STATE_DIR=str(settings.state_dir.resolve()),
        BILLING_YOOKASSA_API_URL=settings.provider_api_url,
        PYTHONUNBUFFERED="1",
    )
    return env


def _console_credentials(settings: Settings, state: Path, env: dict[str, str]) -> str:
    """The console's admin login: the configured hash, or a password generated once into
    ``.state/console-password`` (mode 0600) for the local stack. Never printed."""
    if settings.dashboard_admin_password_hash is not None:
        return f"user {settings.dashboard_admin_user}, password as configured"
    from billing.passwords import hash_password

    path = state / "console-password"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(18))
    env["BILLING_DASHBOARD_ADMIN_PASSWORD_HASH"] = hash_password(path.read_text().strip())
    return f"user {settings.dashboard_admin_user}, password in {path}"


def run(settings: Settings) -> None:
    from billing.kafka_local import KafkaBroker, ensure_topics, fetch_kafka_jars
    from billing.pg_local import start_postgres

    state = settings.state_dir.resolve()
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    _host, port = settings.kafka_bootstrap.rsplit(":", 1)
    children: list[ManagedProcess] = []
    broker = None
    pg = None
    try:
        print("fetching Kafka jars (cached after the first run)...", flush=True)
        jars = fetch_kafka_jars(settings.kafka_version)
        broker = KafkaBroker(state / "kafka", int(port), int(port) + 1, jars)
        broker.start()
        asyncio.run(ensure_topics(settings.kafka_bootstrap, settings.kafka_partitions))
        print(f"kafka      {settings.kafka_bootstrap}", flush=True)

        if settings.postgres_dsn is not None:
            dsn = settings.postgres_dsn.get_secret_value()
            from schemas.pg import migrate

            migrate(dsn)
        else:
            pg = start_postgres(state / "pg")
            dsn = pg.dsn
        print("postgres   ready (migrated)", flush=True)

        env = _child_env(settings, dsn)
        console_note = _console_credentials(settings, state, env)
        if not settings.yookassa_api_url:
            emulator = ManagedProcess.python(
                "emulator", ["providers.emulator"], log_path=logs / "emulator.log", env=env
            )
            emulator.start()
            children.append(emulator)
            emulator.wait_ready(
                http_ok(
                    f"http://{settings.emulator_host}:{settings.emulator_port}/__emulator/health"
                )
            )
            print(f"emulator   {settings.provider_api_url}", flush=True)

        worker = ManagedProcess.python(
            "worker", ["streams", "worker", "-l", "info"], log_path=logs / "worker.log", env=env
        )
        worker.start()
        children.append(worker)
        history = ManagedProcess.python(
            "history",
            ["streams.history", "worker", "-l", "info"],
            log_path=logs / "history.log",
            env=env,
        )
        history.start()
        children.append(history)
        api = ManagedProcess.python("api", ["api"], log_path=logs / "api.log", env=env)
        api.start()
        children.append(api)
        api.wait_ready(http_ok(f"http://{settings.api_host}:{settings.api_port}/healthz"))
        worker.wait_ready(log_contains(logs / "worker.log", "Ready"), timeout=120)
        history.wait_ready(log_contains(logs / "history.log", "Ready"), timeout=120)
        print(f"history    {settings.history_url}/analytics/overview/ (ClickHouse)", flush=True)
        base = f"http://{settings.api_host}:{settings.api_port}"
        console = ManagedProcess.python(
            "console",
            ["dashboard"],
            log_path=logs / "console.log",
            env=dict(env, BILLING_DASHBOARD_API_URL=base),
        )
        console.start()
        children.append(console)
        console.wait_ready(
            http_ok(f"http://{settings.dashboard_host}:{settings.dashboard_port}/_stcore/health"),
            timeout=120,
        )
        print(
            f"console    http://{settings.dashboard_host}:{settings.dashboard_port}"
            f"  ({console_note})",
            flush=True,
        )

        base = f"http://{settings.api_host}:{settings.api_port}"
        print(
            f"\napi        {base}  (OpenAPI: {base}/docs)\n"
            f"logs       {logs}\n"
            f"dev token  .venv/bin/billing token --user alice\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while not stopping:
            for child in children:
                if not child.running:
                    print(f"{child.name} exited; see {child.log_path}", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
    finally:
        print("\nstopping...", flush=True)
        for child in reversed(children):
            child.stop()
        if pg is not None:
            with contextlib.suppress(Exception):
                pg.stop()
        if broker is not None:
            broker.stop()
        print("stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m billing.stack", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="start the whole local stack (Ctrl-C stops it)")
    sub.add_parser("fetch-kafka", help="download the Kafka broker jars into the cache")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.cmd == "fetch-kafka":
        from billing.kafka_local import fetch_kafka_jars

        print(f"kafka jars: {fetch_kafka_jars(settings.kafka_version)}")
    else:
        run(settings)


if __name__ == "__main__":
    main()
