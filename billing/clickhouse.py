"""The analytics store: one small client over the embedded engine (chdb) or a ClickHouse server.

``connect(target)`` opens either, through clickhouse-connect (its chdb backend for
``chdb://DIR``, HTTP otherwise), so the same DDL and SQL run on both:
- a process's settings (``HistorySettings``, or anything with ``state_dir`` and an optional
  ``clickhouse_url``): the URL when it is set, else the embedded engine with its data in
  ``state_dir/clickhouse``;
- a URL string: ``http(s)://user:password@host:8123[/database]`` or ``chdb://DIR``;
- a path: the embedded engine with its data there.

chdb runs inside this process and locks its data directory: one process at a time may own it
(a second fails with "Cannot lock file .../status"), and a process can have one engine
directory open at a time. In embedded mode the Faust worker owns the store; other processes
read through it, never by opening the directory themselves.

Calls are synchronous (chdb has no async client; it releases the GIL while it works): from
async code run them in a thread (``asyncio.to_thread``), as ``analytics.ingest`` does.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.clickhouse import (
    CREATE_MIGRATIONS_TABLE,
    DEFAULT_DATABASE,
    MIGRATIONS,
    MIGRATIONS_TABLE,
)

if TYPE_CHECKING:
    import pyarrow as pa  # imported where used: the API and the CLI never insert

log = logging.getLogger(__name__)

# What a store call raises on either backend (an engine error, the server unreachable, ...).
StoreError = ClickHouseError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Inserts are synchronous (the rows are stored when the call returns, so a committed Kafka
# offset never runs ahead of ClickHouse; chdb enables async_insert by default) and
# deduplicated (a token, or the block's hash without one).
_INSERT_SETTINGS: dict[str, Any] = {"async_insert": 0, "insert_deduplicate": 1}

# Arrow inserts (the sink's path) also skip the replacing merge of the inserted block itself
# (``optimize_on_insert``, about a quarter of the engine's insert time): the caller sends no
# duplicate keys within a block, and merges or the queries take care of those across blocks.
_ARROW_INSERT_SETTINGS: dict[str, Any] = {**_INSERT_SETTINGS, "optimize_on_insert": 0}

# Connections a client opens for concurrent Arrow inserts (the sink stores a batch's tables
# two at a time: the machines this runs on have few cores, and the sink's own thread needs one).
INSERT_CONNECTIONS = 2


class StoreSettings(Protocol):
    """What ``connect`` reads from the process settings (``billing.config.HistorySettings``;
    ``clickhouse_url`` too where it exists)."""

    @property
    def state_dir(self) -> Path: ...


class ClickHouse(Protocol):
    """The store as the sink and the analytics queries see it."""

    @property
    def embedded(self) -> bool: ...

    @property
    def database(self) -> str: ...

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None: ...

    def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        dedup_token: str | None = None,
    ) -> None: ...

    def insert_arrow(
        self, table: str, data: pa.RecordBatch | pa.Table, dedup_token: str | None = None
    ) -> None: ...

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


class ClickHouseClient:
    """clickhouse-connect's client (chdb or HTTP backend) behind the ``ClickHouse`` protocol.

    Query parameters use ClickHouse's own ``{name:Type}`` placeholders, bound by the engine on
    both backends (never string formatting).
    """

    def __init__(
        self,
        client: Client,
        *,
        database: str,
        embedded: bool,
        opener: Callable[[], Client] | None = None,
        insert_connections: int = INSERT_CONNECTIONS,
    ) -> None:
        self._client = client
        self._database = database
        self._embedded = embedded
        # clickhouse-connect serialises calls per client on chdb; do the same on HTTP so one
        # client may be shared by the sink thread and readers.
        self._lock = threading.Lock()
        # Connections of their own for ``insert_arrow`` (opened on first use, up to
        # ``insert_connections``): blocks of several tables are stored at once, on as many
        # cores, and queries do not wait behind them. Without an opener: the main one.
        self._opener = opener
        self._insert_limit = insert_connections
        self._inserters: list[Client] = []
        self._idle: list[Client] = []
        self._inserters_lock = threading.Condition()
        self._closed = False

    @property
    def embedded(self) -> bool:
        return self._embedded

    @property
    def database(self) -> str:
        return self._database

    @property
    def raw(self) -> Client:
        """The underlying clickhouse-connect client (Arrow/DataFrame results, benchmarks)."""
        return self._client

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            self._client.command(sql, parameters=dict(params) if params else None)

    def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        dedup_token: str | None = None,
    ) -> None:
        """Insert rows (tuples in ``columns`` order) as one block. With ``dedup_token``, a
        block inserted again under the same token within the table's deduplication window is
        dropped, even if the engine split it by partition."""
        if not rows:
            return
        settings = dict(_INSERT_SETTINGS)
        if dedup_token is not None:
            settings["insert_deduplication_token"] = dedup_token
        # Column-oriented: clickhouse-connect serialises columns; transposing here is cheaper
        # than letting it walk rows.
        data = list(zip(*rows, strict=True))
        with self._lock:
            self._client.insert(
                table,
                data,
                column_names=list(columns),
                column_oriented=True,
                settings=settings,
            )

    def insert_arrow(
        self, table: str, data: pa.RecordBatch | pa.Table, dedup_token: str | None = None
    ) -> None:
        """Insert Arrow data (its schema names the columns) as one block, deduplicated like
        ``insert``. The engine reads the Arrow stream natively: no per-value Python work, so
        this is the bulk path (the events sink); Arrow types convert on the way in
        (``timestamp[ms, UTC]`` -> DateTime64(3), ``string`` -> LowCardinality(String), ...).

        Rows within one block must not repeat a table's replacing key: the block is stored as
        it is (``optimize_on_insert = 0``), duplicates merge away later like any replay's."""
        if data.num_rows == 0:
            return
        settings = dict(_ARROW_INSERT_SETTINGS)
        if dedup_token is not None:
            settings["insert_deduplication_token"] = dedup_token
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write(data)
        payload = sink.getvalue().to_pybytes()
        conn = self._take_inserter()
        if conn is None:
            with self._lock:
                self._client.raw_insert(
                    table, data.schema.names, payload, settings=settings, fmt="ArrowStream"
                )
            return
        try:
            conn.raw_insert(table, data.schema.names, payload, settings=settings, fmt="ArrowStream")
        finally:
            with self._inserters_lock:
                self._idle.append(conn)
                self._inserters_lock.notify()

    def _take_inserter(self) -> Client | None:
        """An idle insert connection (opening one if fewer than the limit are open, else
        waiting for one); None when this client opens none."""
        if self._opener is None or self._insert_limit < 1:
            return None
        with self._inserters_lock:
            while True:
                if self._closed:
                    raise RuntimeError("the ClickHouse client is closed")
                if self._idle:
                    return self._idle.pop()
                if len(self._inserters) < self._insert_limit:
                    break
                self._inserters_lock.wait()
            conn = self._opener()
            self._inserters.append(conn)
            return conn

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            result = self._client.query(sql, parameters=dict(params) if params else None)
        return [tuple(row) for row in result.result_rows]

    def close(self) -> None:
        with self._inserters_lock:
            self._closed = True
            inserters, self._inserters, self._idle = self._inserters, [], []
        for conn in inserters:
            conn.close()
        with self._lock:
            self._client.close()


