"""The chaos suite (ARCHITECTURE.md, "Effectively once" and "Invariants").

1,000 payments in flight while the Faust worker is SIGKILLed three times at random moments
and restarted gracefully three times while a backlog waits, the broker restarts once, about 5%
of the commands have their publish dropped (outbox row, no Kafka message), some commands are
delivered twice and some provider notifications are duplicated or lost. Afterwards every
invariant of tests/chaos/invariants.py must hold: every accepted command done, exactly one
provider charge per payment, no subscription activated twice for one period, the read model
equal to the ledger state, the event log folding to the ledger state.

The second variant runs two workers and SIGKILLs one: its partitions move to the other, with
the same outcome. The seed is printed; ``BILLING_CHAOS_SEED=<seed>`` replays a run.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable

import pytest

from tests.chaos.scenario import GRACE_S, Action, ChaosRun, group_assignments
from tests.e2e.harness import Stack

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

PAYMENTS = int(os.environ.get("BILLING_CHAOS_PAYMENTS", "1000"))  # smaller only for debugging
SETTLE_TIMEOUT_S = 180


def test_single_worker_kills_restarts_broker_restart_dropped_publishes(
    chaos_stack: Callable[[int], Stack], chaos_seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = chaos_stack(1)
    run = ChaosRun(stack, seed=chaos_seed, variant="one-worker", n=PAYMENTS)
    kills: list[Action] = ["sigkill", "sigkill", "sigkill"]
    terms: list[Action] = ["sigterm", "sigterm", "sigterm"]
    actions: list[Action] = [*kills, *terms, "broker"]
    random.Random(f"{chaos_seed}/one-worker/plan").shuffle(actions)
    plan = [(a, 0) for a in actions]
    asyncio.run(run.run(plan, settle_timeout_s=SETTLE_TIMEOUT_S))
    f = run.figures
    with capsys.disabled():
        print("\n" + f.report())
    assert (f.sigkills, f.sigterm_restarts, f.broker_restarts) == (3, 3, 1)
    assert f.relay_recovered_dropped == f.dropped_publishes, (
        f"seed={chaos_seed}: only the relay can publish a dropped command"
    )
    assert f.succeeded == f.payments - f.declines and f.canceled == f.declines
    # A graceful restart must be one: SIGTERM ends the worker by itself (a supervisor would
    # SIGKILL it after its grace period, turning every deploy into a crash).
    assert f.hung_stops == 0, (
        f"seed={chaos_seed}: {f.hung_stops} of {f.sigterm_restarts} SIGTERM stops did not end"
        f" within {GRACE_S}s (see 'wait_empty' in {stack.root}/logs/worker-0.log)"
    )


def test_two_workers_one_killed_partitions_move(
    chaos_stack: Callable[[int], Stack], chaos_seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = chaos_stack(2)
    run = ChaosRun(stack, seed=chaos_seed, variant="two-workers", n=PAYMENTS)
    victim = random.Random(f"{chaos_seed}/two-workers/victim").randrange(2)
    survivor = 1 - victim
    bootstrap = stack.broker.bootstrap

    before = asyncio.run(group_assignments(bootstrap, stack.worker_id))
    run.figures.assignments_before = before
    asyncio.run(run.run([("kill-one", victim)], settle_timeout_s=SETTLE_TIMEOUT_S))
    after = asyncio.run(group_assignments(bootstrap, stack.worker_id))
    f = run.figures
    f.assignments_after = after
    with capsys.disabled():
        print("\n" + f.report())
    # Both members held partitions before the kill; the survivor holds all of them after.
    assert len(before) == 2 and all(before), f"seed={chaos_seed}: assignment before {before}"
    assert after == [list(range(stack.partitions))], f"seed={chaos_seed}: after {after}"
    assert stack.workers[survivor].running and not stack.workers[victim].running
    assert f.relay_recovered_dropped == f.dropped_publishes
    assert f.succeeded == f.payments - f.declines and f.canceled == f.declines
