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
    "BILLING_PAYMENT_DEADLINE_S": "15",
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
        t = time.monotonic()
        try:
            stack.start()
            log(f"stack up in {time.monotonic() - t:.1f} s (api {stack.api_url})")
            yield stack
        finally:
            stack.stop()


def process_rss(stack: Any) -> dict[str, float]:
    """Peak RSS (MiB) of the stack's processes, read while they still run."""
    out = {
        "api": peak_rss_mb(stack.api.pid) if stack.api.pid else float("nan"),
        "emulator": peak_rss_mb(stack.emulator.pid) if stack.emulator.pid else float("nan"),
        "broker (JVM)": peak_rss_mb(stack.broker.pid) if stack.broker.pid else float("nan"),
    }
    for i, w in enumerate(stack.workers):
        out[f"worker-{i}"] = peak_rss_mb(w.pid) if w.pid else float("nan")
    return out


def mint_tokens(prefix: str, n: int) -> list[str]:
    """Bearer tokens for n distinct users (the API's default dev secret, as the stack)."""
    from api.auth import mint_token
    from billing.config import Settings

    settings = Settings()
    return [mint_token(settings, f"{prefix}-{i}", ttl_s=3600) for i in range(n)]
