"""Shared fixtures. Real services (broker, database, emulator) are started once per session
by the fixture modules below and shared; tests use unique ids so they never collide."""

import os

# Settings fail closed (unset BILLING_ENV means prod): the suite names its mode explicitly.
# Tests of the prod checks clear it themselves.
os.environ.setdefault("BILLING_ENV", "test")
# Workers start on empty temporary disks here, where RocksDB gains nothing: tables in memory
# unless a run asks otherwise (BILLING_TABLE_STORE=rocksdb://); RocksDB has its own tests.
os.environ.setdefault("BILLING_TABLE_STORE", "memory://")

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.postgres",
    "tests.fixtures.emulator",
]
