"""Operations endpoints of a Faust worker on its own web server (``BILLING_WORKER_WEB_PORT``,
bound to loopback unless configured): ``/metrics`` (Prometheus), ``/healthz`` (the process
answers) and ``/readyz`` (its tables are recovered for its current assignment: before that a
worker would decide on missing state). Also a timer that sets the ledger's state gauges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from billing import metrics
from billing.clock import now_ms

log = logging.getLogger(__name__)

STATE_GAUGES_S = 15.0  # the ledger index and store estimates; no state is read
OVERDUE_MS = 60_000


def recovered(app: Any) -> bool:
    """Tables recovered and no rebalance running (and the ledger's due index built, when it
    has one)."""
    if app.rebalancing:
        return False
    recovery = app.tables.recovery
    if not recovery.completed.is_set() or recovery.in_recovery:
        return False
    indexed = getattr(app, "billing_ledger_index", None)
    return indexed is None or bool(getattr(indexed, "ready", True))


def register_ops(app: Any, ready: Callable[[], bool] | None = None) -> None:
    """``ready``: the readiness check; by default :func:`recovered` (the history worker,
    which has no table, passes its own)."""
    is_ready = ready or (lambda: recovered(app))

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset in content_type; the text format is UTF-8 by definition.
        return web.bytes(metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        now_ready = is_ready()
        metrics.PROCESS_READY.set(1 if now_ready else 0)
        if now_ready:
            return web.json({"status": "ready", "tables": "recovered"})
        body = {"error": {"code": "not_ready", "message": "tables are recovering", "details": {}}}
        return web.json(body, status=503)

    @app.timer(interval=STATE_GAUGES_S)
    async def state_gauges() -> None:
        table = getattr(app, "billing_ledger_table", None)
        if table is None or not recovered(app):
            return
        from schemas.state import decode_state
        from streams.ledger.machine import next_wakeup

        policy = getattr(app, "billing_policy", None)
        count = size = due = overdue = 0
        oldest = 0
        now = now_ms()
        indexed = getattr(app, "billing_ledger_index", None)
        if indexed is not None:
            # From the ledger's index and the store's estimates: decoding every state every
            # pass cost ~100 us a state (issue 13: no scan).
            mine = {tp.partition for tp in app.assignor.assigned_actives()}
            count, size, due, overdue, oldest = indexed.gauges(now, mine, OVERDUE_MS)
            metrics.LEDGER_STATES.set(count)
            metrics.LEDGER_STATE_BYTES.set(size)
            metrics.TIMERS_DUE.set(due)
            metrics.TIMERS_OVERDUE.set(overdue)
            metrics.TIMERS_OLDEST_OVERDUE.set(oldest / 1000)
            return
        for _key, raw in list(table.items()):
            if raw is None:
                continue
            count += 1
            size += len(raw)
            if policy is None:
                continue
            at = next_wakeup(decode_state(raw), policy)
            if at is not None and at <= now:
                due += 1
                oldest = max(oldest, now - at)
                if now - at > OVERDUE_MS:
                    overdue += 1
        metrics.LEDGER_STATES.set(count)
        metrics.LEDGER_STATE_BYTES.set(size)
        if policy is not None:
            metrics.TIMERS_DUE.set(due)
            metrics.TIMERS_OVERDUE.set(overdue)
            metrics.TIMERS_OLDEST_OVERDUE.set(oldest / 1000)
