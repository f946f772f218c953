"""subscription_events partitioned by month (migration 0010, issue 15): the rows of the plain
table are kept, a replayed event is still dropped, rows outside the made months land in the
DEFAULT partition and move into their month when maintenance makes it, and old months are
detached (kept as tables) only when a retention is set."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from billing.maintenance import (
    RetentionPolicy,
    apply_retention,
    detach_old_event_partitions,
    ensure_event_partitions,
    event_partitions,
)
from schemas.pg import migrate
from tests.fixtures.postgres import FreshDatabase

pytestmark = pytest.mark.integration

INSERT = (
    "INSERT INTO subscription_events (event_id, subscription_id, version, event_type,"
    " occurred_at, causation_id, body) VALUES (%s, %s, %s, 'X', %s, %s, '{}')"
    " ON CONFLICT DO NOTHING"
)


def _event(
    conn: psycopg.Connection[tuple[object, ...]], sub: str, version: int, at: datetime
) -> tuple[str, str, int, datetime, str]:
    row = (str(uuid.uuid4()), sub, version, at, str(uuid.uuid4()))
    conn.execute(INSERT, row)
    return row


def test_migration_keeps_rows_and_dedupe_and_maintenance_moves_and_detaches(
    fresh_database: FreshDatabase,
) -> None:
    dsn = fresh_database("parts", migrate=False)
    migrate(dsn, "0009_outbox_topic")
    now = datetime.now(UTC)
    sub = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = [
            _event(conn, sub, 1, now - timedelta(days=400)),
            _event(conn, sub, 2, now - timedelta(days=40)),
            _event(conn, sub, 3, now),
        ]
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        kept = conn.execute(
            "SELECT event_id::text, subscription_id::text, version, occurred_at,"
            " causation_id::text FROM subscription_events ORDER BY version"
        ).fetchall()
        assert kept == rows
        parts = event_partitions(conn)
        assert f"subscription_events_{now:%Y%m}" in parts
        assert [n for n, d in parts.items() if d] == ["subscription_events_default"]
        # A replayed event (same id, same time) is dropped; nothing landed in the default.
        conn.execute(INSERT, rows[2])
        assert conn.execute("SELECT count(*) FROM subscription_events").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM subscription_events_default").fetchone() == (0,)

        # A test clock five months ahead: the row waits in the default partition, and moves
        # into its month when maintenance runs at that time.
        later = now + timedelta(days=150)
        _event(conn, sub, 4, later)
        assert conn.execute("SELECT count(*) FROM subscription_events_default").fetchone() == (1,)
        made = ensure_event_partitions(conn, later)
        assert f"subscription_events_{later:%Y%m}" in made
        assert conn.execute("SELECT count(*) FROM subscription_events_default").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM subscription_events").fetchone() == (4,)

        # No retention: nothing detached; 6 months: the month 400 days back is detached and
        # its rows are kept in its own table.
        assert apply_retention(conn, RetentionPolicy(), now).partitions_detached == ()
        old = f"subscription_events_{now - timedelta(days=400):%Y%m}"
        assert old in detach_old_event_partitions(conn, now, 6)
        assert old not in event_partitions(conn)
        assert conn.execute("SELECT count(*) FROM subscription_events").fetchone() == (3,)
        assert conn.execute(f"SELECT count(*) FROM {old}").fetchone() == (1,)
