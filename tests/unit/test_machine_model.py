"""Model-based test of the pure ledger machine (the model and its invariants: tests/model.py).

At least 2,000 random sequences of up to 30 steps each, invariants after every step. A failure
prints the shrunk steps; ``--hypothesis-seed=N`` replays a run, and the printed
``@reproduce_failure`` blob replays the exact example.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from tests.model import LedgerModel

LedgerModel.TestCase.settings = settings(
    max_examples=2_000,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
TestLedgerModel = LedgerModel.TestCase
