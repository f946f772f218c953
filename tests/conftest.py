"""Shared fixtures. Real services (broker, database, emulator) are started once per session
by the fixture modules below and shared; tests use unique ids so they never collide."""

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.postgres",
    "tests.fixtures.emulator",
]
