"""The reconciliation batch path: ``reconciler.matcher`` computed in ClickHouse SQL.

The matcher (its module docstring is the spec) folds a report over the ledger's state table,
line by line. This module computes the same items in one SQL query over

- the report, loaded into ``recon_report_lines`` (``load_report``: one row per line, ``seq``
  its position in the report), and
- the analytical history (``payments``, ``refunds``: one row per ledger event, written by
  ``analytics.ingest``), from which the query rebuilds each ``PaymentRecord`` and
  ``RefundRecord`` the way ``streams.ledger.machine.evolve`` folds them.

``classify`` only turns the result rows into ``MatchItem`` s (with the repair's observation or
refund key, derived like the matcher derives them) and reads the ``Summary`` (counts per class
and succeeded totals, aggregated in SQL). With ``include_agreeing=False`` only the items that
are not ``matched``/``in_flight`` leave the engine, so a 1 M-line report costs a few thousand
Python objects, not a million.

The history must be caught up with the ledger up to the report (a payment whose events have
not reached ClickHouse yet is judged as the ledger judged it before them). A run id names one
report: loading it again replaces the same rows (same ``seq``); a different report needs its
own run id.

Where the matcher keeps per-run state (``SubscriptionRun``), the query computes its final value
with window functions and aggregates over the lines in ``report_order``:

- ``seen``: a provider object's first line (per subscription) counts, its redeliveries do not;
- ``bound``: the record's provider id, else the first line's provider object for the payment;
- ``kept``: the recorded charge (the record's provider id when succeeded), else the first
  succeeded line for the payment;
- ``accounted`` / ``accounted_refunds``: a ledger object some line was "ours" for; the end of
  the report judges the others.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

import pyarrow as pa

from billing.clickhouse import ClickHouse
from reconciler.matcher import duplicate_refund_key, no_totals
from schemas.clickhouse import COLUMNS
from schemas.ids import observation_id_for
from schemas.messages import PaymentObserved, RefundObserved
from schemas.money import CURRENCY_EXPONENT, Money
from schemas.recon import PaymentLine, ReportLine
from schemas.recon_match import (
    AGREEING_CLASSES,
    MATCH_CLASSES,
    MatchConfig,
    MatchItem,
    MatchResult,
    Summary,
)

TABLE = "recon_report_lines"
DEFAULT_CHUNK = 100_000

# Arrow type of each column that is not a string (the engine converts on insert).
_ARROW_TYPES: dict[str, pa.DataType] = {
    "seq": pa.uint64(),
    "amount_minor": pa.int64(),
    "created_at": pa.timestamp("ms", tz="UTC"),  # epoch ms, as the lines hold them
    "paid": pa.uint8(),
    "payment_method_saved": pa.uint8(),
}
_ARROW_SCHEMA = pa.schema(
    [
        pa.field(c, _ARROW_TYPES.get(c, pa.string()), nullable=c == "created_at")
        for c in COLUMNS[TABLE]
    ]
)


# ------------------------------------------------------------------------------- loading
def load_report(
    client: ClickHouse, run_id: str, lines: Iterable[ReportLine], *, chunk: int = DEFAULT_CHUNK
) -> int:
    """Insert a report's lines into ``recon_report_lines`` under ``run_id`` (``seq`` = the
    line's position in ``lines``), ``chunk`` lines per block; returns the number of lines.
    Absent values are stored as empty strings (``created_at`` as NULL)."""
    if chunk <= 0:
        raise ValueError("chunk must be positive")
    total = 0
    part: list[ReportLine] = []
    for line in lines:
        part.append(line)
        if len(part) == chunk:
            _insert_lines(client, run_id, total, part)
            total += len(part)
            part = []
    if part:
        _insert_lines(client, run_id, total, part)
        total += len(part)
    return total


def _columns(run_id: str, first_seq: int, part: Sequence[ReportLine]) -> list[list[Any]]:
    """The block's columns in COLUMNS["recon_report_lines"] order, one pass per column (a
    million lines: about a second; ``zip`` reuses its tuple, a prebuilt list would not)."""
    n = len(part)
    pay = [type(x) is PaymentLine for x in part]
    lines: Sequence[Any] = part  # a payment's or a refund's attributes, as ``pay`` says
    return [
        [run_id] * n,
        list(range(first_seq, first_seq + n)),
        ["payment" if p else "refund" for p in pay],
        [
            x.provider_payment_id if p else x.provider_refund_id
            for p, x in zip(pay, lines, strict=True)
        ],
        ["" if p else x.provider_payment_id for p, x in zip(pay, lines, strict=True)],
        [x.status for x in lines],
        [x.amount.amount_minor for x in lines],
        [x.amount.currency for x in lines],
        [x.created_at for x in lines],
        [x.subscription_id or "" for x in lines],
        [x.payment_id or "" for x in lines],
        ["" if p else x.refund_id or "" for p, x in zip(pay, lines, strict=True)],
        [x.user_id or "" if p else "" for p, x in zip(pay, lines, strict=True)],
        [int(x.paid) if p else 0 for p, x in zip(pay, lines, strict=True)],
        [x.cancellation_party or "" if p else "" for p, x in zip(pay, lines, strict=True)],
        [x.cancellation_reason or "" for x in lines],
        [x.payment_method_id or "" if p else "" for p, x in zip(pay, lines, strict=True)],
        [int(x.payment_method_saved) if p else 0 for p, x in zip(pay, lines, strict=True)],
    ]


def arrow_block(run_id: str, first_seq: int, part: Sequence[ReportLine]) -> pa.RecordBatch:
    """Lines as one Arrow block of ``recon_report_lines``: pyarrow converts each whole column
    in C and the engine reads the stream natively."""
    columns = _columns(run_id, first_seq, part)
    arrays = [pa.array(c, type=f.type) for c, f in zip(columns, _ARROW_SCHEMA, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=_ARROW_SCHEMA)


def _insert_lines(
    client: ClickHouse, run_id: str, first_seq: int, part: Sequence[ReportLine]
) -> None:
    # The table's key ends in ``seq``: it never repeats within a block.
    client.insert_arrow(TABLE, arrow_block(run_id, first_seq, part))


# ------------------------------------------------------------------------------ the query
def _money_sql(minor: str, currency: str) -> str:
    """SQL for ``str(Money(minor, currency))``: ``1490.00 RUB`` (Money.to_decimal)."""
    codes = ", ".join(f"'{c}'" for c in CURRENCY_EXPONENT)
    exps = ", ".join(str(e) for e in CURRENCY_EXPONENT.values())
    exp = f"transform({currency}, [{codes}], [{exps}], 2)"
    return (
        f"concat(if({minor} < 0, '-', ''), toString(intDiv(abs({minor}), intExp10({exp}))),"
        f" if({exp} = 0, '', concat('.', leftPad(toString(abs({minor}) % intExp10({exp})),"
        f" {exp}, '0'))), ' ', {currency})"
    )


_OURS_MONEY = _money_sql("ours_minor", "ours_currency")

# The item columns every branch of ``items`` yields, in this order ('' = absent).
_ITEM_COLUMNS = (
    "kind",
    "object",
    "subscription_id",
    "payment_id",
    "refund_id",
    "provider_id",
    "ours_status",
    "theirs_status",
    "ours_minor",
    "ours_currency",
    "theirs_minor",
    "theirs_currency",
    "repair",
    "detail",
    "paid",
    "cancellation_party",
    "cancellation_reason",
    "payment_method_id",
    "payment_method_saved",
)
_ITEMS = ", ".join(_ITEM_COLUMNS)

# ``{lines_of:<object>}``: the report's lines of an object, each with the id of the ledger
# record it is about (``ledger_<object>_id``, see the comment above each use).
_LINES_OF = """
{obj}_lines AS (
    SELECT
        l.*,
        if(by_id.{obj}_id != '', by_id.{obj}_id, by_provider.{obj}_id) AS ledger_{obj}_id
    FROM (SELECT * FROM lines WHERE object = '{obj}') AS l
    LEFT JOIN (SELECT subscription_id, {obj}_id FROM ledger_{obj}s) AS by_id
        ON by_id.subscription_id = l.line_subscription_id AND by_id.{obj}_id = l.line_{obj}_id
    LEFT JOIN (
        SELECT subscription_id, ours_provider_id, argMin({obj}_id, first_version) AS {obj}_id
        FROM ledger_{obj}s
        WHERE ours_provider_id != ''
        GROUP BY subscription_id, ours_provider_id
    ) AS by_provider
        ON by_provider.subscription_id = l.line_subscription_id
        AND by_provider.ours_provider_id = l.provider_id
)
"""

# ``{ledger_rows:<object>}``: the history rows of the records this run can look at (a superset
# is harmless): of a subscription in the report, or judged at the end of the report (requested
# in the window: read by primary key); one group per record.
_LEDGER_ROWS = """
    FROM {obj}s
    WHERE subscription_id IN (
            SELECT subscription_id FROM recon_report_lines WHERE run_id = {run:String}
        )
        OR {obj}_id IN (
            SELECT {obj}_id FROM {obj}s
            WHERE status = 'requested'
                AND occurred_at >= fromUnixTimestamp64Milli({window_start:Int64}, 'UTC')
                AND occurred_at < fromUnixTimestamp64Milli({window_end:Int64}, 'UTC')
        )
    GROUP BY subscription_id, {obj}_id
    HAVING countIf(status = 'requested') > 0
