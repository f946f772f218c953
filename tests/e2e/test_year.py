"""A year of monthly renewals with random declines, on a controllable clock.

Every process of the stack reads the same clock offset (BILLING_CLOCK_FILE), so the test
jumps from one due moment (renewal reminder and charge, dunning retry, period end) to the next
and lets the real worker, broker, database and emulator do the rest. At the end the
invariants of ARCHITECTURE.md are checked on everything that happened.
"""

from __future__ import annotations

import os
import random
import time
import uuid

import httpx
import pytest

from schemas.ids import subscription_id_for
from streams.ledger.machine import Policy
from tests.e2e.client import headers, pay, wait_status
from tests.e2e.harness import Stack
from tests.e2e.invariants import DAY_MS, check_invariants, next_moment, settle

pytestmark = [pytest.mark.e2e]

STACK_ENV = {
    "BILLING_RENEW_LEAD_S": "86400",
    # Renewals at exactly end - lead, as the users' periods end together: one clock jump a
    # month for all of them instead of one per subscription (the spread has its own tests:
    # test_renewal_jitter, test_lifecycle). With it the year took ~5 min of the CI's 30.
    "BILLING_RENEW_SPREAD_S": "0",
    "BILLING_RENEWAL_REMINDER_S": "86400",
    "BILLING_DUNNING_SCHEDULE_S": "[86400, 259200]",
    "BILLING_SWEEP_INTERVAL_S": "0.5",
    "BILLING_PAYMENT_DEADLINE_S": "3",
}
USERS = 6
POLICY = Policy(renew_lead_ms=DAY_MS, renew_spread_ms=0)  # as STACK_ENV
SEED = int(os.environ.get("BILLING_E2E_SEED", random.randrange(10**6)))


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
        moment = next_moment(stack, POLICY)
        if moment is None:
            break
        stack.advance_clock(max(moment - stack.now_ms() + 1_000, 1_000))
        jumps += 1
        settle(stack)
    elapsed = time.monotonic() - started
    summary = check_invariants(stack, users, SEED)
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
