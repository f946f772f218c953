"""Pure parts of billing/metrics.py: the provider outcome labels and the consumers' lag."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY

from billing import metrics
from providers.port import ProviderNotFound, ProviderRejected, ProviderUnavailable


@pytest.mark.parametrize(
    ("exc", "http", "outcome"),
    [
        (None, 0, "ok"),
        (ProviderUnavailable("x", code="timeout"), 0, "timeout"),
        (ProviderUnavailable("x", code="connection"), 0, "connection"),
        (ProviderUnavailable("x", code="too_many_requests"), 429, "http_429"),
        (ProviderUnavailable("x", code="internal_server_error"), 500, "http_5xx"),
        (ProviderUnavailable("x", code="processing"), 202, "unknown"),
        (ProviderRejected("x", code="invalid_request"), 400, "rejected"),
        (ProviderNotFound("x", code="not_found"), 404, "not_found"),
    ],
)
def test_provider_outcome(exc: BaseException | None, http: int, outcome: str) -> None:
    assert metrics.provider_outcome(exc, http) == outcome


@dataclass
class Record:
    timestamp: int


def test_made_durable_counts_and_sets_the_age_of_the_newest() -> None:
    before = REGISTRY.get_sample_value("billing_consumer_records_total", {"consumer": "t"}) or 0
    now_ms = int(time.time() * 1000)
    metrics.made_durable("t", [Record(now_ms - 60_000), Record(now_ms - 30_000)])
    after = REGISTRY.get_sample_value("billing_consumer_records_total", {"consumer": "t"})
    age = REGISTRY.get_sample_value("billing_consumer_event_age_seconds", {"consumer": "t"})
    assert after == before + 2
    assert age is not None and 29 <= age <= 35
