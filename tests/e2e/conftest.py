"""One whole stack per e2e module: broker, database, emulator, API and a Faust worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Stack
from tests.fixtures.postgres import FreshDatabase


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fresh_database: FreshDatabase,
) -> Iterator[Stack]:
    """A module may set ``STACK_ENV`` (extra BILLING_* settings for every process)."""
    extra = dict(getattr(request.module, "STACK_ENV", {}))
    s = Stack(
        tmp_path_factory.mktemp("stack"),
        fresh_database("e2e"),
        extra_env=extra,
        history=bool(getattr(request.module, "STACK_HISTORY", False)),
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()
