"""The nightly reconciliation cannot silently skip a day: a watchdog re-runs a day whose
nightly run failed, stayed ``feeding``/``matching`` (its leader died mid-feed) or ended
``incomplete``, with exponential backoff, until one run of that day is complete.

Runs of a day are found by their schedule key: ``nightly:YYYY-MM-DD`` for the crontab's run,
``nightly:YYYY-MM-DD:retry:N`` for the watchdog's N-th re-run (a unique key, so two watchdogs
can never start the same attempt). A run still ``feeding`` or ``matching`` after
``stale_s`` is taken as dead and marked failed before it is re-run. A day the crontab never
ran at all (its leader was down at the scheduled time) is started under ``nightly:DAY``:
a gap between days that have runs, and yesterday once its night is over when the crontab
ran the day before (``missing_days``: so a deployment with the nightly run off, or a new
one, is never backfilled). ``due`` and ``missing_days`` are pure; the leader (``billing
maintain``, one process by a PostgreSQL advisory lock) calls ``watch``.

``last_complete_runs`` gives, per day, when its last complete run finished;
``missing_complete_days`` the days (in the lookback) still without a complete run, whose
count is the gauge ``billing_recon_days_without_complete_run`` that the "a day without a
complete reconciliation" alert reads (a failed day between complete ones included).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from psycopg import AsyncConnection

from billing.kafka_client import client_kwargs
from reconciler import store

log = logging.getLogger(__name__)

NIGHTLY = "nightly:"


@dataclass(frozen=True)
class WatchdogPolicy:
    stale_s: float = 3600.0  # feeding/matching this long: the run's leader is gone
    backoff_base_s: float = 300.0
    backoff_max_s: float = 6 * 3600.0
    max_attempts: int = 8
    lookback_days: int = 7
    # yesterday's nightly run is missing when none exists this long after today's midnight
    # (the crontab runs at 03:30 by default)
    nightly_grace_s: float = 6 * 3600.0

    def backoff_s(self, attempts: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class DayRuns:
    """A day's nightly runs: how many, whether one is complete, and the latest one."""

    day: date
    attempts: int
    complete: bool
    last_run_id: str
    last_status: str
    last_started: datetime
    window_start: datetime
    window_end: datetime

    @property
    def retry_key(self) -> str:
        """The next run's key: the day's own for a day that never ran, else a retry's."""
        if self.attempts == 0:
            return f"{NIGHTLY}{self.day.isoformat()}"
        return f"{NIGHTLY}{self.day.isoformat()}:retry:{self.attempts}"


def due(runs: DayRuns, now: datetime, policy: WatchdogPolicy) -> bool:
    """Re-run this day now? Never when a run is complete or attempts are used up; a failed or
    incomplete last run after its backoff; a live-looking one once it is stale."""
    if runs.complete or runs.attempts >= policy.max_attempts:
        return False
    age = (now - runs.last_started).total_seconds()
    if runs.last_status in ("feeding", "matching"):
        return age >= max(policy.stale_s, policy.backoff_s(runs.attempts))
    return age >= policy.backoff_s(runs.attempts)


_DAYS = """
SELECT split_part(schedule_key, ':', 2)::date AS day, count(*) AS attempts,
       bool_or(status = 'finished') AS complete,
       (array_agg(run_id::text ORDER BY started_at DESC))[1] AS last_run_id,
       (array_agg(status ORDER BY started_at DESC))[1] AS last_status,
       max(started_at) AS last_started,
       (array_agg(window_start ORDER BY started_at))[1] AS window_start,
       (array_agg(window_end ORDER BY started_at))[1] AS window_end
FROM recon_runs
WHERE schedule_key LIKE 'nightly:%%' AND split_part(schedule_key, ':', 2)::date >= %s
GROUP BY 1 ORDER BY 1
"""


def missing_days(crontab_ran: dict[date, bool], yesterday: date, yesterday_due: bool) -> list[date]:
    """Days with no nightly run at all, from ``crontab_ran`` (each day that has runs: whether
    the crontab itself ran it, rather than this watchdog): the gaps between the first and
    the last of them, and ``yesterday`` once ``yesterday_due`` if the crontab ran the day
    before (one missed night; when the nightly run is switched off the watchdog fills at
    most that one day, never a chain)."""
    if not crontab_ran:
        return []
    first, last = min(crontab_ran), max(crontab_ran)
    gaps = [first + timedelta(days=n) for n in range(1, (last - first).days)]
    out = [d for d in gaps if d not in crontab_ran]
    before = yesterday - timedelta(days=1)
    if yesterday_due and yesterday not in crontab_ran and crontab_ran.get(before, False):
        out.append(yesterday)
    return out


def days_without_complete_run(
    days: list[DayRuns], crontab_ran: dict[date, bool], yesterday: date, yesterday_due: bool
) -> list[date]:
    """The days a person must look at: those ``missing_days`` would start, and those whose
    runs are all failed, incomplete or still going (a day the watchdog gave up on stays
    here). Yesterday counts only once its night is over (``yesterday_due``); today never."""
    out = set(missing_days(crontab_ran, yesterday, yesterday_due))
    for runs in days:
        if runs.complete or runs.day > yesterday:
            continue
        if runs.day < yesterday or yesterday_due:
            out.add(runs.day)
    return sorted(out)


_RAN = """
SELECT split_part(schedule_key, ':', 2)::date, bool_or(trigger = 'nightly') FROM recon_runs
WHERE schedule_key LIKE 'nightly:%%' AND split_part(schedule_key, ':', 2)::date >= %s
GROUP BY 1
"""


