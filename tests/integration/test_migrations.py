"""Every Alembic step upgrades and downgrades cleanly on a fresh database, and really changes the
schema. The steps come from Alembic's own revision list, so new migrations are covered as soon
as they are added."""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory

from schemas.pg import alembic_config, downgrade, migrate
from tests.fixtures.postgres import FreshDatabase

pytestmark = pytest.mark.integration

# What the foundation must create; later revisions only add to this set.
FOUNDATION_TABLES = {
    "plans",
    "idempotency_keys",
    "command_outbox",
    "subscriptions",
    "payments",
    "subscription_events",
    "projection_versions",
}


def _steps() -> list[tuple[str, str]]:
    """(previous, revision) pairs from base to head; 'base' before the first."""
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused@localhost/x"))
    revs = list(script.walk_revisions("base", "heads"))
    revs.reverse()  # walk_revisions goes head -> base
    steps: list[tuple[str, str]] = []
    for rev in revs:
        down = rev.down_revision
        assert down is None or isinstance(down, str), "merge revisions need their own test"
        steps.append((down or "base", rev.revision))
    return steps


STEPS = _steps()


def _schema(dsn: str) -> dict[str, Any]:
    """Tables with their columns, indexes and constraints (alembic's own table aside)."""
    with psycopg.connect(dsn) as conn:
        cols = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'public'"
            " AND table_name <> 'alembic_version' ORDER BY 1, 2"
        ).fetchall()
        idx = conn.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " AND tablename <> 'alembic_version' ORDER BY 1, 2"
        ).fetchall()
        cons = conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
            " AND conrelid::regclass::text <> 'alembic_version' ORDER BY 1, 2"
        ).fetchall()
    return {
        "tables": {c[0] for c in cols},
        "columns": cols,
        "indexes": idx,
        "constraints": cons,
    }


def _version(dsn: str) -> str | None:
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()
        if exists is None or exists[0] is None:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return None if row is None else str(row[0])


def test_revision_list_is_linear_and_starts_with_the_foundation() -> None:
    assert STEPS, "no migrations found"
    assert STEPS[0] == ("base", "0001")
    for (_, prev), (down, _) in itertools.pairwise(STEPS):
        assert down == prev


@pytest.mark.parametrize(("down", "rev"), STEPS, ids=[rev for _, rev in STEPS])
def test_each_step_upgrades_and_downgrades(
    fresh_database: FreshDatabase, down: str, rev: str
) -> None:
    dsn = fresh_database("mig", migrate=False)
    if down != "base":
        migrate(dsn, down)
    before = _schema(dsn)

    migrate(dsn, rev)
    after = _schema(dsn)
    assert _version(dsn) == rev
    assert after != before, f"revision {rev} changed nothing"

    downgrade(dsn, down)
    assert _schema(dsn) == before, f"downgrade of {rev} did not restore the schema"
    assert _version(dsn) == (None if down == "base" else down)

    # And the step can be applied again after its own downgrade.
    migrate(dsn, rev)
    assert _schema(dsn) == after


def test_foundation_creates_the_tables_and_seeds_plans(fresh_database: FreshDatabase) -> None:
    dsn = fresh_database("mig", migrate=False)
    assert _schema(dsn)["tables"] == set()
    migrate(dsn, "0001")
    assert _schema(dsn)["tables"] == FOUNDATION_TABLES
    with psycopg.connect(dsn) as conn:
        plans = conn.execute("SELECT plan_id, amount_minor, currency FROM plans").fetchall()
    assert ("monthly", 29900, "RUB") in plans


def test_full_cycle_head_to_base_and_back(fresh_database: FreshDatabase) -> None:
    dsn = fresh_database("mig", migrate=False)
    migrate(dsn)
    head = _schema(dsn)
    assert head["tables"] >= FOUNDATION_TABLES
    assert _version(dsn) == STEPS[-1][1]

    downgrade(dsn, "base")
    assert _schema(dsn)["tables"] == set()
    assert _version(dsn) is None

    migrate(dsn)
    assert _schema(dsn) == head