"""

# ``{ours_side_only}``: the item columns after the ids of a judged ledger record no line was
# "ours" for (end_of_report): its provider id, status and amount; no "theirs" side.
_OURS_SIDE_ONLY = """
        ours_provider_id,
        ours_status,
        '',
        ours_minor,
        ours_currency,
        NULL,
        '',
        verdict.2,
        verdict.3,
        0, '', '', '', 0
"""


def _per_object(query: str, name: str, template: str) -> str:
    """``query`` with ``{name:payment}`` and ``{name:refund}`` replaced by ``template`` for that
    object (``{obj}``)."""
    for obj in ("payment", "refund"):
        query = query.replace(f"{{{name}:{obj}}}", template.strip("\n").replace("{obj}", obj))
    return query


# {M} marks the MATERIALIZED keyword of a CTE read more than once (computed once), left out
# on an engine without materialized CTEs (they are then inlined, which is correct but slower).
_QUERY = """
WITH
-- ====================================================================== the report
-- The run's lines as loaded (a report loaded again replaces the same rows; FINAL keeps one).
report AS (
    SELECT
        seq,
        object,
        provider_id,
        status AS theirs_status,
        amount_minor AS theirs_minor,
        currency AS theirs_currency,
        toUnixTimestamp64Milli(created_at) AS created_ms,
        subscription_id AS line_subscription_id,
        payment_id AS line_payment_id,
        refund_id AS line_refund_id,
        paid,
        cancellation_party,
        cancellation_reason,
        payment_method_id,
        payment_method_saved
    FROM recon_report_lines FINAL
    WHERE run_id = {run:String}
),
-- line_order: the line's rank in report.report_order (created_at, absent first as -1;
-- payments before refunds; the provider id), ties in the report's own order (seq), as
-- reconcile's stable sort keeps them.
-- match_line's `seen`: the run of a subscription (of lines without one: one run) processes a
-- provider object once; its first line in report order counts, redeliveries yield nothing.
lines AS {M} (
    SELECT *
    FROM (
        SELECT
            *,
            row_number() OVER (ORDER BY ifNull(created_ms, -1), object, provider_id, seq)
                AS line_order
        FROM report
    )
    ORDER BY line_order
    LIMIT 1 BY line_subscription_id, object, provider_id
),

