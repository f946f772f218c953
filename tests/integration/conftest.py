"""Fixtures shared by the API tests of this tier (helpers live in
``tests/integration/api_support.py``).

``api`` is module-scoped: one app on the module's own database (``module_pg_dsn``), shared by
the module's tests, as each module had it before. A test that needs other settings builds its
own with ``running_api(dsn, **overrides)``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.api_support import Api, Ledger, running_api


@pytest.fixture(scope="module")
async def api(module_pg_dsn: str) -> AsyncIterator[Api]:
    async with running_api(module_pg_dsn) as a:
        yield a


@pytest.fixture
def ledger(api: Api) -> Ledger:
    """The worker's part in-process (pure ledger + real projection), fresh per test."""
    return Ledger(api)
