"""ClickHouse DDL: the analytical history. Pure data, no I/O; ``billing.clickhouse`` applies it.

The same statements run on the embedded engine (chdb) and on a ClickHouse server. Table names
are unqualified: the client is bound to one database (``billing`` by default), so tests can give
each case its own database inside one engine.

Idempotent on replay, twice over:
- every table fed from ``billing.events`` is a ``ReplacingMergeTree`` whose sorting key ends in
  ``event_id``, and every other key column is a function of the event (an event id names one
  immutable event: the ledger re-emits byte-identical events), so a replayed row is a duplicate
  of the same key and merges away;
- the sink inserts each batch with an ``insert_deduplication_token`` derived from the batch's
  event ids, and ``non_replicated_deduplication_window`` makes a plain (non-replicated)
  MergeTree remember the last blocks' tokens, so a replayed batch is dropped at insert time.
Merges happen whenever they like, so queries never count raw rows: they deduplicate by key
(``GROUP BY payment_id`` / ``event_id``, ``uniqExact``, or ``FINAL``); see analytics/queries.py.

Grain: one row per event in ``events`` and in each derived table (``payments``: one row per
payment lifecycle event, ``refunds``: per refund lifecycle event, ``subscription_periods``: per
period granted, ``subscription_changes``: per dunning/expiry/cancel/auto-renew event).
Derived tables carry what the queries need, so they never parse the JSON bodies.

Times are ``DateTime64(3, 'UTC')`` and are inserted as epoch milliseconds, the messages' unit.
Money is integer minor units plus currency, as everywhere (schemas/money.py).

Migrations are append-only: never edit a shipped statement, add a new migration (and write it
so that running it twice is harmless: ``IF NOT EXISTS``), since several workers may start at
once against a server.
"""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_DATABASE = "billing"

# Blocks (insert parts) whose tokens each table remembers. A crash replays the few batches after
# the last committed offset; older duplicates are still removed by the replacing key.
DEDUP_WINDOW = 1000

# A batch run's report lines are its working copy, read while the run classifies them (minutes);
# a day's lines are one partition, dropped whole once every line in it is this old.
REPORT_LINES_TTL_DAYS = 14

_DEDUP = f"non_replicated_deduplication_window = {DEDUP_WINDOW}"

MIGRATIONS_TABLE = "schema_migrations"

CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
ORDER BY version
"""

# Every table of ledger events keeps a month's events a partition.
_MONTHLY_PARTS = """ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)"""

# The columns a payment's and a refund's lifecycle rows share after their ids.
_LIFECYCLE_COLUMNS = """subscription_id String,
    user_id String,
    status LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    version UInt64,
    command_id String,"""

EVENTS = f"""
CREATE TABLE IF NOT EXISTS events (
    event_id String,
    event_type LowCardinality(String),
    subscription_id String,
    user_id String,
    version UInt64,
    occurred_at DateTime64(3, 'UTC'),
    causation_id String,
    payment_id String,
    refund_id String,
    body String CODEC(ZSTD(1)),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) {_MONTHLY_PARTS}