-- ====================================================================== the ledger
-- PaymentRecord per (subscription, payment) as evolve() folds the payment's events, one
-- history row each; argMax by version ignores the duplicate rows the table may still hold:
--   PaymentRequested: amount, requested_at, the record's place in the state (first_version);
--   status: of the latest status-setting event (redriven, rejected, settle rows set none);
--   provider id: PaymentPending / PaymentSucceeded set it, PaymentCanceled keeps the earlier
--     one when it has none;
--   held_at: set by PaymentPending(waiting_for_capture), cleared by PaymentPending(pending).
-- Only the payments this run can look at (a superset is harmless): of a subscription in the
-- report, or judged at the end of the report (requested in the window: read by primary key).
ledger_payments AS {M} (
    SELECT
        subscription_id,
        payment_id,
        minIf(version, status = 'requested') AS first_version,
        argMaxIf(amount_minor, version, status = 'requested') AS ours_minor,
        argMaxIf(currency, version, status = 'requested') AS ours_currency,
        toUnixTimestamp64Milli(argMaxIf(occurred_at, version, status = 'requested'))
            AS requested_at,
        argMaxIf(
            status, version,
            status IN ('requested', 'pending', 'waiting_for_capture', 'unknown', 'succeeded',
                       'canceled')
        ) AS ours_status,
        argMaxIf(
            provider_payment_id, version,
            status IN ('pending', 'waiting_for_capture', 'succeeded', 'canceled')
                AND provider_payment_id != ''
        ) AS ours_provider_id,
        argMaxIf(tuple(status, occurred_at), version, status IN ('pending', 'waiting_for_capture'))
            AS last_pending,
        if(last_pending.1 = 'waiting_for_capture', toUnixTimestamp64Milli(last_pending.2), NULL)
            AS held_at
{ledger_rows:payment}
),
-- RefundRecord likewise: RefundRequested gives amount, payment and requested_at; the status is
-- the latest of requested | unknown | succeeded | canceled (RefundFailed); RefundSucceeded and
-- RefundFailed set the provider id (a failure without one keeps the earlier one).
ledger_refunds AS {M} (
    SELECT
        subscription_id,
        refund_id,
        minIf(version, status = 'requested') AS first_version,
        argMaxIf(payment_id, version, status = 'requested') AS ours_payment_id,
        argMaxIf(amount_minor, version, status = 'requested') AS ours_minor,
        argMaxIf(currency, version, status = 'requested') AS ours_currency,
        toUnixTimestamp64Milli(argMaxIf(occurred_at, version, status = 'requested'))
            AS requested_at,
        argMaxIf(status, version, status IN ('requested', 'unknown', 'succeeded', 'canceled'))
            AS ours_status,
        argMaxIf(
            provider_refund_id, version,
            status IN ('succeeded', 'canceled') AND provider_refund_id != ''
        ) AS ours_provider_id
{ledger_rows:refund}
),

