"""A year of monthly renewals with random declines, on a controllable clock.

Every process of the stack reads the same clock offset (BILLING_CLOCK_FILE), so the test
jumps from one due moment (renewal reminder and charge, dunning retry, period end) to the next
and lets the real worker, broker, database and emulator do the rest. At the end the
invariants of ARCHITECTURE.md are checked on everything that happened.
"""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid
from collections import defaultdict
from typing import Any

import httpx
import pytest

from schemas.ids import subscription_id_for
from schemas.periods import dt_to_ms
from tests.e2e.harness import Stack
from tests.e2e.test_pay import headers, pay, wait_status

pytestmark = [pytest.mark.e2e]

DAY_MS = 86_400_000
STACK_ENV = {
    "BILLING_RENEW_LEAD_S": "86400",
    "BILLING_RENEWAL_REMINDER_S": "86400",
    "BILLING_DUNNING_SCHEDULE_S": "[86400, 259200]",
    "BILLING_SWEEP_INTERVAL_S": "0.5",
    "BILLING_PAYMENT_DEADLINE_S": "3",
}
USERS = 10
SEED = int(os.environ.get("BILLING_E2E_SEED", random.randrange(10**6)))


def event_count(stack: Stack) -> int:
    rows = stack.query("SELECT count(*) FROM subscription_events")
    return int(rows[0][0])


def settle(stack: Stack, quiet_s: float = 1.5, timeout: float = 60) -> None:
    """Wait until nothing is in flight and no new event has been projected for quiet_s."""
    deadline = time.monotonic() + timeout
    last, since = event_count(stack), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = event_count(stack)
        busy = stack.query(
            "SELECT count(*) FROM payments WHERE status IN ('requested', 'unknown', 'pending')"
        )[0][0]
        if now != last or busy:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
    raise AssertionError("the stack did not settle")


def next_moment(stack: Stack) -> int | None:
    """The earliest due moment after the stack's now, from the read model."""
    rows = stack.query(
        "SELECT period_end, next_retry_at, auto_renew, status FROM subscriptions"
        " WHERE status IN ('active', 'past_due')"
    )
    now = stack.now_ms()
    moments: list[int] = []
    for period_end, retry_at, auto_renew, _status in rows:
        end = dt_to_ms(period_end)
        candidates = [end]
        if auto_renew:
            candidates.append(end - DAY_MS)
        if retry_at is not None:
            candidates.append(dt_to_ms(retry_at))
        moments += [c for c in candidates if c > now]
    return min(moments) if moments else None


def check_invariants(stack: Stack, users: list[str]) -> dict[str, Any]:
    """ARCHITECTURE.md invariants 1-4 on the read model, the emulator and the outbox."""
    stats = stack.control.stats()
    now = stack.now_ms()
    summary: dict[str, Any] = defaultdict(int)
    for user in users:
        sub = subscription_id_for(user)
        paid = stack.query(
            "SELECT payment_id::text, kind, period_start, period_end, amount_minor,"
            " refunded_minor FROM payments WHERE subscription_id = %s AND status = 'succeeded'"
            " ORDER BY period_start",
            sub,
        )
        # 1. one succeeded charge per period: periods never overlap
        for a, b in itertools.pairwise(paid):
            assert a[3] <= b[2], f"seed {SEED}: overlapping paid periods for {user}: {a} {b}"
        # 2. refunds never exceed the captured amount
        for row in paid:
            assert 0 <= row[5] <= row[4]
        # 4. active exactly when a succeeded payment covers now
        (status, period_end) = stack.query(
            "SELECT status, period_end FROM subscriptions WHERE subscription_id = %s", sub
        )[0]
        covered = any(dt_to_ms(r[2]) <= now < dt_to_ms(r[3]) for r in paid)
        assert (status == "active") == covered, f"seed {SEED}: {user} {status} {period_end}"
        summary["charges"] += len(paid)
        summary["renewals"] += sum(r[1] == "renewal" for r in paid)
        summary[status] += 1
    # every charge the provider holds was asked for once
    assert all(n == 1 for n in stats["by_payment_id"].values()), f"seed {SEED}"
    # 3. every accepted command reached a terminal state
    open_rows = stack.query(
        "SELECT count(*) FROM command_outbox WHERE status NOT IN ('done', 'rejected')"
    )
    assert open_rows == [(0,)], f"seed {SEED}: open commands {open_rows}"
    declined = stack.query(
        "SELECT count(*) FROM payments WHERE kind = 'renewal' AND status = 'canceled'"
    )[0][0]
    summary["declined_renewals"] = int(declined)
    return dict(summary)


def test_a_year_of_monthly_renewals_with_random_declines(stack: Stack) -> None:
    print(f"year e2e seed={SEED} (BILLING_E2E_SEED to replay)")
    stack.control.reset(seed=SEED)
    stack.control.configure(
        auto_confirm="succeed",
        auto_confirm_delay_s=0,
        autopay_decline_rate=0.3,
        autopay_decline_reason="insufficient_funds",
    )
    users = [f"year-{i}-{uuid.uuid4().hex[:6]}" for i in range(USERS)]
    for user in users:
        pid = pay(stack, user)
        wait_status(stack, user, pid, "succeeded")
    settle(stack)
    # one user turns auto-renew off at once: it must expire after its first period
    quitter = users[0]
    r = httpx.put(
        f"{stack.api_url}/api/v1/subscriptions/me/auto-renew",
        headers=headers(stack, quitter, str(uuid.uuid4())),
        json={"enabled": False},
    )
    assert r.status_code == 202
    settle(stack)

    start_ms = stack.now_ms()
    jumps = 0
    started = time.monotonic()
    while stack.now_ms() < start_ms + 365 * DAY_MS:
        moment = next_moment(stack)
        if moment is None:
            break
        stack.advance_clock(max(moment - stack.now_ms() + 1_000, 1_000))
        jumps += 1
        settle(stack)
    elapsed = time.monotonic() - started
    summary = check_invariants(stack, users)
    print(
        f"year e2e: {USERS} subscriptions, {jumps} clock jumps over "
        f"{(stack.now_ms() - start_ms) / DAY_MS:.0f} days in {elapsed:.0f}s: {summary}"
    )
    quitter_status = stack.query(
        "SELECT status FROM subscriptions WHERE subscription_id = %s",
        subscription_id_for(quitter),
    )
    assert quitter_status == [("expired",)]
    assert summary["renewals"] >= USERS  # most months renew; declines are random
    assert summary["declined_renewals"] > 0  # the dunning path ran
    events = stack.query("SELECT event_type, count(*) FROM subscription_events GROUP BY event_type")
    kinds = {k for k, _ in events}
    assert {"RenewalUpcoming", "RenewalFailed", "SubscriptionActivated"} <= kinds, kinds