def _midnight(day: date, tz: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


async def nightly_days(conn: AsyncConnection[Any], since: date) -> list[DayRuns]:
    cur = await conn.execute(_DAYS, (since,))
    return [DayRuns(*row) for row in await cur.fetchall()]


async def last_complete_runs(conn: AsyncConnection[Any], since: date) -> dict[date, datetime]:
    """Per reconciled day since ``since``: when its last complete nightly run finished."""
    cur = await conn.execute(
        "SELECT split_part(schedule_key, ':', 2)::date, max(finished_at) FROM recon_runs"
        " WHERE schedule_key LIKE 'nightly:%%' AND status = 'finished'"
        " AND split_part(schedule_key, ':', 2)::date >= %s GROUP BY 1",
        (since,),
    )
    return {row[0]: row[1] for row in await cur.fetchall()}


async def missing_complete_days(
    conn: AsyncConnection[Any], now: datetime, policy: WatchdogPolicy, *, tz: tzinfo = UTC
) -> list[date]:
    """``days_without_complete_run`` over the watchdog's lookback, read from ``recon_runs``
    (the API exports their count as a gauge, alerted on when it stays above 0)."""
    since = (now - timedelta(days=policy.lookback_days)).date()
    local = now.astimezone(tz)
    yesterday = local.date() - timedelta(days=1)
    due_after = _midnight(local.date(), tz) + timedelta(seconds=policy.nightly_grace_s)
    cur = await conn.execute(_RAN, (since,))
    ran = {row[0]: bool(row[1]) for row in await cur.fetchall()}
    days = await nightly_days(conn, since)
    return days_without_complete_run(days, ran, yesterday, local >= due_after)


Rerun = Callable[[DayRuns], Awaitable[Any]]


async def watch(
    conn: AsyncConnection[Any],
    now: datetime,
    policy: WatchdogPolicy,
    rerun: Rerun,
    *,
    tz: tzinfo = UTC,
    fill_missing: bool = True,
) -> list[date]:
    """Re-run every day that is due (``rerun`` feeds the day's window under
    ``DayRuns.retry_key``), and start the days that never ran (``missing_days``, days in
    ``tz``); returns the days (re-)run. A failed re-run is left for the next round (its run
    is recorded failed, so the backoff grows)."""
    since = (now - timedelta(days=policy.lookback_days)).date()
    done = []
    if fill_missing:
        local = now.astimezone(tz)
        today = local.date()
        yesterday = today - timedelta(days=1)
        due_after = _midnight(today, tz) + timedelta(seconds=policy.nightly_grace_s)
        cur = await conn.execute(_RAN, (since,))
        ran = {row[0]: bool(row[1]) for row in await cur.fetchall()}
        for day in missing_days(ran, yesterday, local >= due_after):
            start, end = _midnight(day, tz), _midnight(day + timedelta(days=1), tz)
            log.warning("reconciliation watchdog: day %s has no nightly run: run it", day)
            try:
                await rerun(DayRuns(day, 0, False, "", "none", now, start, end))
            except Exception:
                log.exception("reconciliation watchdog: the run of %s failed", day)
            done.append(day)
    for runs in await nightly_days(conn, since):
        if not due(runs, now, policy):
            continue
        if runs.last_status in ("feeding", "matching"):
            await store.fail_run(
                conn, runs.last_run_id, "abandoned: no progress (leader gone?)", _ms(now)
            )
        log.warning(
            "reconciliation watchdog: day %s has no complete run (last %s, attempt %d): re-run",
            runs.day,
            runs.last_status,
            runs.attempts + 1,
        )
        try:
            await rerun(runs)
        except Exception:
            log.exception("reconciliation watchdog: re-run of %s failed", runs.day)
        done.append(runs.day)
    return done


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def feeder(settings: Any) -> Rerun:
    """A ``rerun`` that feeds the day's window again from the provider's list API, with the
    process's Kafka and provider settings (``ReconcileSettings``)."""
    from reconciler.feed import ReconSettings, RunRequest, new_producer, run_report

    cfg = ReconSettings.of(settings)

    async def rerun(runs: DayRuns) -> Any:
        from providers.yookassa_adapter import YooKassaProvider

        provider = YooKassaProvider(settings)
        producer = new_producer(client_kwargs(settings))
        await producer.start()
        try:
            dsn = settings.postgres_dsn.get_secret_value()
            async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
                return await run_report(
                    conn,
                    producer,
                    RunRequest(
                        window_start=_ms(runs.window_start),
                        window_end=_ms(runs.window_end),
                        trigger="watchdog",
                        schedule_key=runs.retry_key,
                        pending_sla_ms=cfg.pending_sla_ms,
                        hold_sla_ms=cfg.hold_sla_ms,
                        lag_ms=cfg.lag_ms,
                    ),
                    provider=provider,
                    api_url=str(settings.provider_api_url),
                )
        finally:
            await producer.stop()
            await provider.close()

    return rerun


def watch_once(settings: Any, policy: WatchdogPolicy | None = None) -> list[date]:
    """One watchdog round (the maintenance leader calls it; blocking)."""
    import asyncio

    from billing.clock import now_ms
    from reconciler.feed import ReconSettings
    from schemas.periods import ms_to_dt

    tz = ReconSettings.of(settings).zone()

    async def main() -> list[date]:
        dsn = settings.postgres_dsn.get_secret_value()
        async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await watch(
                conn, ms_to_dt(now_ms()), policy or WatchdogPolicy(), feeder(settings), tz=tz
            )

    return asyncio.run(main())
