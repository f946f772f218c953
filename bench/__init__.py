"""Benchmarks (bench/README.md). They run private stacks on this machine, as the tests do:
settings default to the test environment (production settings fail closed, and a bench has
no production secrets to give), unless BILLING_ENV says otherwise."""

import os

os.environ.setdefault("BILLING_ENV", "test")
