"""analytics.dispatch: the one table both the admin API and the history worker answer from,
so a parameter is checked and defaulted the same way whoever answers."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from analytics import dispatch

NOW = 1_793_577_600_000  # 2026-11-02T00:00:00Z
DAY = dispatch.DAY_MS


def test_a_window_defaults_to_the_last_30_days_and_is_sent_resolved() -> None:
    call = dispatch.prepare("revenue_by_day", {}, now=NOW)
    assert call.args == {"from": NOW - 30 * DAY, "to": NOW}
    assert call.params == {"from": str(NOW - 30 * DAY), "to": str(NOW)}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"from": str(NOW), "to": str(NOW)}, "invalid_range"),
        ({"from": str(NOW), "to": str(NOW - 1)}, "invalid_range"),
        ({"from": "0", "to": str(NOW)}, "window_too_long"),
        ({"from": "yesterday"}, "bad_query"),
    ],
)
def test_bad_windows(params: dict[str, str], code: str) -> None:
    with pytest.raises(dispatch.BadQuery) as err:
        dispatch.prepare("discrepancies_by_day", params, now=NOW)
    assert err.value.code == code


def test_months_are_bounded_and_start_on_the_first() -> None:
    call = dispatch.prepare("mrr_movements", {"months": "3", "from_month": "2026-09-15"})
    assert call.params == {"from_month": "2026-09-01", "months": "3"}
    assert dispatch.prepare("mrr_movements", {}, now=NOW).args == {
        "from_month": date(2025, 12, 1),
        "months": 12,
    }
    for months in ("0", "61"):
        with pytest.raises(dispatch.BadQuery, match=r"months must be 1\.\.60"):
            dispatch.prepare("mrr_movements", {"months": months})


def test_from_month_is_inside_the_history_dates() -> None:
    """0001-01-01 was an engine error (503) and 1969-06-01 a traceback in the worker's log."""
    for first in ("0001-01-01", "1969-06-01", "2101-01-01"):
        with pytest.raises(dispatch.BadQuery, match="from_month must be from"):
            dispatch.prepare("mrr_movements", {"from_month": first})
    assert dispatch.prepare("mrr_movements", {"from_month": "1970-01-20"}).params == {
        "from_month": "1970-01-01",
        "months": "12",
    }
    # Any day of the last month counts as that month (the API's pattern lets days 01-28 in).
    assert dispatch.prepare("mrr_movements", {"from_month": "2100-12-28"}).params == {
        "from_month": "2100-12-01",
        "months": "12",
    }


def test_reconciliation_queries_and_unknown_names() -> None:
    assert dispatch.prepare("recon_runs", {}).args == {"limit": 50}
    with pytest.raises(dispatch.BadQuery, match="limit"):
        dispatch.prepare("recon_runs", {"limit": "1001"})
    with pytest.raises(dispatch.BadQuery, match="run_id is required"):
        dispatch.prepare("recon_run_totals", {})
    with pytest.raises(dispatch.UnknownQuery):
        dispatch.prepare("nope", {})
    assert dispatch.prepare("overview", {"at": "5"}).params == {"at": "5"}


class FakeClickHouse:
    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        self.asked.append(dict(params or {}))
        return []


def test_a_call_runs_its_query_with_the_resolved_arguments() -> None:
    ch = FakeClickHouse()
    assert dispatch.prepare("decline_reasons", {"from": "1", "to": "2"}).run(ch) == []  # type: ignore[arg-type]
    assert ch.asked == [{"from_ms": 1, "to_ms": 2}]
