"""The whole stack for the end-to-end and API benchmarks: a private PostgreSQL and the e2e
harness (tests/e2e/harness.py: broker, emulator, API, Faust workers as real processes).

The harness shortens the relay, deadline and timeout settings for tests; the benchmarks put
back the production defaults of billing/config.py (Settings), so what is measured is the
configuration users run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from bench.common import log, peak_rss_mb, postgres, workdir

# billing.config.Settings defaults (the harness overrides these for fast tests).
PRODUCTION_TIMINGS = {
    "BILLING_RELAY_DELAY_S": "5",
    "BILLING_RELAY_INTERVAL_S": "1",
    "BILLING_PAYMENT_DEADLINE_S": "60",
    "BILLING_SWEEP_INTERVAL_S": "2",
    "BILLING_PROVIDER_TIMEOUT_S": "10",
    "BILLING_BROKER_SESSION_TIMEOUT_S": "10",
}


@contextlib.contextmanager
def running_stack(
    name: str, *, workers: int = 1, extra_env: dict[str, str] | None = None
) -> Iterator[Any]:
    from tests.e2e.harness import Stack

    with workdir(name) as root, postgres(root) as dsn:
        env = dict(PRODUCTION_TIMINGS, **(extra_env or {}))
        (root / "stack").mkdir()
        stack = Stack(root / "stack", dsn, workers=workers, extra_env=env)
        stack.bench_pg_dir = root / "pg"
        t = time.monotonic()
        try:
            stack.start()
            log(f"stack up in {time.monotonic() - t:.1f} s (api {stack.api_url})")
            yield stack
        finally:
            stack.stop()


def process_pids(stack: Any, *, with_postgres: bool = False) -> dict[str, int]:
    """The stack's processes by name (those running); with_postgres adds the postmaster
    (its backends are its children)."""
    pids = {"api": stack.api.pid, "emulator": stack.emulator.pid, "broker (JVM)": stack.broker.pid}
    for i, w in enumerate(stack.workers):
        pids[f"worker-{i}"] = w.pid
    if with_postgres:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid_file = stack.bench_pg_dir / "postmaster.pid"
            pids["postgres (all backends)"] = int(pid_file.read_text().splitlines()[0])
    return {name: pid for name, pid in pids.items() if pid}


def process_rss(stack: Any) -> dict[str, float]:
    """Peak RSS (MiB) of the stack's processes, read while they still run."""
    return {name: peak_rss_mb(pid) for name, pid in process_pids(stack).items()}


def mint_tokens(prefix: str, n: int) -> list[str]:
    """Bearer tokens for n distinct users (the API's default dev secret, as the stack)."""
    from api.auth import mint_token
    from billing.config import Settings

    settings = Settings()
    return [mint_token(settings, f"{prefix}-{i}", ttl_s=3600) for i in range(n)]
