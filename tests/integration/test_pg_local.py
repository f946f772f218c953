"""The local PostgreSQL helper: a restart reuses the cluster (data and port), a running one is
adopted as is, and database creation is idempotent."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from billing.pg_local import (
    LocalPostgres,
    create_database,
    dsn_with_database,
    ensure_database,
    is_running,
    start_postgres,
)

pytestmark = pytest.mark.integration


def test_restart_reuses_the_cluster(tmp_path: Path) -> None:
    data = tmp_path / "state" / "pg"
    first = start_postgres(data, database="app")
    try:
        assert first.started_here and is_running(data)
        with psycopg.connect(first.dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO plans (plan_id, name, amount_minor, currency, period_months)"
                " VALUES ('kept', 'Kept', 100, 'RUB', 1)"
            )
        adopted = start_postgres(data, database="app")
        assert not adopted.started_here and adopted.port == first.port
        first.stop()
        assert not is_running(data)

        again = start_postgres(data, database="app")
        try:
            assert again.started_here and again.port == first.port
            with psycopg.connect(again.dsn) as conn:
                row = conn.execute("SELECT name FROM plans WHERE plan_id = 'kept'").fetchone()
            assert row == ("Kept",)
        finally:
            again.stop()
    finally:
        LocalPostgres(data, first.port, "app", True).stop()


def test_ensure_and_create_database(pg_dsn: str) -> None:
    name = "pg_local_probe_db"
    target = dsn_with_database(pg_dsn, name)
    try:
        assert ensure_database(target) is True
        assert ensure_database(target) is False
        with pytest.raises(RuntimeError):
            create_database(pg_dsn, name)
    finally:
        with psycopg.connect(dsn_with_database(pg_dsn, "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u@127.0.0.1:5/a", "postgresql://u@127.0.0.1:5/b"),
        ("postgresql://u:p@h:5/a?sslmode=disable", "postgresql://u:p@h:5/b?sslmode=disable"),
        ("postgresql://postgres:@/a?host=/tmp/sock", "postgresql://postgres:@/b?host=/tmp/sock"),
    ],
)
def test_dsn_with_database(dsn: str, expected: str) -> None:
    assert dsn_with_database(dsn, "b") == expected
