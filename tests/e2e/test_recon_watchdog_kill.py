"""The nightly reconciliation cannot silently skip a day (issue 15), shown with real
processes: the leader's nightly job (``reconciler.feed.run_nightly``, what the worker's
crontab calls) is SIGKILLed while it feeds yesterday's report (the provider's list API hangs
under an emulator fault), so the run stays ``feeding``; the API's metrics then say that no
finished run covers yesterday (the ``ReconciliationDayMissing`` alert's expression holds);
an hour later (the stack's clock) one round of ``billing maintain --once`` (the watchdog, on
the maintenance leader) marks the dead run failed and re-runs the day under
``nightly:DAY:retry:1``; the worker's reconcile agents finish it and the metric covers
yesterday again."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.e2e.client import paid_user
from tests.e2e.harness import Stack, wait_until

pytestmark = [pytest.mark.e2e]

DAY_MS = 86_400_000
ALERT_AFTER_S = 30 * 3600  # ops/alerts.yml ReconciliationDayMissing
LEADER = (
    "import asyncio\n"
    "from billing.config import WorkerSettings\n"
    "from reconciler.feed import run_nightly\n"
    "s = WorkerSettings()\n"
    "asyncio.run(run_nightly(s, s.postgres_dsn.get_secret_value()))\n"
)


def _gauge(stack: Stack, name: str, labels: str = "") -> float | None:
    text = httpx.get(f"{stack.api_url}/metrics", timeout=10).text
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def _runs(stack: Stack) -> dict[str, tuple[str, str | None]]:
    rows = stack.query(
        "SELECT schedule_key, status, error FROM recon_runs WHERE schedule_key <> ''"
    )
    return {str(key): (str(status), error) for key, status, error in rows}


def test_a_leader_killed_mid_feed_is_rerun_by_the_watchdog(stack: Stack) -> None:
    paid_user(stack)  # today's payment...
    stack.advance_clock(DAY_MS)  # ...is yesterday's now: the nightly window holds it

    # The leader's nightly job, hung in the provider's list API, then SIGKILLed.
    stack.control.add_fault("payments.list", "delay", count=1, delay_s=120)
    leader = subprocess.Popen(
        [sys.executable, "-c", LEADER],
        env=dict(stack.env, BILLING_PROVIDER_TIMEOUT_S="300"),  # hangs as long as the fault
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: any(f["fired"] for f in stack.control.faults()),
            timeout=60,
            message="the nightly run asking the provider for its report",
        )
        [(day_key, (status, _))] = _runs(stack).items()
        assert re.fullmatch(r"nightly:\d{4}-\d{2}-\d{2}", day_key) and status == "feeding"
        leader.send_signal(signal.SIGKILL)
        leader.wait(10)
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait(10)
    stack.control.clear_faults()
    time.sleep(1)
    assert _runs(stack) == {day_key: ("feeding", None)}  # nobody will ever finish it

    # The API's gauges (refreshed every 5 s): a run feeding, none finished: the alert fires.
    wait_until(
        lambda: _gauge(stack, "billing_recon_runs_recent", '{status="feeding"}') == 1.0,
        timeout=30,
        message="billing_recon_runs_recent{status=feeding} 1",
    )
    last = _gauge(stack, "billing_recon_last_complete_window_end_timestamp_seconds") or 0.0
    assert time.time() - last > ALERT_AFTER_S

    # An hour later on the stack's clock the run is stale: one watchdog round re-runs the day.
    stack.advance_clock(65 * 60 * 1000)
    rnd = subprocess.run(
        [sys.executable, "-m", "billing.cli", "maintain", "--once"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rnd.returncode == 0, rnd.stderr[-3000:]
    retry_key = f"{day_key}:retry:1"
    wait_until(
        lambda: _runs(stack).get(retry_key, ("", None))[0] == "finished",
        timeout=90,
        message=f"{retry_key} finished by the reconcile agents",
    )
    runs = _runs(stack)
    assert runs[day_key][0] == "failed" and "abandoned" in str(runs[day_key][1]), runs
    assert set(runs) == {day_key, retry_key}, runs
    lines = stack.query("SELECT lines FROM recon_runs WHERE schedule_key = %s", retry_key)
    assert lines[0][0] >= 1  # yesterday's payment was in the report

    # The metric covers yesterday again: the alert's expression no longer holds.
    wait_until(
        lambda: (
            time.time()
            - (_gauge(stack, "billing_recon_last_complete_window_end_timestamp_seconds") or 0.0)
            < ALERT_AFTER_S
        ),
        timeout=30,
        message="the last complete window ends within 30 h",
    )
    # A second round finds the day complete: nothing more is re-run.
    again = subprocess.run(
        [sys.executable, "-m", "billing.cli", "maintain", "--once"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(_runs(stack)) == {day_key, retry_key}
