"""The SQL behind the analytics pages, over the history in schemas/clickhouse.py.

One SQL text per question, run unchanged on chdb and on a server; parameters are ClickHouse
``{name:Type}`` placeholders bound by the engine. Functions take any ``ClickHouse`` client and
return typed rows.

Correct before merges: the tables are ReplacingMergeTree and may still hold a replayed row
twice, so no query counts raw rows. Each first collapses to its unit (``GROUP BY payment_id``,
``refund_id`` or ``event_id`` with ``any``/``min``: the duplicates are identical) or counts
distinct keys (``uniqExact``); nothing depends on ``OPTIMIZE`` or ``FINAL``.

MRR is the one answer that needs the whole history (every subscription's state at each close),
so closed months are cached in ClickHouse (``MrrCache``: their movements and the
subscriptions' state at the last close, each valid while the rows up to its close are
unchanged, whatever arrives late) and the months after the last cached close are computed from
that state and the rows since.

Conventions: days and months are UTC; amounts are integer minor units and never summed across
currencies; a time window is ``[from_ms, to_ms)`` in epoch milliseconds.

Definitions:
- revenue: gross = payments succeeded in the window (by the day they succeeded), refunds =
  refunds succeeded in the window (by their day), net = gross - refunds; the plan is the one
  the payment was requested for.
- active subscribers at t: subscriptions whose access state at t (the latest access row that
  occurred by t: activation, stacking, admin extend/grant, cancel) covers t; by that state's
  plan. This is the ledger's own view (a full refund of the current period cancels access).
- MRR at a month's close (the first instant of the next month): each subscription's monthly
  price in its access state at that instant (the plan's list price / its months, rounded to a
  minor unit; a stacked period's plan counts from when it was bought; an admin extension keeps
  the price, a grant is free). A row that occurs exactly at a close counts at it; a payment
  prices its period only if its request occurred by then (it always precedes the period).
  Movements against the previous close: new (0 -> >0, reactivations included), expansion,
  contraction, churn (>0 -> 0); churn rate = churned / subscribers at the previous close.
- payment success rate: of the payments that reached a terminal state in the window,
  succeeded / (succeeded + canceled); ledger rejections never reached the provider and are
  not counted. Decline reasons: canceled payments by reason and party.
- refund rate: refunds / gross of the same window, per currency.
- dunning recovery: of the dunning episodes (a renewal's first decline) started in the window,
  recovered = a payment succeeded before access was lost (expired or canceled), lost = access
  was lost first; the rate counts ended episodes only.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from billing.clickhouse import ClickHouse, StoreError
from billing.clock import now_ms as clock_ms
from schemas.clickhouse import COLUMNS

log = logging.getLogger(__name__)

_WINDOW = (
    "occurred_at >= fromUnixTimestamp64Milli({from_ms:Int64}, 'UTC')"
    " AND occurred_at < fromUnixTimestamp64Milli({to_ms:Int64}, 'UTC')"
)

# One row per payment/refund that succeeded in the window (duplicates collapse on the id).
_PAID = f"""
    SELECT payment_id, any(currency) AS currency, any(amount_minor) AS amount_minor,
           toDate(min(occurred_at)) AS day
    FROM payments
    WHERE status = 'succeeded' AND {_WINDOW}
    GROUP BY payment_id
"""
_REFUNDED = f"""
    SELECT refund_id, any(payment_id) AS payment_id, any(currency) AS currency,
           any(amount_minor) AS amount_minor, toDate(min(occurred_at)) AS day
    FROM refunds
    WHERE status = 'succeeded' AND {_WINDOW}
    GROUP BY refund_id
"""

REVENUE_BY_DAY = f"""
WITH
moves AS (
    SELECT day, currency, payment_id, amount_minor AS gross_minor,
           toInt64(0) AS refunds_minor, 1 AS payments, 0 AS refunds
    FROM ({_PAID})
    UNION ALL
    SELECT day, currency, payment_id, toInt64(0), amount_minor, 0, 1
    FROM ({_REFUNDED})
),
plans AS (
    SELECT payment_id, any(plan_id) AS plan_id
    FROM payments
    WHERE status = 'requested' AND payment_id IN (SELECT payment_id FROM moves)
    GROUP BY payment_id
)
SELECT m.day AS day, m.currency AS currency, p.plan_id AS plan_id,
       sum(m.gross_minor) AS gross_minor, sum(m.refunds_minor) AS refunds_minor,
       gross_minor - refunds_minor AS net_minor,
       sum(m.payments) AS payments, sum(m.refunds) AS refunds
FROM moves AS m
LEFT JOIN plans AS p ON m.payment_id = p.payment_id
GROUP BY day, currency, plan_id
ORDER BY day, currency, plan_id
"""

# The cross-store check (event log = PostgreSQL = ClickHouse): sums per currency and day.
TOTALS_BY_DAY = f"""
SELECT day, currency, sum(gross_minor) AS gross_minor, sum(refunds_minor) AS refunds_minor,
       gross_minor - refunds_minor AS net_minor, sum(payments) AS payments,
       sum(refunds) AS refunds
