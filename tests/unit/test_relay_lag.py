"""The relay's reading of the ledger's consumer lag (api.relay.ConsumerLag, issue 13): the
backlog over the rate it drains; nothing behind is no lag; no reading is no lag."""

from __future__ import annotations

import pytest

from api.relay import ConsumerLag


def test_caught_up_is_no_lag() -> None:
    lag = ConsumerLag()
    assert lag.observe(0.0, committed=100, end=100) == 0.0
    assert lag.observe(5.0, committed=150, end=150) == 0.0


def test_the_lag_is_the_backlog_over_the_drain_rate() -> None:
    lag = ConsumerLag()
    lag.observe(0.0, committed=0, end=10_000)
    # 500 committed in 10 s: 50/s; 9,500 behind: 190 s to reach the end.
    assert lag.observe(10.0, committed=500, end=10_000) == pytest.approx(190.0)
    assert lag.backlog == 9_500


def test_the_rate_is_taken_over_the_recent_window() -> None:
    lag = ConsumerLag(window_s=30.0, stalled_s=10_000.0)
    lag.observe(0.0, committed=0, end=100_000)
    lag.observe(100.0, committed=100, end=100_000)  # slow at first: 1/s
    lag.observe(130.0, committed=3_100, end=100_000)  # 100/s over the last 30 s
    assert lag.observe(131.0, committed=3_200, end=100_000) == pytest.approx(
        (100_000 - 3_200) / ((3_200 - 100) / 31.0)
    )


def test_a_backlog_that_does_not_drain_reads_as_stalled() -> None:
    lag = ConsumerLag(stalled_s=300.0)
    assert lag.observe(0.0, committed=10, end=20) == 0.0  # one reading: no rate yet
    assert lag.observe(5.0, committed=10, end=20) == 300.0
    lag.forget()
    assert lag.lag_s == 0.0
    assert lag.observe(6.0, committed=10, end=20) == 0.0  # starts again from one reading
