"""The whole local stack in one command: ``python -m billing.stack run`` (``make run``).

Starts, in order: a single-node Apache Kafka (KRaft) from release jars fetched with Maven, the
billing topics, an embedded PostgreSQL (migrated), the YooKassa emulator (unless real shop
credentials and BILLING_YOOKASSA_API_URL are set), the Faust worker, the history worker
(ClickHouse, embedded chdb), the retention job (``billing maintain``), the API and the admin
console (Streamlit). Prints the
URLs, and on Ctrl-C stops everything in reverse order. State lives under BILLING_STATE_DIR.

While it runs, the settings it gave its children (secrets aside) are in
``BILLING_STATE_DIR/stack.env``: the operator CLI (``billing reconcile``, ``billing token``,
``billing rebuild-history``, ``billing demo``) reads it for whatever its environment leaves
unset (``billing.processes.load_stack_env``). It is removed on stop.
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
from billing.processes import STACK_ENV, ManagedProcess, http_ok, write_stack_env


def _child_env(settings: Settings, dsn: str) -> dict[str, str]:
    env = dict(os.environ)
    state = settings.state_dir.resolve()
    api = f"http://{settings.api_host}:{settings.api_port}"
    env.update(
        BILLING_POSTGRES_DSN=dsn,
        BILLING_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        BILLING_KAFKA_PARTITIONS=str(settings.kafka_partitions),
        BILLING_STATE_DIR=str(state),
        BILLING_YOOKASSA_API_URL=settings.provider_api_url,
        BILLING_API_HOST=settings.api_host,
        BILLING_API_PORT=str(settings.api_port),
        BILLING_HISTORY_URL=settings.history_url,
        PYTHONUNBUFFERED="1",
    )
    # The emulator notifies the API it runs beside, and keeps its objects across restarts.
    env.setdefault("BILLING_PUBLIC_BASE_URL", api)
    # One clock file for every process of the local stack (billing.clock): ``billing demo``
    # moves it forward (with the emulator's clock) to play months of renewals in minutes.
    # It stays under the state directory, so a restarted stack keeps the same "now".
    env.setdefault("BILLING_CLOCK_FILE", str(state / "clock"))
    if not settings.yookassa_api_url:
        env.setdefault("BILLING_EMULATOR_STATE_PATH", str(state / "emulator" / "objects.json"))
    return env


def _shown(path: Path) -> str:
    """A path as the operator typed it: relative to the working directory when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
    from billing.kafka_client import init_topics
    from billing.kafka_local import KafkaBroker, fetch_kafka_jars
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
        asyncio.run(init_topics(settings))
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
        write_stack_env(state, env)
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
        # Retention on one leader (an advisory lock): its own process, so long deletes stay
        # off the API's and the workers' loops, and replicas may run it side by side.
        maintenance = ManagedProcess.python(
            "maintenance", ["billing.cli", "maintain"], log_path=logs / "maintenance.log", env=env
        )
        maintenance.start()
        children.append(maintenance)
        api = ManagedProcess.python("api", ["api"], log_path=logs / "api.log", env=env)
        api.start()
        children.append(api)
        api.wait_ready(http_ok(f"http://{settings.api_host}:{settings.api_port}/healthz"))
        # This run's output only: the logs are appended to across runs.
        worker.wait_ready(worker.output_contains("Ready"), timeout=120)
        history.wait_ready(history.output_contains("Ready"), timeout=120)
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

        print(
            f"api        {base}  (OpenAPI: {base}/docs)\n"
            f"logs       {_shown(logs)}  (kafka: {_shown(broker.log_path)})\n"
            f"settings   {_shown(state / STACK_ENV)}  (read by .venv/bin/billing)\n"
            "dev token  .venv/bin/billing token --user alice\n"
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
        (state / STACK_ENV).unlink(missing_ok=True)
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
    sub.add_parser("fetch-keycloak", help="download Keycloak (the SSO tests) into the cache")
    args = parser.parse_args(argv)
    # The local stack is dev by definition (settings fail closed when BILLING_ENV is unset);
    # its children inherit this.
    os.environ.setdefault("BILLING_ENV", "dev")
    settings = Settings()
    if args.cmd == "fetch-kafka":
        from billing.kafka_local import fetch_kafka_jars

        print(f"kafka jars: {fetch_kafka_jars(settings.kafka_version)}")
    elif args.cmd == "fetch-keycloak":
        from billing.keycloak_local import fetch_keycloak

        print(f"keycloak: {fetch_keycloak()}")
    else:
        run(settings)


if __name__ == "__main__":
    main()
