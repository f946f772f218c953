"""The days a reconciliation alert names (issue 15): ``days_without_complete_run`` counts a
day whose runs all failed between complete days (the latest window's end cannot see it), a
day the crontab never ran, yesterday only once its night is over, and never today."""

from __future__ import annotations

from datetime import UTC, date, datetime

from reconciler.watchdog import DayRuns, days_without_complete_run

Y = date(2026, 12, 5)  # yesterday
T0 = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)


def _runs(day: date, complete: bool, status: str = "finished") -> DayRuns:
    return DayRuns(day, 1, complete, "r", status, T0, T0, T0)


def test_a_failed_day_between_complete_ones_counts() -> None:
    days = [
        _runs(date(2026, 12, 1), True),
        _runs(date(2026, 12, 2), False, "failed"),
        _runs(date(2026, 12, 3), True),
        _runs(date(2026, 12, 4), False, "incomplete"),
    ]
    ran = {d.day: True for d in days}
    assert days_without_complete_run(days, ran, Y, yesterday_due=False) == [
        date(2026, 12, 2),
        date(2026, 12, 4),
    ]


def test_a_day_never_run_counts_and_yesterday_only_once_due() -> None:
    days = [
        _runs(date(2026, 12, 1), True),
        _runs(date(2026, 12, 3), True),
        _runs(date(2026, 12, 4), True),
    ]
    ran = {d.day: True for d in days}
    assert days_without_complete_run(days, ran, Y, yesterday_due=False) == [date(2026, 12, 2)]
    assert days_without_complete_run(days, ran, Y, yesterday_due=True) == [
        date(2026, 12, 2),
        Y,
    ]


def test_yesterdays_run_still_going_counts_only_after_its_night_and_today_never() -> None:
    days = [
        _runs(date(2026, 12, 4), True),
        _runs(Y, False, "feeding"),
        _runs(date(2026, 12, 6), False, "failed"),  # today: a manual run, not yet a gap
    ]
    ran = {d.day: True for d in days}
    assert days_without_complete_run(days, ran, Y, yesterday_due=False) == []
    assert days_without_complete_run(days, ran, Y, yesterday_due=True) == [Y]


def test_nothing_to_say_when_every_day_is_complete_or_nothing_ran() -> None:
    days = [_runs(date(2026, 12, d), True) for d in (2, 3, 4, 5)]
    assert days_without_complete_run(days, {d.day: True for d in days}, Y, True) == []
    assert days_without_complete_run([], {}, Y, True) == []
