"""Chaos fixtures: the run's seed (printed, replayable) and a whole stack per test.

Replay a failure with ``BILLING_CHAOS_SEED=<seed> .venv/bin/python -m pytest tests/chaos``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Stack
from tests.fixtures.postgres import FreshDatabase

# Relay delay and payment deadline as in production (5 s, 15 s); backoffs capped lower
# (production: 300 s and an hour) so a twice-lost message is recovered within the settle
# budget; a dead member's partitions move after 6 s.
CHAOS_ENV = {
    "BILLING_RELAY_DELAY_S": "5",
    "BILLING_RELAY_INTERVAL_S": "0.5",
    "BILLING_RELAY_MAX_BACKOFF_S": "60",
    "BILLING_PAYMENT_DEADLINE_S": "15",
    "BILLING_PAYMENT_REDRIVE_MAX_BACKOFF_S": "30",
    "BILLING_SWEEP_INTERVAL_S": "1",
    "BILLING_PROVIDER_TIMEOUT_S": "3",
    "BILLING_BROKER_SESSION_TIMEOUT_S": "6",
}


@pytest.fixture(scope="session")
def chaos_seed() -> int:
    raw = os.environ.get("BILLING_CHAOS_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(1, 2**31)


@pytest.fixture
def chaos_stack(
    tmp_path: Path,
    fresh_database: FreshDatabase,
    chaos_seed: int,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Callable[[int], Stack]]:
    """Factory: ``chaos_stack(workers) -> Stack``, started; stopped after the test."""
    made: list[Stack] = []

    def make(workers: int) -> Stack:
        with capsys.disabled():
            print(
                f"\nchaos seed={chaos_seed} (replay: BILLING_CHAOS_SEED={chaos_seed}"
                " .venv/bin/python -m pytest tests/chaos)"
            )
        root = tmp_path / f"stack-{len(made)}"
        root.mkdir()
        stack = Stack(
            root,
            fresh_database("chaos"),
            workers=workers,
            extra_env=CHAOS_ENV,
        )
        made.append(stack)
        stack.start()
        return stack

    yield make
    for stack in made:
        # The run is over: no need to wait out a worker's graceful stop (it can hang).
        for w in stack.workers:
            w.kill()
        stack.stop()