FROM (
    SELECT day, currency, amount_minor AS gross_minor, toInt64(0) AS refunds_minor,
           1 AS payments, 0 AS refunds
    FROM ({_PAID})
    UNION ALL
    SELECT day, currency, toInt64(0), amount_minor, 0, 1
    FROM ({_REFUNDED})
)
GROUP BY day, currency
ORDER BY day, currency
"""

# Each subscription's access state at t: its latest access row (by version) that occurred by
# then (argMax over a replayed duplicate picks the same values).
ACTIVE_SUBSCRIBERS = """
WITH fromUnixTimestamp64Milli({at_ms:Int64}, 'UTC') AS at_time
SELECT grouping(plan_id) AS is_total, plan_id, uniqExact(subscription_id) AS subscribers
FROM (
    SELECT subscription_id,
           argMax(plan_id, version) AS plan_id,
           argMax(access_from, version) AS access_from,
           argMax(access_until, version) AS access_until
    FROM subscription_periods
    WHERE occurred_at <= at_time
    GROUP BY subscription_id
)
WHERE access_from <= at_time AND at_time < access_until
GROUP BY GROUPING SETS ((plan_id), ())
ORDER BY is_total, plan_id
"""

# Card checks (a trial's or the wallet's hold, released at once: issue 16) are not charges:
# neither a success nor a failure of one.
_CARD_CHECKS = "SELECT payment_id FROM payments WHERE kind IN ('trial', 'verify')"

# Free trials started per day, and how many converted: a renewal of the subscription (its
# first charge) succeeded after the trial started (issue 16).
TRIALS_BY_DAY = """
SELECT toDate(t.started) AS day, count() AS trials,
       countIf(c.first_paid IS NOT NULL AND c.first_paid >= t.started) AS converted
FROM (
    SELECT subscription_id, min(access_from) AS started
    FROM subscription_periods
    WHERE change = 'trial'
    GROUP BY subscription_id
    HAVING started >= fromUnixTimestamp64Milli({from_ms:Int64}, 'UTC')
        AND started < fromUnixTimestamp64Milli({to_ms:Int64}, 'UTC')
) AS t
LEFT JOIN (
    SELECT r.subscription_id AS subscription_id, toNullable(min(s.occurred_at)) AS first_paid
    FROM payments AS s
    INNER JOIN (
        SELECT DISTINCT payment_id, subscription_id FROM payments
        WHERE kind = 'renewal' AND status = 'requested'
    ) AS r ON r.payment_id = s.payment_id
    WHERE s.status = 'succeeded'
    GROUP BY r.subscription_id
) AS c ON c.subscription_id = t.subscription_id
GROUP BY day
ORDER BY day
"""

# Promo discounts (issue 16) given on charges that succeeded in the window, per code and
# currency: the plan's price less the charge, read from each discounted request in the event
# log (its ``promo`` and ``plan_amount``), joined to the succeeded payments. Revenue itself
# needs nothing: it is what was charged.
DISCOUNTS = """
SELECT r.code AS code, r.currency AS currency, count() AS charges,
       sum(r.discount) AS discount_minor, sum(r.charged) AS charged_minor
FROM (
    SELECT payment_id,
           any(JSONExtractString(body, 'request', 'promo', 'code')) AS code,
           any(JSONExtractString(body, 'request', 'amount', 'currency')) AS currency,
           any(JSONExtractInt(body, 'request', 'plan_amount', 'amount_minor')
               - JSONExtractInt(body, 'request', 'amount', 'amount_minor')) AS discount,
           any(JSONExtractInt(body, 'request', 'amount', 'amount_minor')) AS charged
    FROM events
    WHERE event_type = 'PaymentRequested'
        AND JSONExtractString(body, 'request', 'promo', 'code') != ''
    GROUP BY payment_id
) AS r
INNER JOIN (
    SELECT DISTINCT payment_id FROM payments
    WHERE status = 'succeeded'
        AND occurred_at >= fromUnixTimestamp64Milli({from_ms:Int64}, 'UTC')
        AND occurred_at < fromUnixTimestamp64Milli({to_ms:Int64}, 'UTC')
) AS s ON s.payment_id = r.payment_id
GROUP BY code, currency
ORDER BY code, currency
"""

PAYMENT_SUCCESS_BY_DAY = f"""
SELECT day, countIf(outcome = 'succeeded') AS succeeded,
       countIf(outcome = 'canceled') AS canceled
