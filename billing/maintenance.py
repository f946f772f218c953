"""Retention of the PostgreSQL tables that would otherwise grow forever, run by one leader.

- ``idempotency_keys``: a key is kept ``BILLING_IDEMPOTENCY_KEY_TTL_S`` (at least 24 h, the
  window in which clients retry; default 7 days), then deleted. A client that reuses a key
  after that is not answered from the record any more; its command id is still derived from
  (user, key), so the ledger, which remembers the commands it answered, applies it at most
  once.
- ``command_outbox``: a row closed (``done`` or ``rejected``) longer than
  ``BILLING_OUTBOX_CLOSED_RETENTION_S`` (default 30 days) is deleted; open rows never are (the
  relay still owes them). Its status URL then answers from the read models only.

- ``subscription_events`` (partitioned by month, migration 0010): the coming months'
  partitions are made ahead (``ensure_event_partitions``; rows the DEFAULT partition caught
  for such a month move into it), and with ``BILLING_EVENTS_RETENTION_MONTHS`` > 0 months
  older than that are detached (``detach_old_event_partitions``): the table
  ``subscription_events_YYYYMM`` stays for an operator to archive and drop. Unset (0) keeps
  the audit trail whole.

Deletes go in batches (``DELETE … WHERE ctid IN (SELECT … LIMIT n)``) so that no long
transaction holds locks against the API's intake.

One leader: ``leader_lock`` takes a session-level PostgreSQL advisory lock on its own
connection; every replica of ``billing maintain`` tries, one gets it, and it is released when
that process or its connection dies, so another takes over at its next round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# pg_try_advisory_lock key of the maintenance leader ("billing maintenance").
LEADER_LOCK_KEY = 0x62696C6C_6D61696E
BATCH = 5_000
MIN_IDEMPOTENCY_KEY_TTL_S = 24 * 3600.0


EVENTS = "subscription_events"
MONTHS_AHEAD = 2


@dataclass(frozen=True)
class RetentionPolicy:
    idempotency_key_ttl_s: float = 7 * 86400.0
    outbox_closed_retention_s: float = 30 * 86400.0
    events_retention_months: int = 0  # 0: never detach
    batch: int = BATCH

    def __post_init__(self) -> None:
        if self.idempotency_key_ttl_s < MIN_IDEMPOTENCY_KEY_TTL_S:
            raise ValueError("idempotency keys must be kept at least 24 h")
        if self.outbox_closed_retention_s < 0 or self.events_retention_months < 0 or self.batch < 1:
            raise ValueError("retention must not be negative, batches at least 1 row")


@dataclass(frozen=True)
class RetentionResult:
    idempotency_keys: int
    outbox_rows: int
    partitions_made: tuple[str, ...] = ()
    partitions_detached: tuple[str, ...] = ()


def _month(year: int, month: int) -> datetime:
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=UTC)


def partition_name(month: datetime) -> str:
    return f"{EVENTS}_{month:%Y%m}"


def event_partitions(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, bool]:
    """The partitions of subscription_events by name -> is it the DEFAULT one."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass",
        (EVENTS,),
    ).fetchall()
    return {str(name): bool(default) for name, default in rows}


def ensure_event_partitions(
    conn: psycopg.Connection[tuple[object, ...]], now: datetime, months_ahead: int = MONTHS_AHEAD
) -> list[str]:
    """This month's and the next ``months_ahead`` months' partitions; rows the DEFAULT
    partition holds for such a month move into it (in the same transaction)."""
    existing = event_partitions(conn)
    default = next((n for n, d in existing.items() if d), None)
    made = []
    for i in range(months_ahead + 1):
        start = _month(now.year, now.month + i)
        end = _month(start.year, start.month + 1)
        name = partition_name(start)
        if name in existing:
            continue
        with conn.transaction():
            moved = 0
            if default is not None:
                conn.execute(
                    sql.SQL(
                        "CREATE TEMP TABLE moving ON COMMIT DROP AS WITH gone AS (DELETE FROM {}"
                        " WHERE occurred_at >= %s AND occurred_at < %s RETURNING *)"
                        " SELECT * FROM gone"
                    ).format(sql.Identifier(default)),
                    (start, end),
                )
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(name),
                    sql.Identifier(EVENTS),
                    sql.Literal(start),
                    sql.Literal(end),
                )
            )
            if default is not None:
                moved = conn.execute(
                    sql.SQL("INSERT INTO {} SELECT * FROM moving").format(sql.Identifier(EVENTS))
                ).rowcount
        log.info("events: partition %s made (%d rows moved from the default one)", name, moved)
        made.append(name)
    return made


