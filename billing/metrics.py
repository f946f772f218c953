"""Prometheus metrics of every process, declared once (README, "Operations").

Each process exposes the default registry at ``/metrics`` (the API and the emulator through a
route, the Faust workers through their web server). A metric only appears in the processes
that touch it. Labels are bounded on purpose: HTTP routes are templates
(``/api/v1/payments/{payment_id}``), never paths; provider outcomes, ledger input kinds,
discrepancy classes, consumer groups and partitions are small fixed sets. No id of a user,
payment or command is ever a label (they go into the JSON logs instead).

Names are ``billing_*``; ages are seconds, times are Unix seconds; the alert rules in
``ops/alerts.yml`` and the dashboard in ``ops/grafana/`` read these names.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "exposition", "provider_outcome", "timed"]

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_MICRO = (0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)

# ------------------------------------------------------------------------------- process
PROCESS_READY = Gauge(
    "billing_process_ready", "1 when the process is ready to serve (its /readyz answers 200)"
)

# ------------------------------------------------------------------------------------ API
HTTP_REQUESTS = Counter(
    "billing_http_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "billing_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method",
    ["route", "method"],
    buckets=_FAST,
)
IDEMPOTENCY = Counter(
    "billing_idempotency_outcomes_total",
    "Idempotency-Key outcomes of writes: accepted (new), replayed, in_flight (409), "
    "mismatch (422, same key other body)",
    ["outcome"],
)
COMMANDS_OPEN = Gauge(
    "billing_commands_open",
    "Accepted commands not done yet, by outbox status",
    ["status"],
    multiprocess_mode="livemax",
)
COMMANDS_OLDEST_AGE = Gauge(
    "billing_commands_oldest_open_age_seconds",
    "Age of the oldest accepted command not done (0 when none)",
    multiprocess_mode="livemax",
)
RELAY_REPUBLISHED = Counter(
    "billing_relay_republished_total",
    "Commands the outbox relay published again, by result (published, failed)",
    ["result"],
)
UNKNOWN_OUTCOMES = Gauge(
    "billing_unknown_outcomes",
    "Payments or refunds whose provider outcome is unknown, by object",
    ["object"],
    multiprocess_mode="livemax",
)
UNKNOWN_OLDEST_AGE = Gauge(
    "billing_unknown_outcome_oldest_age_seconds",
    "Age of the oldest payment or refund in status unknown (0 when none), by object",
    ["object"],
    multiprocess_mode="livemax",
)
RECON_LAST_COMPLETE = Gauge(
    "billing_recon_last_complete_window_end_timestamp_seconds",
    "End of the latest window covered by a finished reconciliation run (Unix time); absent "
    "before the first finished run",
    multiprocess_mode="livemax",
)
RECON_DAYS_INCOMPLETE = Gauge(
    "billing_recon_days_without_complete_run",
    "Days of the watchdog's lookback (yesterday once its night is over) with no complete "
    "nightly reconciliation run: never run, or every run failed or ended incomplete",
    multiprocess_mode="livemax",
)
RECON_RUNS_RECENT = Gauge(
    "billing_recon_runs_recent",
    "Reconciliation runs started in the last 48 h, by status",
    ["status"],
    multiprocess_mode="livemax",
)
RECON_DISCREPANCIES_OPEN = Gauge(
    "billing_recon_discrepancies_open",
    "Discrepancies without a resolution, by class",
    ["kind"],
    multiprocess_mode="livemax",
)
CONSUMER_LAG = Gauge(
    "billing_consumer_lag_messages",
    "Messages not yet committed by a consumer group, per topic and partition",
    ["group", "topic", "partition"],
    multiprocess_mode="livemax",
)
GAUGES_REFRESHED = Gauge(
    "billing_gauges_refreshed_timestamp_seconds",
    "When the database and lag gauges were last refreshed, by source (database, kafka)",
    ["source"],
    multiprocess_mode="livemax",
)

# --------------------------------------------------------------------------------- worker
LEDGER_INPUTS = Counter(
    "billing_ledger_inputs_total",
    "Ledger inputs, by kind (command, provider_event) and result (applied, duplicate, invalid)",
    ["kind", "result"],
)
LEDGER_DECIDE = Histogram(
    "billing_ledger_decide_seconds",
    "Time of the pure decide() of one ledger input",
    buckets=_MICRO,
)
LEDGER_STATES = Gauge(
    "billing_ledger_states", "Subscription states in this worker's table (active partitions)"
)
LEDGER_STATE_BYTES = Gauge(
    "billing_ledger_state_bytes", "Encoded size of the subscription states in this worker"
)
TIMERS_DUE = Gauge(
    "billing_timers_due", "Subscriptions whose next wake-up (renewal, re-drive, ...) has come"
)
TIMERS_OVERDUE = Gauge(
    "billing_timers_overdue",
    "Subscriptions whose wake-up is more than a minute late (the sweeper is behind)",
)
TIMERS_OLDEST_OVERDUE = Gauge(
    "billing_timers_oldest_due_age_seconds", "How late the most overdue wake-up is (0: none)"
)
PROVIDER_CALLS = Counter(
    "billing_provider_calls_total",
    "Calls to the payment provider, by operation and outcome (ok, rejected, not_found, "
    "timeout, http_5xx, http_429, connection, unknown)",
    ["op", "outcome"],
)
PROVIDER_LATENCY = Histogram(
    "billing_provider_call_duration_seconds",
    "Time of one provider call (one attempt), by operation",
    ["op"],
    buckets=_SLOW,
)
CONSUMER_RECORDS = Counter(
    "billing_consumer_records_total",
    "Records a commit-after-durable consumer made durable, by consumer (projection, "
    "notifier, history)",
    ["consumer"],
)
CONSUMER_EVENT_AGE = Gauge(
    "billing_consumer_event_age_seconds",
    "Now minus the Kafka timestamp of the last record a consumer made durable, by consumer "
    "(the projection's and the ClickHouse sink's lag in time)",
    ["consumer"],
)

# ---------------------------------------------------------------------------- emulator
EMULATOR_REQUESTS = Counter(
    "billing_emulator_requests_total",
    "Requests the YooKassa emulator answered, by route template, method and status",
    ["route", "method", "status"],
)


def provider_outcome(exc: BaseException | None, http_status: int = 0) -> str:
    """A provider call's outcome label from what it raised (None: ok) and the HTTP status
    the SDK saw (0 when none). Reads the port error's ``code`` and ``unknown`` flag rather
    than its class, so this module stays beneath providers/."""
    if exc is None:
        return "ok"
    code = str(getattr(exc, "code", "") or "")
    if code == "timeout" or isinstance(exc, TimeoutError):
        return "timeout"
    if code == "connection":
        return "connection"
    if http_status == 429:
        return "http_429"
    if http_status >= 500:
        return "http_5xx"
    if http_status == 404:
        return "not_found"
    if getattr(exc, "unknown", False):
        return "unknown"
    return "rejected"


@contextmanager
def timed(histogram: Histogram) -> Iterator[None]:
    """Observe the block's duration (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        histogram.observe(time.perf_counter() - start)


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The text format for a ``/metrics`` answer (content type ``CONTENT_TYPE_LATEST``)."""
    return generate_latest(registry)


def made_durable(consumer: str, records: Sequence[Any]) -> None:
    """A commit-after-durable consumer made ``records`` durable: count them, and set how old
    the newest is (its Kafka timestamp, ms) — the consumer's lag in time."""
    if not records:
        return
    CONSUMER_RECORDS.labels(consumer).inc(len(records))
    newest = max(int(getattr(r, "timestamp", 0) or 0) for r in records)
    if newest > 0:
        CONSUMER_EVENT_AGE.labels(consumer).set(max(0.0, time.time() - newest / 1000))
