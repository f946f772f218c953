"""Shared e2e helpers on a clock-controlled stack: settling, the next due moment, and the
invariants of ARCHITECTURE.md checked on the read model, the emulator and the outbox."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from typing import Any

from schemas.ids import subscription_id_for
from schemas.periods import dt_to_ms
from streams.ledger.machine import Policy, renewal_at
from tests.e2e.harness import Stack

DAY_MS = 86_400_000


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


def next_moment(stack: Stack, policy: Policy | None = None) -> int | None:
    """The earliest due moment after the stack's now, from the read model (``policy``: the
    stack's renewal lead and spread; by default a day's lead and the default spread)."""
    rows = stack.query(
        "SELECT period_end, next_retry_at, auto_renew, status, subscription_id::text"
        " FROM subscriptions WHERE status IN ('active', 'past_due')"
    )
    now = stack.now_ms()
    moments: list[int] = []
    policy = policy or Policy(renew_lead_ms=DAY_MS)
    for period_end, retry_at, auto_renew, _status, sub in rows:
        end = dt_to_ms(period_end)
        candidates = [end]
        if auto_renew:  # the reminder's lead, and the charge (spread per subscription)
            candidates += [end - DAY_MS, renewal_at(str(sub), end, policy)]
        if retry_at is not None:
            candidates.append(dt_to_ms(retry_at))
        moments += [c for c in candidates if c > now]
    return min(moments) if moments else None


def check_invariants(stack: Stack, users: list[str], seed: int = 0) -> dict[str, Any]:
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
            assert a[3] <= b[2], f"seed {seed}: overlapping paid periods for {user}: {a} {b}"
        # 2. refunds never exceed the captured amount
        for row in paid:
            assert 0 <= row[5] <= row[4]
        # 4. active exactly when a succeeded payment covers now
        (status, period_end, trial_end) = stack.query(
            "SELECT status, period_end, trial_end FROM subscriptions WHERE subscription_id = %s",
            sub,
        )[0]
        covered = any(dt_to_ms(r[2]) <= now < dt_to_ms(r[3]) for r in paid)
        # A free trial covers its days without a payment (and waits up to an hour past its
        # end for the first charge's outcome: Policy.renew_margin_ms).
        if trial_end is not None and trial_end == period_end:
            waiting = status == "active" and now < dt_to_ms(trial_end) + 3_600_000
            covered = covered or now < dt_to_ms(trial_end) or waiting
        assert (status == "active") == covered, f"seed {seed}: {user} {status} {period_end}"
        summary["charges"] += len(paid)
        summary["renewals"] += sum(r[1] == "renewal" for r in paid)
        summary[status] += 1
    # every charge the provider holds was asked for once
    assert all(n == 1 for n in stats["by_payment_id"].values()), f"seed {seed}"
    # 3. every accepted command reached a terminal state
    open_rows = stack.query(
        "SELECT count(*) FROM command_outbox WHERE status NOT IN ('done', 'rejected')"
    )
    assert open_rows == [(0,)], f"seed {seed}: open commands {open_rows}"
    declined = stack.query(
        "SELECT count(*) FROM payments WHERE kind = 'renewal' AND status = 'canceled'"
    )[0][0]
    summary["declined_renewals"] = int(declined)
    return dict(summary)
