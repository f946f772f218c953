"""Retention on one leader (issue 15): idempotency keys older than their TTL and outbox rows
closed longer than their retention are deleted, nothing younger and no open row; only one
process at a time holds the maintenance lock, and a dead leader's lock passes on."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from billing.maintenance import RetentionPolicy, apply_retention, leader_lock, run_forever
from tests.fixtures.postgres import FreshDatabase

pytestmark = pytest.mark.integration

DAY = 86400.0


def _key(conn: psycopg.Connection[tuple[object, ...]], age_days: float) -> str:
    key = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, command_id,"
        " response_status, response_body, created_at)"
        " VALUES ('u', %s, 'f', %s, 202, '{}', now() - make_interval(secs => %s))",
        (key, str(uuid.uuid4()), age_days * DAY),
    )
    return key


def _outbox(conn: psycopg.Connection[tuple[object, ...]], status: str, age_days: float) -> str:
    cid = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO command_outbox (command_id, subscription_id, user_id, command_type,"
        " payload, status, created_at, updated_at) VALUES (%s, %s, 'u', 'PaySubscription',"
        " '\\x00', %s, now() - make_interval(secs => %s), now() - make_interval(secs => %s))",
        (cid, str(uuid.uuid4()), status, age_days * DAY, age_days * DAY),
    )
    return cid


def test_retention_deletes_only_expired_keys_and_old_closed_outbox_rows(
    fresh_database: FreshDatabase,
) -> None:
    dsn = fresh_database("maint")
    with psycopg.connect(dsn, autocommit=True) as conn:
        old_keys = [_key(conn, 8) for _ in range(7)]
        young_key = _key(conn, 2)
        gone = [_outbox(conn, "done", 31), _outbox(conn, "rejected", 40)]
        kept = [
            _outbox(conn, "done", 3),
            _outbox(conn, "accepted", 90),
            _outbox(conn, "processing", 90),
        ]
        result = apply_retention(conn, RetentionPolicy(batch=3))  # several batches
        assert (result.idempotency_keys, result.outbox_rows) == (len(old_keys), len(gone))
        keys = {r[0] for r in conn.execute("SELECT idem_key FROM idempotency_keys")}
        rows = {str(r[0]) for r in conn.execute("SELECT command_id FROM command_outbox")}
    assert keys == {young_key}
    assert rows == set(kept)


def test_keys_are_kept_at_least_a_day() -> None:
    with pytest.raises(ValueError, match="24 h"):
        RetentionPolicy(idempotency_key_ttl_s=DAY - 1)


def test_one_leader_at_a_time_and_the_lock_passes_on(fresh_database: FreshDatabase) -> None:
    dsn = fresh_database("maint")
    first = psycopg.connect(dsn, autocommit=True)
    with psycopg.connect(dsn, autocommit=True) as second:
        assert leader_lock(first)
        assert leader_lock(first)  # the leader stays the leader
        assert not leader_lock(second)
        assert run_forever(dsn, RetentionPolicy(), 1.0, once=True) == 0  # not the leader
        first.close()  # the leader dies: its session lock goes with it
        assert leader_lock(second)
    assert run_forever(dsn, RetentionPolicy(), 1.0, once=True) == 1
