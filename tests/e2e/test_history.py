"""ClickHouse history through the whole stack: the history worker (its own Faust app, owning
the embedded chdb store) ingests billing.events, serves the analytics queries, and the three
books agree: the Kafka event log, PostgreSQL and ClickHouse (invariant 6)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import httpx
import pytest

from analytics.totals import differences, from_event_log, from_history, from_postgres
from tests.e2e.client import headers, pay, refund_status, wait_status
from tests.e2e.harness import Stack, wait_until

pytestmark = [pytest.mark.e2e]

STACK_HISTORY = True


def test_history_agrees_with_the_event_log_and_postgres(stack: Stack) -> None:
    stack.control.configure(auto_confirm="succeed", auto_confirm_delay_s=0)
    users = [f"hist-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    paid = [
        (
            u,
            pay(
                stack,
                u,
                body={
                    "plan_id": "quarterly" if i % 2 else "monthly",
                    "return_url": "https://cinema.example/r",
                },
            ),
        )
        for i, u in enumerate(users)
    ]
    for user, pid in paid:
        wait_status(stack, user, pid, "succeeded")
    user, pid = paid[0]
    r = httpx.post(
        f"{stack.api_url}/api/v1/payments/{pid}/refunds",
        headers=headers(stack, user, str(uuid.uuid4())),
        json={"amount": {"value": "50.00", "currency": "RUB"}},
    )
    assert r.status_code == 202
    refund_status(stack, user, r.json()["refund_id"], "succeeded")

    window = {"from": stack.now_ms() - 86_400_000, "to": stack.now_ms() + 86_400_000}
    pg = from_postgres(stack.dsn)
    assert sum(g for g, _ in pg.values()) == 3 * 29900 + 3 * 79900
    assert sum(r for _, r in pg.values()) == 5000

    def history_caught_up() -> bool:
        try:
            return from_history(stack.history_url, window["from"], window["to"]) == pg
        except httpx.HTTPError:
            return False

    wait_until(history_caught_up, timeout=90, message="ClickHouse has the day's money")
    log = asyncio.run(from_event_log(stack.broker.bootstrap))
    ch = from_history(stack.history_url, window["from"], window["to"])
    assert differences(event_log=log, postgres=pg, clickhouse=ch) == []

    # the analytics the console shows are served by the history worker
    overview = httpx.get(f"{stack.history_url}/analytics/overview/", timeout=60)
    assert overview.status_code == 200, overview.text
    active = httpx.get(f"{stack.history_url}/analytics/active_subscribers/", timeout=60).json()
    assert active["total"] == len(users), active  # a partial refund keeps access
    bad = httpx.get(f"{stack.history_url}/analytics/nope/", timeout=10)
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "unknown_query"


def test_rebuild_from_the_event_log_is_idempotent(stack: Stack) -> None:
    """``billing rebuild-history`` replays the whole log into the store the history worker
    owns (stopped meanwhile): the answers do not change."""
    assert stack.history is not None
    window = (stack.now_ms() - 86_400_000, stack.now_ms() + 86_400_000)
    before = from_history(stack.history_url, *window)
    assert before, "the first test left money in the history"
    busy = subprocess.run(
        [sys.executable, "-m", "billing.cli", "rebuild-history"],
        env=stack.history.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert busy.returncode != 0 and "history worker" in busy.stderr  # it owns the store
    stack.history.stop()
    done = subprocess.run(
        [sys.executable, "-m", "billing.cli", "rebuild-history"],
        env=stack.history.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "rebuilt from" in done.stdout and " 0 events" not in done.stdout, done.stdout
    stack.start_worker(stack.history)
    wait_until(lambda: _answers(stack, window) == before, timeout=90, message="history back up")


def _answers(stack: Stack, window: tuple[int, int]) -> object:
    try:
        return from_history(stack.history_url, *window)
    except httpx.HTTPError:
        return None