def embedded_dir(state_dir: Path) -> Path:
    """Where the embedded engine keeps its data under a process state directory."""
    return Path(state_dir) / "clickhouse"


def _resolve(target: StoreSettings | str | Path) -> tuple[str, str | None]:
    """(dsn, database named in it) for a settings object, a URL or a directory."""
    if isinstance(target, Path):
        return f"chdb://{target.resolve()}", None
    if isinstance(target, str):
        if "://" not in target:
            return f"chdb://{Path(target).resolve()}", None
        if target.startswith("chdb://"):
            return target, None
        parts = urlsplit(target)
        database = parts.path.strip("/").split("/")[0] or None
        return urlunsplit((parts.scheme, parts.netloc, "", parts.query, "")), database
    url = getattr(target, "clickhouse_url", None)
    if url is not None and hasattr(url, "get_secret_value"):
        url = url.get_secret_value()
    if url:
        return _resolve(str(url))
    return _resolve(embedded_dir(target.state_dir))


def connect(
    target: StoreSettings | str | Path,
    *,
    database: str | None = None,
    migrate: bool = True,
) -> ClickHouseClient:
    """Open the store, create its database and (by default) apply pending migrations.

    ``database``: overrides the one named in the URL, else ``billing``.
    """
    dsn, url_database = _resolve(target)
    database = database or url_database or DEFAULT_DATABASE
    if not _IDENTIFIER.match(database):
        raise ValueError(f"not a plain database name: {database!r}")
    embedded = dsn.startswith("chdb://")
    if embedded:
        Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
    raw = clickhouse_connect.get_client(dsn=dsn)
    try:
        raw.command(f"CREATE DATABASE IF NOT EXISTS {database}")
        raw.database = database
    except Exception:
        raw.close()
        raise

    def opener() -> Client:
        extra = clickhouse_connect.get_client(dsn=dsn)
        extra.database = database
        return extra

    client = ClickHouseClient(raw, database=database, embedded=embedded, opener=opener)
    if migrate:
        try:
            apply_migrations(client)
        except Exception:
            client.close()
            raise
    return client


def applied_migrations(client: ClickHouse) -> set[int]:
    client.command(CREATE_MIGRATIONS_TABLE)
    return {int(row[0]) for row in client.query(f"SELECT version FROM {MIGRATIONS_TABLE}")}


def apply_migrations(client: ClickHouse) -> list[int]:
    """Apply the migrations not yet recorded, in order; returns the versions applied."""
    done = applied_migrations(client)
    applied: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement)
        client.insert(
            MIGRATIONS_TABLE,
            [(migration.version, migration.name)],
            ("version", "name"),
        )
        log.info("clickhouse migration %s applied: %s", migration.version, migration.name)
        applied.append(migration.version)
    return applied