ORDER BY (event_type, occurred_at, event_id)
SETTINGS {_DEDUP}
"""

# status: requested | redriven | rejected | pending | waiting_for_capture | unknown | succeeded
# | canceled, and for held payments capture_requested | cancel_requested (party = the actor)
# | settle_rejected. The requested (and redriven) rows carry the request: kind (purchase | renewal |
# upgrade | retry), plan, amount charged, period_months, list_amount_minor (the plan's full
# price, which an upgrade's prorated charge is not); the succeeded row carries the captured
# amount; canceled/rejected rows the reason.
PAYMENTS = f"""
CREATE TABLE IF NOT EXISTS payments (
    event_id String,
    payment_id String,
    {_LIFECYCLE_COLUMNS}
    kind LowCardinality(String),
    plan_id LowCardinality(String),
    amount_minor Int64,
    currency LowCardinality(String),
    period_months UInt16,
    list_amount_minor Int64,
    provider_payment_id String,
    attempt UInt32,
    reason String,
    party LowCardinality(String)
) {_MONTHLY_PARTS}
ORDER BY (status, occurred_at, event_id)
SETTINGS {_DEDUP}
"""

# status: requested | redriven | rejected | unknown | succeeded | canceled (RefundFailed);
# ``fully_refunded`` on the succeeded row that leaves nothing to refund (the payment's period
# stops counting as access: analytics/queries.py, invariant 4).
REFUNDS = f"""
CREATE TABLE IF NOT EXISTS refunds (
    event_id String,
    refund_id String,
    payment_id String,
    {_LIFECYCLE_COLUMNS}
    amount_minor Int64,
    currency LowCardinality(String),
    provider_refund_id String,
    attempt UInt32,
    reason String,
    actor LowCardinality(String),
    fully_refunded UInt8
) {_MONTHLY_PARTS}
ORDER BY (status, occurred_at, event_id)
SETTINGS {_DEDUP}
"""

# Access as the ledger sees it: one row per event that changes a subscription's access window,
# holding the window in force after it (``access_from``..``access_until``, half-open). The row
# with the highest version among those that occurred by t is the subscription's state at t.
# change: activated (a period starting now) | stacked (a period bought while one runs: access
# already runs, so access_from is when it was bought) | extended | granted (admin, no
# payment) | canceled (access ended at access_until; an empty window from then on).
# period_start/period_end: the event's own period, for the record.
SUBSCRIPTION_PERIODS = f"""
CREATE TABLE IF NOT EXISTS subscription_periods (
    event_id String,
    subscription_id String,
    user_id String,
    version UInt64,
    occurred_at DateTime64(3, 'UTC'),
    change LowCardinality(String),
    payment_id String,
    plan_id LowCardinality(String),
    period_start DateTime64(3, 'UTC'),
    period_end DateTime64(3, 'UTC'),
    access_from DateTime64(3, 'UTC'),
    access_until DateTime64(3, 'UTC'),
    actor LowCardinality(String),
    reason String
) ENGINE = ReplacingMergeTree
ORDER BY (subscription_id, version, event_id)
SETTINGS {_DEDUP}
"""

# Subscription lifecycle: change = renewal_failed | past_due | expired | canceled |
# auto_renew_on | auto_renew_off | plan_change_scheduled. ``until``: the period end (past_due,
# expired), the end of access (canceled), the next dunning retry (renewal_failed; 0 when none)
# or when a scheduled plan (``plan_id``) takes effect.
SUBSCRIPTION_CHANGES = f"""
CREATE TABLE IF NOT EXISTS subscription_changes (
    event_id String,
    subscription_id String,
    user_id String,
    change LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    version UInt64,
    payment_id String,
    plan_id LowCardinality(String),
    reason LowCardinality(String),
    hard UInt8,
    attempt UInt32,
    until DateTime64(3, 'UTC'),
    actor LowCardinality(String)
) ENGINE = ReplacingMergeTree
ORDER BY (subscription_id, event_id)
SETTINGS {_DEDUP}
"""

# Reconciliation results (reconciler/matcher.py MatchItem): one row per discrepancy state, the
# highest version being its current one (open -> repaired | escalated | ...).
DISCREPANCIES = f"""
CREATE TABLE IF NOT EXISTS discrepancies (
    discrepancy_id String,
    run_id String,
    class LowCardinality(String),
    object LowCardinality(String),
    status LowCardinality(String),
    repair LowCardinality(String),
    subscription_id String,
    payment_id String,
    refund_id String,
    provider_object_id String,
    ours_status LowCardinality(String),
    theirs_status LowCardinality(String),
    ours_amount_minor Nullable(Int64),
    theirs_amount_minor Nullable(Int64),
    currency LowCardinality(String),
    detail String,
    detected_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY discrepancy_id
SETTINGS {_DEDUP}
"""


# Reconciliation (migration 2). A provider report loaded for the batch path
# (reconciler/batch.py): one row per line as read, ``seq`` its position in the report (ties in
# ``report_order`` keep it). Re-loading a run's report replaces the same (run, object, provider
# id, seq) rows. Empty string = absent (no NULLs but ``created_at``, whose absence orders first).
RECON_REPORT_LINES = f"""
CREATE TABLE IF NOT EXISTS recon_report_lines (
    run_id String,
    seq UInt64,
    object LowCardinality(String),
    provider_id String,
    provider_payment_id String,
    status LowCardinality(String),
    amount_minor Int64,
    currency LowCardinality(String),
    created_at Nullable(DateTime64(3, 'UTC')),
    subscription_id String,
    payment_id String,
    refund_id String,
    user_id String,
    paid UInt8,
    cancellation_party String,
    cancellation_reason String,
    payment_method_id String,
    payment_method_saved UInt8,
    loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(loaded_at)
ORDER BY (run_id, object, provider_id, seq)
TTL toDateTime(loaded_at) + INTERVAL {REPORT_LINES_TTL_DAYS} DAY
SETTINGS {_DEDUP}, ttl_only_drop_parts = 1
"""
# Migration 4: the table above had no partition key and no TTL before; a partition key cannot
# be added to a table, and the lines are only a batch run's working copy (its results are in
# PostgreSQL), so the old table is dropped and made again.
DROP_RECON_REPORT_LINES = "DROP TABLE IF EXISTS recon_report_lines"

# One row per run state (engine: streaming | batch), the highest version its current one;
# ``counts`` per class (reconciler.matcher.MATCH_CLASSES). Copied from PostgreSQL
# (``recon_runs``) by the history worker; a run that finished is final.
RECON_RUNS = f"""
CREATE TABLE IF NOT EXISTS recon_runs (
    run_id String,
    engine LowCardinality(String),
    source LowCardinality(String),
    source_ref String,
    status LowCardinality(String),
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    taken_at DateTime64(3, 'UTC'),
    started_at DateTime64(3, 'UTC'),
    finished_at Nullable(DateTime64(3, 'UTC')),
    duration_ms Nullable(UInt64),
    lines UInt64,
    counts Map(String, UInt64),
    discrepancies UInt64,
    new_discrepancies UInt64,
    unresolved UInt64,
    error String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY run_id
SETTINGS {_DEDUP}
"""

# Succeeded totals of a run per object (payments | refunds), side (ours | theirs) and currency.
RECON_RUN_TOTALS = f"""
CREATE TABLE IF NOT EXISTS recon_run_totals (
    run_id String,
    object LowCardinality(String),
    side LowCardinality(String),
    currency LowCardinality(String),
    amount_minor Int64,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (run_id, object, side, currency)
SETTINGS {_DEDUP}
"""


# MRR cache (migration 3; analytics/queries.py ``mrr_movements``). MRR at a close depends on
# every access row (and the payment requests that price them) up to it, so each cached figure
# carries the ``fingerprint`` of those rows (count and sums per month of occurrence; a row
# exactly at a close belongs to the month it closes): a late row for a month changes the
# fingerprint of that month and of every later close, and the cached figures from there on are
# recomputed. ``built_at`` orders rebuilds of the same month. Empty arrays: a month without MRR.
MRR_MONTHS = f"""
CREATE TABLE IF NOT EXISTS mrr_months (
    month Date,
    fingerprint String,
    built_at DateTime64(3, 'UTC'),
    currency Array(String),
    mrr_minor Array(Int64),
    new_minor Array(Int64),
    expansion_minor Array(Int64),
    contraction_minor Array(Int64),
    churn_minor Array(Int64),
    subscribers_at_start Array(UInt64),
    subscribers Array(UInt64),
    new_subscribers Array(UInt64),
    churned_subscribers Array(UInt64)
) ENGINE = ReplacingMergeTree(built_at)
ORDER BY (month, fingerprint)
SETTINGS {_DEDUP}
"""

# Each subscription's priced access state at a close (the first instant of ``close``): its
# latest access row by then and the monthly price and currency carried to it; the seed the
# months after a cached close are computed from. One build per partition (``build_id``), listed
# in ``mrr_states`` once complete (``subscriptions``: its rows); superseded builds are dropped.
MRR_STATES = f"""
CREATE TABLE IF NOT EXISTS mrr_states (
    close Date,
    build_id String,
    fingerprint String,
    subscriptions UInt64,
    built_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(built_at)
ORDER BY (close, build_id)
SETTINGS {_DEDUP}
"""

MRR_STATE = f"""
CREATE TABLE IF NOT EXISTS mrr_state (
    build_id String,
    subscription_id String,
    version UInt64,
    occurred_at DateTime64(3, 'UTC'),
    access_from DateTime64(3, 'UTC'),
    access_until DateTime64(3, 'UTC'),
    monthly Nullable(Int64),
    currency Nullable(String)
) ENGINE = ReplacingMergeTree
PARTITION BY build_id
ORDER BY subscription_id
SETTINGS {_DEDUP}
"""


class Migration(NamedTuple):
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "analytics history: events, payments, refunds, periods, changes, discrepancies",
        (EVENTS, PAYMENTS, REFUNDS, SUBSCRIPTION_PERIODS, SUBSCRIPTION_CHANGES, DISCREPANCIES),
    ),
    Migration(
        2,
        "reconciliation: report lines (batch path), runs, run totals",
        (RECON_REPORT_LINES, RECON_RUNS, RECON_RUN_TOTALS),
    ),
    Migration(
        3,
        "mrr cache: closed months' movements, priced access state at a close",
        (MRR_MONTHS, MRR_STATES, MRR_STATE),
    ),
    Migration(
        4,
        "recon_report_lines: a day per partition, dropped after REPORT_LINES_TTL_DAYS",
        (DROP_RECON_REPORT_LINES, RECON_REPORT_LINES),
    ),
)


def _insert_columns(ddl: str) -> tuple[str, tuple[str, ...]]:
    """(table, its columns but the ``DEFAULT`` ones, in order) of a ``CREATE TABLE`` statement
    with one column a line."""
    head, _, rest = ddl.partition(" (\n")
    body = rest[: rest.index("\n) ENGINE")]
    columns = tuple(line.split()[0] for line in body.splitlines() if " DEFAULT " not in line)
    return head.split()[-1], columns


# Insert column order of each table (every column but the ``DEFAULT`` ones), read from its
# ``CREATE TABLE`` statement. The sink builds its row tuples in exactly this order; an
# integration test checks it against system.columns.
COLUMNS: dict[str, tuple[str, ...]] = dict(
    _insert_columns(ddl)
    for migration in MIGRATIONS
    for ddl in migration.statements
    if ddl.lstrip().startswith("CREATE TABLE")
)

# Tables the events sink writes (stored concurrently, in no fixed order; see the sink).
EVENT_TABLES: tuple[str, ...] = (
    "payments",
    "refunds",
    "subscription_periods",
    "subscription_changes",
    "events",
)