FROM (
    SELECT payment_id, argMin(status, occurred_at) AS outcome,
           toDate(min(occurred_at)) AS day
    FROM payments
    WHERE status IN ('succeeded', 'canceled') AND {_WINDOW}
        AND payment_id NOT IN ({_CARD_CHECKS})
    GROUP BY payment_id
)
GROUP BY day
ORDER BY day
"""

DECLINE_REASONS = f"""
SELECT reason, party, uniqExact(payment_id) AS payments
FROM payments
WHERE status = 'canceled' AND {_WINDOW} AND reason != 'card_check_released'
GROUP BY reason, party
ORDER BY payments DESC, reason, party
"""


# MRR, vectorised (no per-subscription arrays or lambdas, no self-join):
# 1. access rows priced: the plan's list price / months of the payment that opened the row
#    (an ANY join on the payment's request, which precedes the row), carried over NULLs along
#    the subscription's versions (an admin extension keeps the price; a grant or a cancel sets
#    0);
# 2. each row holds from when it occurred until the subscription's next row (by version) and
#    counts inside its access window: [lo, hi);
# 3. the closes it covers are a range of indexes computed from lo and hi (close j is the first
#    instant of month {from_month} + j; close 0, the first movement's baseline);
# 4. each (subscription, close) value is also the opening of the next month, so one GROUP BY
#    gives every (previous, current) pair.
# A replayed duplicate of an access row holds from its own time to its copy's: an empty span.
# A row that occurs exactly at a close counts at that close.
def _priced(rows: str, requests: str) -> str:
    """Access rows that satisfy ``rows`` (over ``s``), priced from the payment requests that
    satisfy ``requests``: (sub, version, occurred_at, access_from, access_until, price,
    price_currency), price and currency NULL where the row sets neither."""
    return f"""
    SELECT s.subscription_id AS sub, s.version AS version, s.occurred_at AS occurred_at,
           s.access_from AS access_from, s.access_until AS access_until,
           multiIf(
               s.change IN ('activated', 'stacked') AND pr.payment_id != ''
                   AND pr.occurred_at <= s.occurred_at,
               toNullable(toInt64(round(
                   pr.monthly_base / greatest(pr.period_months, 1)))),
               s.change IN ('granted', 'canceled', 'trial'), toNullable(toInt64(0)),
               NULL
           ) AS price,
           if(pr.payment_id != '' AND pr.occurred_at <= s.occurred_at,
              toNullable(toString(pr.currency)), NULL) AS price_currency
    FROM subscription_periods AS s
    ANY LEFT JOIN (
        -- An upgrade's prorated charge is not its worth: its plan's full price is. A promo
        -- code's discounted charge is (issue 16): MRR after discount.
        SELECT payment_id, if(kind = 'upgrade', list_amount_minor, amount_minor) AS monthly_base,
               currency, period_months, occurred_at
        FROM payments
        WHERE status = 'requested' AND {requests}
    ) AS pr ON pr.payment_id = s.payment_id
    WHERE {rows}"""


# Every row up to the last close, as they hold (a row until the subscription's next one).
_HOLDING = """
rows AS (
    SELECT sub, occurred_at, access_from, access_until,
           leadInFrame(occurred_at, 1, toDateTime64('2200-01-01', 3, 'UTC')) OVER w_next
               AS valid_to,
           anyLast(price) OVER w_upto AS monthly,
           anyLast(price_currency) OVER w_upto AS carried_currency
    FROM priced
    WINDOW
        w_next AS (PARTITION BY sub ORDER BY version
                   ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING),
        w_upto AS (PARTITION BY sub ORDER BY version
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
covered AS (
    -- closes j with lo <= close_j < hi: j in [closes before lo, closes before hi)
    SELECT sub, ifNull(carried_currency, '') AS currency,
           assumeNotNull(monthly) AS mrr, close_index
    FROM rows
    ARRAY JOIN range(
        if(greatest(occurred_at, access_from) <= first_close, 0,
           least(months + 1, toUInt32(dateDiff('month', first_day, toStartOfMonth(
               greatest(occurred_at, access_from) - toIntervalMillisecond(1), 'UTC'))) + 1)),
        if(least(valid_to, access_until) <= first_close, 0,
           least(months + 1, toUInt32(dateDiff('month', first_day, toStartOfMonth(
               least(valid_to, access_until) - toIntervalMillisecond(1), 'UTC'))) + 1))
    ) AS close_index
    WHERE monthly > 0
)"""

_MONTHS = """
{from_month:Date} AS first_day,
toDateTime64(first_day, 3, 'UTC') AS first_close,
toUInt32({months:UInt16}) AS months,
toDateTime64(addMonths(first_day, toInt32(months)), 3, 'UTC') AS last_close"""

_MOVEMENTS = """
SELECT addMonths(first_day, toInt32(j) - 1) AS month, currency,
       sum(cur_mrr) AS mrr_minor,
       sumIf(cur_mrr, prev_mrr = 0) AS new_minor,
       sumIf(cur_mrr - prev_mrr, prev_mrr > 0 AND cur_mrr > prev_mrr) AS expansion_minor,
       sumIf(prev_mrr - cur_mrr, cur_mrr > 0 AND cur_mrr < prev_mrr) AS contraction_minor,
       sumIf(prev_mrr, cur_mrr = 0) AS churn_minor,
       countIf(prev_mrr > 0) AS subscribers_at_start,
       countIf(cur_mrr > 0) AS subscribers,
       countIf(prev_mrr = 0) AS new_subscribers,
       countIf(cur_mrr = 0) AS churned_subscribers
FROM pairs
GROUP BY j, currency
ORDER BY month, currency
"""

_PAIRS = """
    SELECT sub, currency, j, sum(c) AS cur_mrr, sum(p) AS prev_mrr
    FROM covered
    ARRAY JOIN [close_index, close_index + 1] AS j, [mrr, 0] AS c, [0, mrr] AS p
    WHERE j BETWEEN 1 AND months
    GROUP BY sub, currency, j"""

# The whole history up to the last close.
MRR_MOVEMENTS = f"""
WITH
{_MONTHS},
priced AS ({_priced("s.occurred_at <= last_close", "occurred_at <= last_close")}
),
{_HOLDING},
pairs AS ({_PAIRS}
)
{_MOVEMENTS}"""

# The same figures from the subscriptions' state at close 0 (``mrr_state`` build
# {seed:String}, see MrrCache) and the rows after it. A subscription with rows since goes
# through the same steps from its state's row (the latest by then, with the price and currency
# carried to it); one without any holds that row at every close.
_SINCE = "s.occurred_at > first_close AND s.occurred_at <= last_close"
MRR_MOVEMENTS_SEEDED = f"""
WITH
{_MONTHS},
touched AS (
    SELECT subscription_id FROM subscription_periods AS s WHERE {_SINCE}
),
priced AS (
    SELECT subscription_id AS sub, version, occurred_at, access_from, access_until,
           monthly AS price, currency AS price_currency
    FROM mrr_state
    WHERE build_id = {{seed:String}} AND subscription_id IN touched
    UNION ALL{
    _priced(
        _SINCE,
        "occurred_at <= last_close AND payment_id IN ("
        f"SELECT payment_id FROM subscription_periods AS s WHERE {_SINCE})",
    )
}
),
{_HOLDING},
pairs AS ({_PAIRS}
    UNION ALL
    SELECT '', currency, j, cur_mrr, prev_mrr
    FROM (
        SELECT ifNull(currency, '') AS currency, j,
               toDateTime64(addMonths(first_day, toInt32(j)), 3, 'UTC') AS close_j,
               toDateTime64(addMonths(first_day, toInt32(j) - 1), 3, 'UTC') AS opening_j,
               if(access_from <= close_j AND close_j < access_until,
                  assumeNotNull(monthly), 0) AS cur_mrr,
               if(access_from <= opening_j AND opening_j < access_until,
                  assumeNotNull(monthly), 0) AS prev_mrr
        FROM mrr_state
        ARRAY JOIN range(1, months + 1) AS j
        WHERE build_id = {{seed:String}} AND monthly > 0 AND access_until > first_close
          AND subscription_id NOT IN touched
    )
    WHERE cur_mrr > 0 OR prev_mrr > 0
)
{_MOVEMENTS}"""

# The state at a close (the first instant of {close:Date}) as a new ``mrr_state`` build {build}:
# per subscription its latest row by version and the last price and currency set up to it
# (what ``anyLast`` carries above). From the whole history:
_STATE = """
SELECT {{build:String}}, sub, max(version), argMax(occurred_at, version),
       argMax(access_from, version), argMax(access_until, version),
       argMaxIf(price, version, isNotNull(price)),
       argMaxIf(price_currency, version, isNotNull(price_currency))
FROM ({rows})
GROUP BY sub"""
_STATE_INSERT = """
INSERT INTO mrr_state (build_id, subscription_id, version, occurred_at, access_from,
                       access_until, monthly, currency)"""

MRR_STATE_BUILD = f"""{_STATE_INSERT}
WITH toDateTime64({{close:Date}}, 3, 'UTC') AS last_close
{_STATE.format(rows=_priced("s.occurred_at <= last_close", "occurred_at <= last_close"))}
SETTINGS insert_deduplicate = 0
"""

# ... or from the build at an earlier close ({seed:String} at {seed_from:Date}) and the rows
# since: the state's row and those rows for a subscription with rows since, its state's row
# as it is for the others.
_SINCE_SEED = "s.occurred_at > first_close AND s.occurred_at <= last_close"
MRR_STATE_BUILD_SEEDED = f"""{_STATE_INSERT}
WITH
toDateTime64({{seed_from:Date}}, 3, 'UTC') AS first_close,
toDateTime64({{close:Date}}, 3, 'UTC') AS last_close,
touched AS (
    SELECT subscription_id FROM subscription_periods AS s WHERE {_SINCE_SEED}
)
{
    _STATE.format(
        rows='''
    SELECT subscription_id AS sub, version, occurred_at, access_from, access_until,
           monthly AS price, currency AS price_currency
    FROM mrr_state
    WHERE build_id = {seed:String} AND subscription_id IN touched
    UNION ALL'''
        + _priced(
            _SINCE_SEED,
            "occurred_at <= last_close AND payment_id IN ("
            f"SELECT payment_id FROM subscription_periods AS s WHERE {_SINCE_SEED})",
        )
    )
}
UNION ALL
SELECT {{build:String}}, subscription_id, version, occurred_at, access_from, access_until,
       monthly, currency
FROM mrr_state
WHERE build_id = {{seed:String}} AND subscription_id NOT IN touched
SETTINGS insert_deduplicate = 0
"""

# What MRR up to a close is computed from, per month of occurrence (a row at exactly a close
# belongs to the month it closes): rows, and sums of versions and times. Any row added, even
# one identical to a row already there, changes it; so does a merge that drops a duplicate
# (the cache then recomputes what was right anyway).
MRR_FINGERPRINT = """
SELECT bucket, sum(n), sum(versions), sum(times)
FROM (
    SELECT toStartOfMonth(occurred_at - toIntervalMillisecond(1), 'UTC') AS bucket,
           count() AS n, sum(version) AS versions,
           sum(toUnixTimestamp64Milli(occurred_at)) AS times
    FROM subscription_periods
    GROUP BY bucket
    UNION ALL
    SELECT toStartOfMonth(occurred_at - toIntervalMillisecond(1), 'UTC') AS bucket,
           count(), sum(version), sum(toUnixTimestamp64Milli(occurred_at))
    FROM payments
    WHERE status = 'requested'
    GROUP BY bucket
)
GROUP BY bucket
ORDER BY bucket
"""

MRR_CACHED = """
SELECT month, fingerprint, currency, mrr_minor, new_minor, expansion_minor, contraction_minor,
       churn_minor, subscribers_at_start, subscribers, new_subscribers, churned_subscribers
FROM mrr_months
WHERE month IN {months:Array(Date)}
ORDER BY month, built_at DESC
"""

MRR_STATE_FIND = """
SELECT build_id, subscriptions
FROM mrr_states
WHERE close = {close:Date} AND fingerprint = {fingerprint:String}
ORDER BY built_at DESC
"""

MRR_STATE_ROWS = "SELECT count() FROM mrr_state WHERE build_id = {build:String}"

MRR_STATES_LISTED = "SELECT close, build_id FROM mrr_states ORDER BY close DESC, built_at DESC"


# Dunning episodes (a renewal's first decline) started in the window, each with the first
# outcome after it: any succeeded payment (a retry or the user paying) or the loss of access.
DUNNING_RECOVERY = f"""
WITH
episodes AS (
    SELECT event_id, any(subscription_id) AS subscription_id, min(occurred_at) AS started_at
    FROM subscription_changes
    WHERE change = 'renewal_failed' AND attempt = 1 AND {_WINDOW}
    GROUP BY event_id
),
outcomes AS (
    SELECT subscription_id, occurred_at AS at, 'recovered' AS outcome
    FROM payments
    WHERE status = 'succeeded'
      AND subscription_id IN (SELECT subscription_id FROM episodes)
    UNION ALL
    SELECT subscription_id, occurred_at, 'lost'
    FROM subscription_changes
    WHERE change IN ('expired', 'canceled')
      AND subscription_id IN (SELECT subscription_id FROM episodes)
)
SELECT toStartOfMonth(e.started_at) AS month,
       count() AS episodes,
       countIf(o.outcome = 'recovered') AS recovered,
       countIf(o.outcome = 'lost') AS lost
FROM episodes AS e
ASOF LEFT JOIN outcomes AS o
    ON e.subscription_id = o.subscription_id AND e.started_at <= o.at
GROUP BY month
ORDER BY month
"""


# ------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class RevenueRow:
    day: date
    currency: str
    plan_id: str  # '' when the payment's request is not in the history
    gross_minor: int
    refunds_minor: int
    net_minor: int
    payments: int
    refunds: int


@dataclass(frozen=True)
class DayTotals:
    day: date
    currency: str
    gross_minor: int
    refunds_minor: int
    net_minor: int
    payments: int
    refunds: int


@dataclass(frozen=True)
class ActiveSubscribers:
    at_ms: int
    total: int
    by_plan: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SuccessRateRow:
    day: date
    succeeded: int
    canceled: int

    @property
    def rate(self) -> float | None:
        done = self.succeeded + self.canceled
        return self.succeeded / done if done else None


@dataclass(frozen=True)
class DeclineReason:
    reason: str
    party: str
    payments: int
    share: float  # of all canceled payments in the window


@dataclass(frozen=True)
class MrrMovement:
    month: date
    currency: str
    mrr_minor: int  # at the month's close
    new_minor: int
    expansion_minor: int
    contraction_minor: int
    churn_minor: int
    subscribers_at_start: int
    subscribers: int
    new_subscribers: int
    churned_subscribers: int

    @property
    def net_new_minor(self) -> int:
        return self.new_minor + self.expansion_minor - self.contraction_minor - self.churn_minor

    @property
    def churn_rate(self) -> float | None:
        if not self.subscribers_at_start:
            return None
        return self.churned_subscribers / self.subscribers_at_start


@dataclass(frozen=True)
class RefundRate:
    currency: str
    gross_minor: int
    refunds_minor: int
    payments: int
    refunds: int

    @property
    def rate(self) -> float | None:
        return self.refunds_minor / self.gross_minor if self.gross_minor else None


@dataclass(frozen=True)
class DunningRecovery:
    month: date  # when the episodes started
    episodes: int
    recovered: int
    lost: int

    @property
    def open(self) -> int:
        return self.episodes - self.recovered - self.lost

    @property
    def rate(self) -> float | None:
        """Recovered of the episodes that ended (open ones are not counted yet)."""
        ended = self.recovered + self.lost
        return self.recovered / ended if ended else None


@dataclass(frozen=True)
class Overview:
    """What the overview page shows."""

    revenue: list[RevenueRow]
    active: ActiveSubscribers
    success: list[SuccessRateRow]
    declines: list[DeclineReason]
    mrr: list[MrrMovement]
    refund_rate: list[RefundRate]
    dunning: list[DunningRecovery]


# ----------------------------------------------------------------------------- functions
def _window(from_ms: int, to_ms: int) -> dict[str, Any]:
    return {"from_ms": from_ms, "to_ms": to_ms}


def revenue_by_day(ch: ClickHouse, from_ms: int, to_ms: int) -> list[RevenueRow]:
    return [
        RevenueRow(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]))
        for r in ch.query(REVENUE_BY_DAY, _window(from_ms, to_ms))
    ]


def totals_by_day(ch: ClickHouse, from_ms: int, to_ms: int) -> list[DayTotals]:
    return [
        DayTotals(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]))
        for r in ch.query(TOTALS_BY_DAY, _window(from_ms, to_ms))
    ]


def refund_rate(ch: ClickHouse, from_ms: int, to_ms: int) -> list[RefundRate]:
    per: dict[str, list[int]] = {}
    for t in totals_by_day(ch, from_ms, to_ms):
        acc = per.setdefault(t.currency, [0, 0, 0, 0])
        acc[0] += t.gross_minor
        acc[1] += t.refunds_minor
        acc[2] += t.payments
        acc[3] += t.refunds
    return [RefundRate(cur, *acc) for cur, acc in sorted(per.items())]


def active_subscribers(ch: ClickHouse, at_ms: int) -> ActiveSubscribers:
    total = 0
    by_plan: dict[str, int] = {}
    for is_total, plan_id, n in ch.query(ACTIVE_SUBSCRIBERS, {"at_ms": at_ms}):
        if is_total:
            total = int(n)
        else:
            by_plan[plan_id] = int(n)
    return ActiveSubscribers(at_ms=at_ms, total=total, by_plan=by_plan)


def payment_success(ch: ClickHouse, from_ms: int, to_ms: int) -> list[SuccessRateRow]:
    return [
        SuccessRateRow(r[0], int(r[1]), int(r[2]))
        for r in ch.query(PAYMENT_SUCCESS_BY_DAY, _window(from_ms, to_ms))
    ]


@dataclass(frozen=True)
class TrialsRow:
    day: date  # when the trials started
    trials: int
    converted: int  # their first charge succeeded

    @property
    def conversion(self) -> float | None:
        return self.converted / self.trials if self.trials else None


def trials(ch: ClickHouse, from_ms: int, to_ms: int) -> list[TrialsRow]:
    """Free trials started in the window, by day, with how many converted so far."""
    return [
        TrialsRow(r[0], int(r[1]), int(r[2]))
        for r in ch.query(TRIALS_BY_DAY, _window(from_ms, to_ms))
    ]


@dataclass(frozen=True)
class DiscountRow:
    code: str
    currency: str
    charges: int  # succeeded charges the code discounted
    discount_minor: int  # taken off them
    charged_minor: int  # what they charged


def discounts(ch: ClickHouse, from_ms: int, to_ms: int) -> list[DiscountRow]:
    """Promo discounts on the charges that succeeded in the window, per code (issue 16)."""
    return [
        DiscountRow(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]))
        for r in ch.query(DISCOUNTS, _window(from_ms, to_ms))
    ]


def decline_reasons(ch: ClickHouse, from_ms: int, to_ms: int) -> list[DeclineReason]:
    rows = ch.query(DECLINE_REASONS, _window(from_ms, to_ms))
    total = sum(int(r[2]) for r in rows)
    return [DeclineReason(r[0], r[1], int(r[2]), int(r[2]) / total) for r in rows]


def mrr_movements(
    ch: ClickHouse,
    from_month: date,
    months: int,
    *,
    now_ms: int | None = None,
    cache: bool = True,
) -> list[MrrMovement]:
    """Movements of each month from ``from_month`` (its first day is used) for ``months``.

    With ``cache`` (the default) closed months come from the MRR cache while the history they
    were computed from is unchanged, and the months after the last cached close are computed
    from the subscriptions' state at that close; see ``MrrCache``. ``now_ms`` (default: the
    clock) says which months are closed. Without ``cache``: one query over the whole history.
    """
    if not 1 <= months <= 120:
        raise ValueError("months must be within 1..120")
    first = from_month.replace(day=1)
    if not cache:
        return _mrr_query(ch, first, months, None)
    return MrrCache(ch, clock_ms() if now_ms is None else now_ms).movements(first, months)


def _mrr_query(
    ch: ClickHouse, first: date, months: int, seed: MrrState | None
) -> list[MrrMovement]:
    params: dict[str, Any] = {"from_month": first, "months": months}
    if seed is not None:
        params["seed"] = seed.build_id
    sql = MRR_MOVEMENTS if seed is None else MRR_MOVEMENTS_SEEDED
    return [MrrMovement(r[0], r[1], *(int(v) for v in r[2:])) for r in ch.query(sql, params)]


# --------------------------------------------------------------------------- the MRR cache
def _add_months(d: date, n: int) -> date:
    index = d.year * 12 + d.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def _date_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


class Fingerprints:
    """MRR_FINGERPRINT's buckets, and the digest of those up to a month's close."""

    def __init__(self, buckets: list[tuple[Any, ...]]) -> None:
        self.months: list[date] = []
        self.digests: list[str] = []
        running = hashlib.blake2b(digest_size=16)
        for bucket, n, versions, times in sorted(buckets):
            running.update(f"{bucket}:{n}:{versions}:{times};".encode())
            self.months.append(bucket)
            self.digests.append(running.copy().hexdigest())
        self.empty = hashlib.blake2b(digest_size=16).hexdigest()

    def upto(self, month: date) -> str:
        """What the MRR at ``month``'s close is computed from."""
        i = bisect.bisect_right(self.months, month)
        return self.digests[i - 1] if i else self.empty


@dataclass(frozen=True)
class MrrState:
    """An ``mrr_state`` build: the subscriptions' state at the first instant of ``close``."""

    build_id: str
    close: date


_BUILD_ID = re.compile(r"^[0-9]{13}[0-9a-f]{12}$")

# Answers that needed a computation, by (database, first month, months, fingerprint of the rows
# up to the last close): this process answers the same read again from memory while no row
# behind it has changed.
MEMO_SIZE = 32
_MEMO: OrderedDict[tuple[str, date, int, str], tuple[MrrMovement, ...]] = OrderedDict()
_MEMO_LOCK = threading.Lock()


_TROUBLES: set[str] = set()


def _cache_trouble(message: str, exc: Exception) -> None:
    """Log a cache failure (the answer is computed anyway): a warning the first time in this
    process (a store without migration 3, a read-only user), then at debug level."""
    first = message not in _TROUBLES
    _TROUBLES.add(message)
    log.log(logging.WARNING if first else logging.DEBUG, message, exc)


def forget_mrr_answers() -> None:
    """Empty this process's memo of MRR answers (benchmarks: time the computation)."""
    with _MEMO_LOCK:
        _MEMO.clear()


STATE_KEEP_S = 600  # a superseded state build stays this long: readers may still be on it
STATE_CLOSES = 3  # closes whose newest state build is kept


class MrrCache:
    """MRR movements of closed months kept in ClickHouse (schemas/clickhouse.py migration 3).

    - ``mrr_months``: each closed month's movements, under the fingerprint (MRR_FINGERPRINT)
      of the rows up to its close. A late row (an access change or a payment request that
      occurred before a close, arriving after the month was cached) changes the fingerprint of
      its month and every later one, so those are recomputed on the next read; nothing has to
      tell the cache. Figures are only stored when the fingerprint read before computing them
      is still the same afterwards (no row arrived in between).
    - ``mrr_state``/``mrr_states``: the subscriptions' state at the latest close (one row each:
      latest access row, carried price), built when a month closes, from the state at the close
      before. The months after it, the current one above all, are computed from that state and
      the rows since, not from the whole history; so are the months after a late row when the
      state before it is one of the STATE_CLOSES kept.

    A read: one fingerprint query, the cached months, then one query for the months from the
    first one not cached (seeded by the state at its opening when there is a valid one), unless
    this process computed them from the same rows already (``_MEMO``).
    Reads and writes of the cache that fail (a store without migration 3, a read-only user)
    are logged and the figures computed as without it.
    """

    def __init__(self, ch: ClickHouse, now_ms: int) -> None:
        self.ch = ch
        self.now_ms = now_ms
        self.current_month = month_start(now_ms)

    def closed(self, month: date) -> bool:
        return _date_ms(_add_months(month, 1)) <= self.now_ms

    def movements(self, first: date, months: int) -> list[MrrMovement]:
        wanted = [_add_months(first, i) for i in range(months)]
        try:
            prints = self.fingerprints()
            cached = self.cached_months([m for m in wanted if self.closed(m)], prints)
        except StoreError as exc:
            _cache_trouble("MRR cache unreadable, computing without it: %s", exc)
            return _mrr_query(self.ch, first, months, None)
        todo = next((i for i, m in enumerate(wanted) if m not in cached), None)
        if todo is None:
            return [row for m in wanted for row in cached[m]]
        # Only open months left, as last computed from the same rows (a dashboard polling
        # between two batches of events): nothing to compute, nor to cache.
        key = (self.ch.database, first, months, prints.upto(wanted[-1]))
        if not any(self.closed(m) for m in wanted[todo:]):
            with _MEMO_LOCK:
                if key in _MEMO:
                    _MEMO.move_to_end(key)
                    return list(_MEMO[key])
        start = wanted[todo]
        try:
            seed = self.state(start, prints.upto(_add_months(start, -1)))
        except StoreError as exc:
            _cache_trouble("MRR cache state unreadable: %s", exc)
            seed = None
        computed = _mrr_query(self.ch, start, months - todo, seed)
        try:
            self.store(wanted[todo:], computed, prints, seed)
        except StoreError as exc:
            _cache_trouble("MRR cache not updated: %s", exc)
        result = [row for m in wanted[:todo] for row in cached[m]] + computed
        with _MEMO_LOCK:
            _MEMO[key] = tuple(result)
            while len(_MEMO) > MEMO_SIZE:
                _MEMO.popitem(last=False)
        return result

    # ----------------------------------------------------------------------------- reads
    def fingerprints(self) -> Fingerprints:
        return Fingerprints(self.ch.query(MRR_FINGERPRINT))

    def cached_months(
        self, months: list[date], prints: Fingerprints
    ) -> dict[date, list[MrrMovement]]:
        """The cached figures of these months that are still valid (empty list: no MRR)."""
        if not months:
            return {}
        out: dict[date, list[MrrMovement]] = {}
        for month, fingerprint, *arrays in self.ch.query(MRR_CACHED, {"months": months}):
            if month in out or fingerprint != prints.upto(month):
                continue
            out[month] = [
                MrrMovement(month, cur, *(int(v) for v in values))
                for cur, *values in zip(*arrays, strict=True)
            ]
        return out

    def state(self, close: date, fingerprint: str) -> MrrState | None:
        """A complete state build at ``close`` computed from the history as it is now."""
        found = self.ch.query(MRR_STATE_FIND, {"close": close, "fingerprint": fingerprint})
        for build_id, subscriptions in found:
            rows = self.ch.query(MRR_STATE_ROWS, {"build": build_id})[0][0]
            if int(rows) == int(subscriptions):
                return MrrState(build_id, close)
        return None

    # ---------------------------------------------------------------------------- writes
    def store(
        self,
        months: list[date],
        computed: list[MrrMovement],
        prints: Fingerprints,
        seed: MrrState | None,
    ) -> None:
        """Cache the closed ones of ``months`` (just computed as ``computed``) and, when the
        latest closed month is among them, the state at its close."""
        closed = [m for m in months if self.closed(m)]
        if not closed:
            return
        after = self.fingerprints()
        still = [m for m in closed if after.upto(m) == prints.upto(m)]
        if not still:
            return
        built_at = datetime.now(UTC)
        per: dict[date, list[MrrMovement]] = {m: [] for m in still}
        for row in computed:
            if row.month in per:
                per[row.month].append(row)
        self.ch.insert(
            "mrr_months",
            [
                (
                    m,
                    prints.upto(m),
                    built_at,
                    *(list(col) for col in _mrr_columns(per[m])),
                )
                for m in still
            ],
            COLUMNS["mrr_months"],
        )
        latest = _add_months(self.current_month, -1)
        if latest in still:
            self.build_state(_add_months(latest, 1), prints.upto(latest), seed)

    def build_state(self, close: date, fingerprint: str, seed: MrrState | None) -> None:
        if self.state(close, fingerprint) is not None:
            return
        build_id = f"{int(time.time() * 1000):013d}{uuid.uuid4().hex[:12]}"
        params: dict[str, Any] = {"close": close, "build": build_id}
        if seed is not None:
            params |= {"seed": seed.build_id, "seed_from": seed.close}
        self.ch.command(MRR_STATE_BUILD if seed is None else MRR_STATE_BUILD_SEEDED, params)
        rows = int(self.ch.query(MRR_STATE_ROWS, {"build": build_id})[0][0])
        if self.fingerprints().upto(_add_months(close, -1)) == fingerprint:
            self.ch.insert(
                "mrr_states",
                [(close, build_id, fingerprint, rows, datetime.now(UTC))],
                COLUMNS["mrr_states"],
            )
        self.drop_old_states(keep=build_id)

    def drop_old_states(self, keep: str) -> None:
        """Keep ``keep`` and the newest build at each of the STATE_CLOSES latest closes (a late
        row for a recent month is recomputed from the state before it, not from scratch); drop
        the other builds once older than STATE_KEEP_S (a reader may have just found one)."""
        kept = {keep}
        closes: set[date] = set()
        for close, build_id in self.ch.query(MRR_STATES_LISTED):
            if close not in closes and len(closes) < STATE_CLOSES:
                closes.add(close)
                kept.add(str(build_id))
        horizon = int(time.time() * 1000) - STATE_KEEP_S * 1000
        for (build_id,) in self.ch.query("SELECT DISTINCT build_id FROM mrr_state"):
            build = str(build_id)
            if build in kept or not _BUILD_ID.match(build) or int(build[:13]) > horizon:
                continue
            self.ch.command(f"ALTER TABLE mrr_state DROP PARTITION '{build}'")


def _mrr_columns(rows: list[MrrMovement]) -> list[tuple[Any, ...]]:
    """``mrr_months``' arrays (currency, the figures) of one month's rows."""
    cols = COLUMNS["mrr_months"]
    fields = cols[cols.index("currency") :]  # the figures follow the month's own columns
    return [tuple(getattr(r, f) for r in rows) for f in fields]


def dunning_recovery(ch: ClickHouse, from_ms: int, to_ms: int) -> list[DunningRecovery]:
    return [
        DunningRecovery(r[0], int(r[1]), int(r[2]), int(r[3]))
        for r in ch.query(DUNNING_RECOVERY, _window(from_ms, to_ms))
    ]


def month_start(ms: int, back: int = 0) -> date:
    """The first day (UTC) of the month ``back`` months before the one holding ``ms``."""
    d = datetime.fromtimestamp(ms / 1000, tz=UTC).date()
    index = d.year * 12 + d.month - 1 - back
    return date(index // 12, index % 12 + 1, 1)


def overview(ch: ClickHouse, now_ms: int, *, days: int = 30, months: int = 12) -> Overview:
    """The overview page: the last ``days`` of revenue, success and declines, subscribers now,
    and MRR movements of the last ``months`` months (the current one included)."""
    since = now_ms - days * 86_400_000
    return Overview(
        revenue=revenue_by_day(ch, since, now_ms),
        active=active_subscribers(ch, now_ms),
        success=payment_success(ch, since, now_ms),
        declines=decline_reasons(ch, since, now_ms),
        mrr=mrr_movements(ch, month_start(now_ms, months - 1), months, now_ms=now_ms),
        refund_rate=refund_rate(ch, since, now_ms),
        dunning=dunning_recovery(ch, since, now_ms),
    )