-- ====================================================================== payment lines
-- _find_record: the line's metadata.payment_id in its subscription's state, else the first
-- record (in the state's order) holding the line's provider id; '' when neither.
{lines_of:payment},
-- Each payment line with its record (when it has one) and the run's state for the payment,
-- over all its lines in report order (the state match_line reaches; only first lines set it):
--   bound: the record's provider id, else the first line's provider object;
--   kept: the charge the ledger recorded (its provider id when succeeded), else the first
--     succeeded line of the payment's currency and amount ('' when none).
payment_lines_ours AS (
    SELECT
        pl.*,
        pl.ledger_payment_id != '' AS has_record,
        p.ours_minor,
        p.ours_currency,
        p.ours_status,
        p.ours_provider_id,
        p.requested_at,
        p.held_at,
        if(p.ours_provider_id != '', p.ours_provider_id,
           argMin(pl.provider_id, pl.line_order) OVER per_payment) AS bound_id,
        if(p.ours_status = 'succeeded' AND p.ours_provider_id != '', p.ours_provider_id,
           argMinIf(pl.provider_id, pl.line_order,
                    pl.theirs_status = 'succeeded' AND pl.theirs_currency = p.ours_currency
                    AND pl.theirs_minor = p.ours_minor)
               OVER per_payment) AS kept_id
    FROM payment_lines AS pl
    LEFT JOIN ledger_payments AS p
        ON p.subscription_id = pl.line_subscription_id AND p.payment_id = pl.ledger_payment_id
    WINDOW per_payment AS (PARTITION BY pl.line_subscription_id, pl.ledger_payment_id)
),
-- _match_payment, its checks in the spec's order. `same`: the line is the payment's bound
-- object (else a sibling, which has no "ours" side). Overdue: past the pending SLA, or the
-- hold SLA when waiting_for_capture on either side (from held_at when known); a sibling's age
-- runs from its created_at (else from the request).
payment_line_items AS {M} (
    SELECT
        *,
        has_record AND provider_id = bound_id AS same,
        theirs_status IN ('succeeded', 'canceled') AS theirs_terminal,
        ours_status IN ('succeeded', 'canceled') AS ours_terminal,
        ours_status = 'waiting_for_capture' OR theirs_status = 'waiting_for_capture' AS held,
        if(same,
           {now:Int64} - if(held AND held_at IS NOT NULL, held_at, requested_at)
               >= if(held, {hold_sla:Int64}, {pending_sla:Int64}),
           {now:Int64} - ifNull(created_ms, requested_at)
               >= if(theirs_status = 'waiting_for_capture', {hold_sla:Int64}, {pending_sla:Int64})
        ) AS overdue,
        multiIf(
            -- 1. no ledger payment (no state, unknown ids)
            NOT has_record,
                ('missing_internal', 'escalate',
                 'the ledger has no payment for this provider object'),
            -- 2. currency, 3. amount
            theirs_currency != ours_currency,
                ('currency_mismatch', 'escalate', concat('ours in ', ours_currency)),
            theirs_minor != ours_minor,
                ('amount_mismatch', 'escalate', concat('ours ', {ours_money})),
            -- 4. a succeeded charge other than the kept one
            theirs_status = 'succeeded' AND kept_id != '' AND kept_id != provider_id,
                ('duplicate_charge', 'refund_later_duplicate',
                 concat('charge ', kept_id, ' is kept')),
            -- 5. status of the same object
            same AND theirs_terminal AND ours_status = theirs_status,
                ('matched', 'none', ''),
            same AND theirs_status = 'succeeded' AND NOT ours_terminal,
                ('missing_internal', 'apply_provider_status', 'missed outcome'),
            same AND theirs_terminal,
                ('status_mismatch', 'apply_provider_status', concat('ours ', ours_status)),
            -- 5. status of a sibling
            NOT same AND theirs_status = 'succeeded' AND ours_status = 'canceled',
                ('status_mismatch', 'apply_provider_status', 'ours canceled'),
            NOT same AND theirs_status = 'succeeded',
                ('missing_internal', 'apply_provider_status', 'missed outcome'),
            NOT same AND theirs_status = 'canceled',
                ('matched', 'none', 'canceled: no money on either side'),
            -- 5. in flight at the provider
            overdue,
                ('missing_at_provider', 'escalate', 'no provider outcome past the SLA'),
            ('in_flight', 'none', '')
        ) AS verdict
    FROM payment_lines_ours
),

-- ====================================================================== refund lines
-- _find_refund: metadata.refund_id in the subscription's state, else the first refund (in
-- the state's order) holding the provider refund id; '' when neither.
{lines_of:refund},
-- _match_refund. The first line (report order) of a ledger refund accounts for it
-- (accounted_refunds); a later one is a second provider refund for the same ledger refund.
refund_line_items AS {M} (
    SELECT
        *,
        multiIf(
            NOT has_record,
                ('refund_mismatch', 'escalate', 'the ledger has no such refund'),
            NOT accounts,
                ('refund_mismatch', 'escalate', 'second provider refund for one ledger refund'),
            theirs_currency != ours_currency,
                ('refund_mismatch', 'escalate',
                 concat('currency differs: ours in ', ours_currency)),
            theirs_minor != ours_minor,
                ('refund_mismatch', 'escalate', concat('amount differs: ours ', {ours_money})),
            theirs_status IN ('succeeded', 'canceled') AND ours_status = theirs_status,
                ('matched', 'none', ''),
            theirs_status IN ('succeeded', 'canceled') AND ours_status IN ('succeeded', 'canceled'),
                ('refund_mismatch', 'apply_provider_status',
                 concat('status differs: ours ', ours_status)),
            theirs_status IN ('succeeded', 'canceled'),
                ('refund_mismatch', 'apply_provider_status', 'missed outcome'),
            {now:Int64} - requested_at < {pending_sla:Int64},
                ('in_flight', 'none', ''),
            ('refund_mismatch', 'escalate', 'no provider outcome past the SLA')
        ) AS verdict
    FROM (
        SELECT
            rl.*,
            rl.ledger_refund_id != '' AS has_record,
            has_record AND row_number() OVER (
                PARTITION BY rl.line_subscription_id, rl.ledger_refund_id ORDER BY rl.line_order
            ) = 1 AS accounts,
            r.ours_payment_id,
            r.ours_minor,
            r.ours_currency,
            r.ours_status,
            r.requested_at
        FROM refund_lines AS rl
        LEFT JOIN ledger_refunds AS r
            ON r.subscription_id = rl.line_subscription_id AND r.refund_id = rl.ledger_refund_id
    )
),

-- ====================================================================== the items
items AS {M} (
    -- a payment line (a sibling, or a line without a ledger payment, has no "ours" side)
    SELECT
        verdict.1 AS kind,
        'payment' AS object,
        line_subscription_id AS subscription_id,
        if(has_record, ledger_payment_id, line_payment_id) AS payment_id,
        '' AS refund_id,
        provider_id,
        if(same, ours_status, '') AS ours_status,
        theirs_status,
        if(same, ours_minor, NULL) AS ours_minor,
        if(same, ours_currency, '') AS ours_currency,
        theirs_minor,
        theirs_currency,
        verdict.2 AS repair,
        if(same OR NOT has_record, verdict.3,
           concat('second provider object for payment ', ledger_payment_id, ': ', verdict.3))
           AS detail,
        paid,
        cancellation_party,
        cancellation_reason,
        payment_method_id,
        payment_method_saved
    FROM payment_line_items

    UNION ALL
    -- a refund line ("ours" only when it accounts for the ledger refund)
    SELECT
        verdict.1,
        'refund',
        line_subscription_id,
        if(has_record, ours_payment_id, line_payment_id),
        if(has_record, ledger_refund_id, line_refund_id),
        provider_id,
        if(accounts, ours_status, ''),
        theirs_status,
        if(accounts, ours_minor, NULL),
        if(accounts, ours_currency, ''),
        theirs_minor,
        theirs_currency,
        verdict.2,
        verdict.3,
        0,
        '',
        cancellation_reason,
        '',
        0
    FROM refund_line_items

    UNION ALL
    -- end_of_report: ledger payments judged (requested in the window, not after the report
    -- was taken) that no line was "ours" for
    SELECT
        verdict.1,
        'payment',
        subscription_id,
        payment_id,
        '',
{ours_side_only}
    FROM (
        SELECT
            *,
            ours_status = 'waiting_for_capture' AS held,
            multiIf(
                ours_status = 'canceled' AND ours_provider_id = '',
                    ('matched', 'none', 'never created at the provider: no money on either side'),
                ours_status IN ('succeeded', 'canceled')
                    OR {now:Int64} - if(held AND held_at IS NOT NULL, held_at, requested_at)
                        >= if(held, {hold_sla:Int64}, {pending_sla:Int64}),
                    ('missing_at_provider', 'escalate', 'not in the provider''s report'),
                ('in_flight', 'none', 'not in the provider''s report yet')
            ) AS verdict
        FROM ledger_payments AS p
        LEFT ANTI JOIN (
            SELECT DISTINCT line_subscription_id, ledger_payment_id
            FROM payment_line_items
            WHERE same
        ) AS accounted
            ON accounted.line_subscription_id = p.subscription_id
            AND accounted.ledger_payment_id = p.payment_id
        WHERE requested_at >= {window_start:Int64} AND requested_at < {window_end:Int64}
            AND requested_at <= {now:Int64}
    )

    UNION ALL
    -- end_of_report: judged ledger refunds no line accounted for
    SELECT
        verdict.1,
        'refund',
        subscription_id,
        ours_payment_id,
        refund_id,
{ours_side_only}
    FROM (
        SELECT
            *,
            multiIf(
                ours_status = 'canceled' AND ours_provider_id = '',
                    ('matched', 'none', 'never created at the provider: no money on either side'),
                ours_status IN ('succeeded', 'canceled')
                    OR {now:Int64} - requested_at >= {pending_sla:Int64},
                    ('refund_mismatch', 'escalate', 'not in the provider''s report'),
                ('in_flight', 'none', 'not in the provider''s report yet')
            ) AS verdict
        FROM ledger_refunds AS r
        LEFT ANTI JOIN (
            SELECT line_subscription_id, ledger_refund_id FROM refund_line_items WHERE accounts
        ) AS accounted
            ON accounted.line_subscription_id = r.subscription_id
            AND accounted.ledger_refund_id = r.refund_id
        WHERE requested_at >= {window_start:Int64} AND requested_at < {window_end:Int64}
            AND requested_at <= {now:Int64}
    )
),
-- summarize(): the count of each class, and the succeeded money per object, side and
-- currency (an item's side counts when its status there is succeeded).
summary AS (
    SELECT entry.1 AS section, entry.2 AS key, sum(entry.3) AS value
    FROM items
    ARRAY JOIN [
        ('count', kind, 1),
        (concat(object, 's_ours'), ours_currency,
         if(ours_status = 'succeeded', assumeNotNull(ours_minor), NULL)),
        (concat(object, 's_theirs'), theirs_currency,
         if(theirs_status = 'succeeded', assumeNotNull(theirs_minor), NULL))
    ] AS entry
    WHERE entry.3 IS NOT NULL
    GROUP BY section, key
)
-- The items asked for (all but the omitted classes), then the summary's rows: section in
-- the kind column, key in object, value in ours_minor.
SELECT 'item' AS row_type, {items}
FROM items
WHERE NOT has({omit:Array(String)}, kind)
UNION ALL
SELECT 'summary', section, key, '', '', '', '', '', '', value, '', NULL, '', '', '', 0, '', '',
    '', 0
FROM summary
SETTINGS {settings}
"""


def _sql(materialized: bool) -> str:
    query = _per_object(_per_object(_QUERY, "lines_of", _LINES_OF), "ledger_rows", _LEDGER_ROWS)
    return (
        query.replace("{M}", "MATERIALIZED" if materialized else "")
        .replace("{ours_money}", _OURS_MONEY)
        .replace("{ours_side_only}", _OURS_SIDE_ONLY.strip("\n"))
        .replace("{items}", _ITEMS)
        .replace(
            "{settings}",
            "enable_materialized_cte = 1, join_use_nulls = 0"
            if materialized
            else "join_use_nulls = 0",
        )
    )


def _materialized_ctes(client: ClickHouse) -> bool:
    rows = client.query(
        "SELECT count() FROM system.settings WHERE name = 'enable_materialized_cte'"
    )
    return bool(rows and rows[0][0])


# ---------------------------------------------------------------------------- classifying
def classify(
    client: ClickHouse,
    run_id: str,
    cfg: MatchConfig,
    *,
    include_agreeing: bool = True,
    omit: Collection[str] = (),
) -> MatchResult:
    """The matcher's ``reconcile`` over the run's loaded report and the history: its items
    (in no particular order) and the summary of all of them.

    ``include_agreeing=False`` leaves out the ``matched`` and ``in_flight`` items (only the
    discrepancies leave the engine); ``omit`` leaves out the items of any classes (e.g.
    ``{"matched"}`` to keep the in-flight ones). The summary counts every item either way."""
    omitted = set(omit) | (set() if include_agreeing else set(AGREEING_CLASSES))
    params = {
        "run": run_id,
        "window_start": cfg.window_start,
        "window_end": cfg.window_end,
        "now": cfg.now,
        "pending_sla": cfg.pending_sla_ms,
        "hold_sla": cfg.hold_sla_ms,
        "omit": sorted(omitted),
    }
    rows = client.query(_sql(_materialized_ctes(client)), params)
    items: list[MatchItem] = []
    counts: dict[str, int] = dict.fromkeys(MATCH_CLASSES, 0)
    totals = no_totals()
    for row in rows:
        if row[0] == "item":
            items.append(_item(row[1:], cfg.now))
            continue
        section, key, value = row[1], row[2], int(row[9])
        if section == "count":
            counts[key] = value
        else:
            totals[section][key] = Money(value, key)
    return MatchResult(items=items, summary=Summary(counts=counts, **totals))


def _opt(value: str) -> str | None:
    return value or None


def _item(row: Sequence[Any], now: int) -> MatchItem:
    (
        kind,
        obj,
        sub,
        payment_id,
        refund_id,
        provider_id,
        ours_status,
        theirs_status,
        ours_minor,
        ours_currency,
        theirs_minor,
        theirs_currency,
        repair,
        detail,
        paid,
        cancellation_party,
        cancellation_reason,
        payment_method_id,
        payment_method_saved,
    ) = row
    ours_amount = Money(int(ours_minor), ours_currency) if ours_minor is not None else None
    theirs_amount = Money(int(theirs_minor), theirs_currency) if theirs_minor is not None else None
    observation: PaymentObserved | RefundObserved | None = None
    if repair == "apply_provider_status":
        assert theirs_amount is not None
        if obj == "payment":
            observation = PaymentObserved(
                observation_id=observation_id_for(provider_id, theirs_status),
                subscription_id=sub,
                observed_at=now,
                source="reconciliation",
                payment_id=payment_id,
                provider_payment_id=provider_id,
                status=theirs_status,
                amount=theirs_amount,
                paid=bool(paid),
                cancellation_party=_opt(cancellation_party),
                cancellation_reason=_opt(cancellation_reason),
                payment_method_id=_opt(payment_method_id),
                payment_method_saved=bool(payment_method_saved),
            )
        else:
            observation = RefundObserved(
                observation_id=observation_id_for(provider_id, theirs_status),
                subscription_id=sub,
                observed_at=now,
                source="reconciliation",
                refund_id=refund_id,
                payment_id=payment_id,
                provider_refund_id=provider_id,
                status=theirs_status,
                amount=theirs_amount,
                cancellation_reason=_opt(cancellation_reason),
            )
    return MatchItem(
        kind=kind,
        object=obj,
        subscription_id=_opt(sub),
        payment_id=_opt(payment_id),
        refund_id=_opt(refund_id),
        provider_id=_opt(provider_id),
        ours_status=_opt(ours_status),
        theirs_status=_opt(theirs_status),
        ours_amount=ours_amount,
        theirs_amount=theirs_amount,
        repair=repair,
        observation=observation,
        refund_key=duplicate_refund_key(provider_id)
        if repair == "refund_later_duplicate"
        else None,
        detail=detail,
    )
