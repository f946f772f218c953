"""Billing periods: the one calendar function (a month from Jan 31 ends on the last day of
February). All instants are timezone-aware UTC; messages carry epoch milliseconds.

Pure: what time it is now is ``billing.clock.now_ms`` (it reads the environment and a file)."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime


def add_months(start: datetime, months: int) -> datetime:
    """Calendar months, clamped to the month's last day; keeps the time of day and zone."""
    if start.tzinfo is None:
        raise ValueError("naive datetime: billing periods need an explicit time zone")
    month_index = start.month - 1 + months
    year = start.year + month_index // 12
    month = month_index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def dt_to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError("naive datetime")
    return int(dt.timestamp() * 1000)


def period_end_ms(start_ms: int, months: int) -> int:
    return dt_to_ms(add_months(ms_to_dt(start_ms), months))