def detach_old_event_partitions(
    conn: psycopg.Connection[tuple[object, ...]], now: datetime, keep_months: int
) -> list[str]:
    """Detach the monthly partitions that end before ``keep_months`` months ago (0: none)."""
    if keep_months <= 0:
        return []
    cutoff = _month(now.year, now.month - keep_months)
    detached = []
    for name, default in sorted(event_partitions(conn).items()):
        suffix = name.removeprefix(f"{EVENTS}_")
        if default or not suffix.isdigit() or len(suffix) != 6:
            continue
        end = _month(int(suffix[:4]), int(suffix[4:]) + 1)
        if end <= cutoff:
            conn.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                    sql.Identifier(EVENTS), sql.Identifier(name)
                )
            )
            log.info("events: partition %s detached (archive, then drop it)", name)
            detached.append(name)
    return detached


def _delete_batches(conn: psycopg.Connection[tuple[object, ...]], sql: str, *params: object) -> int:
    total = 0
    while True:
        with conn.transaction():
            cur = conn.execute(sql, params)
            n = cur.rowcount
        total += n
        if n <= 0:
            return total


def expire_idempotency_keys(
    conn: psycopg.Connection[tuple[object, ...]], policy: RetentionPolicy
) -> int:
    return _delete_batches(
        conn,
        "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys"
        " WHERE created_at < now() - make_interval(secs => %s) LIMIT %s)",
        policy.idempotency_key_ttl_s,
        policy.batch,
    )


def prune_outbox(conn: psycopg.Connection[tuple[object, ...]], policy: RetentionPolicy) -> int:
    return _delete_batches(
        conn,
        "DELETE FROM command_outbox WHERE ctid IN (SELECT ctid FROM command_outbox"
        " WHERE status IN ('done', 'rejected')"
        " AND updated_at < now() - make_interval(secs => %s) LIMIT %s)",
        policy.outbox_closed_retention_s,
        policy.batch,
    )


def apply_retention(
    conn: psycopg.Connection[tuple[object, ...]],
    policy: RetentionPolicy,
    now: datetime | None = None,
) -> RetentionResult:
    now = now or datetime.now(UTC)
    result = RetentionResult(
        expire_idempotency_keys(conn, policy),
        prune_outbox(conn, policy),
        tuple(ensure_event_partitions(conn, now)),
        tuple(detach_old_event_partitions(conn, now, policy.events_retention_months)),
    )
    if result.idempotency_keys or result.outbox_rows:
        log.info(
            "retention: %d idempotency keys expired, %d closed outbox rows pruned",
            result.idempotency_keys,
            result.outbox_rows,
        )
    return result


def leader_lock(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Try to become (or stay) the maintenance leader on this connection (autocommit)."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def run_forever(
    dsn: str,
    policy: RetentionPolicy,
    interval_s: float,
    *,
    once: bool = False,
    stop: threading.Event | None = None,
    also: Callable[[], object] | None = None,
) -> int:
    """Every ``interval_s``: become the leader if no one is, then apply the retention. A
    lost connection (and with it the lock) is opened again at the next round. Returns the
    rounds this process led. ``also`` runs after the retention on the leader (the
    reconciliation watchdog, wired by ``billing maintain``); its failure is logged."""
    stop = stop or threading.Event()
    led = 0
    conn: psycopg.Connection[tuple[object, ...]] | None = None
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
            if leader_lock(conn):
                apply_retention(conn, policy)
                led += 1
                if also is not None:
                    try:
                        also()
                    except Exception:
                        log.exception("maintenance: the leader's extra job failed")
            else:
                log.debug("maintenance: another process leads")
        except psycopg.Error as exc:
            log.warning("maintenance round failed (next round retries): %s", exc)
            if conn is not None:
                conn.close()
            conn = None
        if once:
            break
        stop.wait(interval_s)
    if conn is not None:
        conn.close()
    return led
