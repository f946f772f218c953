"""recon_report_lines has a partition key and a TTL (issue 15), on a new store and on one
made before migration 4: a day's lines are a partition, dropped once they are older than
REPORT_LINES_TTL_DAYS, while a fresh run's lines stay."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from billing.clickhouse import apply_migrations, connect, embedded_dir
from schemas.clickhouse import (
    CREATE_MIGRATIONS_TABLE,
    MIGRATIONS,
    MIGRATIONS_TABLE,
    REPORT_LINES_TTL_DAYS,
)

pytestmark = pytest.mark.integration

OLD_DDL = """CREATE TABLE recon_report_lines (run_id String, seq UInt64,
    loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree
ORDER BY (run_id, seq)"""


def test_an_old_store_gets_the_partitioned_table_with_a_ttl(tmp_path: Path) -> None:
    ch = connect(embedded_dir(tmp_path), database=f"t_{uuid.uuid4().hex[:12]}", migrate=False)
    try:
        # A store as it was before migration 4: migrations 1-3 recorded, the old table.
        ch.command(CREATE_MIGRATIONS_TABLE)
        for migration in MIGRATIONS[:3]:
            for statement in migration.statements:
                if "recon_report_lines" not in statement:
                    ch.command(statement)
            ch.insert(MIGRATIONS_TABLE, [(migration.version, migration.name)], ("version", "name"))
        ch.command(OLD_DDL)
        assert apply_migrations(ch) == [4]
        key, engine = ch.query(
            "SELECT partition_key, engine_full FROM system.tables"
            " WHERE database = currentDatabase() AND name = 'recon_report_lines'"
        )[0]
        assert key == "toYYYYMMDD(loaded_at)"
        assert f"TTL toDateTime(loaded_at) + toIntervalDay({REPORT_LINES_TTL_DAYS})" in engine

        old, new = str(uuid.uuid4()), str(uuid.uuid4())
        for run, age in ((old, REPORT_LINES_TTL_DAYS + 2), (new, 0)):
            ch.command(
                "INSERT INTO recon_report_lines (run_id, seq, object, provider_id, loaded_at)"
                f" VALUES ('{run}', 1, 'payment', 'p', now64(3) - INTERVAL {age} DAY)"
            )
        ch.command("OPTIMIZE TABLE recon_report_lines FINAL")
        runs = {r[0] for r in ch.query("SELECT run_id FROM recon_report_lines")}
        assert runs == {new}
        assert apply_migrations(ch) == []
    finally:
        ch.command(f"DROP DATABASE IF EXISTS {ch.database}")
        ch.close()
