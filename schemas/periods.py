"""Billing periods: the one calendar function (a month from Jan 31 ends on the last day of
February). All instants are timezone-aware UTC; messages carry epoch milliseconds."""

from __future__ import annotations

import calendar
import contextlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path


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


class _Clock:
    """Wall-clock time, optionally shifted by an offset read from a file.

    Tests set ``BILLING_CLOCK_FILE`` for every process of a stack and write an offset in
    milliseconds into it, so renewals, dunning steps and expiry happen in seconds. Unset (as
    in production), it is the plain wall clock. The file is re-read at most every 100 ms.
    """

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.offset_ms = 0
        self.read_at = 0.0

    def now_ms(self) -> int:
        if self.path is not None:
            mono = time.monotonic()
            if mono - self.read_at > 0.1:
                self.read_at = mono
                # keep the last offset on a failed read: the file is read again next time
                with contextlib.suppress(OSError, ValueError):
                    self.offset_ms = int(self.path.read_text().strip() or 0)
        return int(time.time() * 1000) + self.offset_ms


_clock = _Clock(os.environ.get("BILLING_CLOCK_FILE"))


def now_ms() -> int:
    """Now, epoch ms UTC: the one clock of the engine (see _Clock for the test offset)."""
    return _clock.now_ms()


def set_clock_offset(path: Path, offset_ms: int) -> None:
    """Write a clock offset for the processes that read ``path`` (tests only)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(int(offset_ms)))
    tmp.replace(path)
