"""The provider's limits, pure parts first (issue 13, "a midnight peak without
amplification"): the token bucket, the wait a 429 asks for, the retry budget the ledger's
payment deadline must exceed; then the gate and the SDK path that keeps Retry-After."""

from __future__ import annotations

import asyncio
import http.server
import random
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import pytest
from pydantic import ValidationError

from billing.config import WorkerSettings
from providers.port import ProviderThrottled, ProviderUnavailable
from providers.ratelimit import Bucket, Gate, pause_after_429_s, retry_after_s
from providers.yookassa_adapter import (
    YooKassaProvider,
    backoff_s,
    classify,
    retry_wait_s,
    should_retry,
)
from schemas.messages import PaymentRequest
from schemas.money import Money


# ------------------------------------------------------------------------------- bucket
def test_bucket_spends_the_burst_then_spaces_calls_at_the_rate() -> None:
    bucket = Bucket.full(rate=10.0, burst=3.0, now=0.0)
    waits = [bucket.reserve(0.0) for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])  # queued in order, no polling


def test_bucket_refills_with_time_up_to_the_burst() -> None:
    bucket = Bucket.full(rate=10.0, burst=2.0, now=0.0)
    bucket.reserve(0.0)
    bucket.reserve(0.0)
    assert bucket.reserve(0.05) == pytest.approx(0.05)  # half a token back, one promised
    assert bucket.reserve(100.0) == 0.0  # long idle: full again, not 1000 tokens
    assert bucket.reserve(100.0) == 0.0
    assert bucket.reserve(100.0) > 0.0


# ---------------------------------------------------------------------------- retry-after
@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        ("7", None, 7.0),
        (" 1.5 ", None, 1.5),
        ("-3", None, 0.0),
        (formatdate(1_000_030, usegmt=True), None, 30.0),  # an HTTP date, against now
        (None, {"retry_after": 1800}, 1.8),  # the body's milliseconds, as the SDK reads them
        ("soon", {"retry_after": 500}, 0.5),  # an unreadable header falls back to the body
        (None, {"retry_after": True}, None),
        (None, {}, None),
        (None, None, None),
    ],
)
def test_retry_after(header: str | None, body: dict[str, Any] | None, expected: float) -> None:
    assert retry_after_s(header, body, now=1_000_000.0) == expected


@pytest.mark.parametrize(
    ("asked", "backoff", "cap", "expected"),
    [
        (3.0, 0.5, 10.0, 3.0),
        (3600.0, 0.5, 10.0, 10.0),
        (None, 0.7, 10.0, 0.7),
        (0.0, 1.0, 5.0, 0.0),
    ],
)
def test_pause_after_429_honours_retry_after_up_to_the_cap(
    asked: float | None, backoff: float, cap: float, expected: float
) -> None:
    assert pause_after_429_s(asked, backoff, cap) == expected


def test_only_a_throttle_waits_its_retry_after() -> None:
    assert retry_wait_s(ProviderThrottled("x", retry_after_s=4.0), 0.5, 10.0) == 4.0
    assert retry_wait_s(ProviderThrottled("x", retry_after_s=40.0), 0.5, 10.0) == 10.0
    assert retry_wait_s(ProviderThrottled("x"), 0.5, 10.0) == 0.5
    assert retry_wait_s(ProviderUnavailable("x", code="timeout"), 0.5, 10.0) == 0.5


def test_a_429_is_classified_with_the_wait_it_asked_for() -> None:
    from yookassa.domain.exceptions import TooManyRequestsError

    exc = TooManyRequestsError({"type": "error", "id": "e", "code": "too_many_requests"})
    exc.retry_after_header = "12"
    error = classify(exc)
    assert isinstance(error, ProviderThrottled) and error.unknown
    assert error.retry_after_s == 12.0


# ---------------------------------------------------------------------------- retry budget
class _FullJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def _budget_by_the_adapter(settings: WorkerSettings, throttled: bool) -> float:
    """Walk the adapter's own policy: every attempt times out (or is a 429 asking for more
    than the cap), each wait at its largest."""
    error: ProviderUnavailable = (
        ProviderThrottled("x", retry_after_s=1e9) if throttled else ProviderUnavailable("x")
    )
    total, attempt = 0.0, 0
    while True:
        attempt += 1
        total += settings.provider_timeout_s
        if not should_retry(error, attempt, settings.provider_max_attempts):
            return total
        backoff = backoff_s(
            attempt,
            _FullJitter(),
            base_s=settings.provider_backoff_base_s,
            cap_s=settings.provider_backoff_cap_s,
        )
        total += retry_wait_s(error, backoff, settings.provider_retry_after_cap_s)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"provider_max_attempts": 5, "provider_retry_after_cap_s": 0.0},
        {"provider_max_attempts": 1},
        {"provider_timeout_s": 1.2, "provider_max_attempts": 2, "provider_retry_after_cap_s": 0.5},
    ],
)
def test_the_retry_budget_is_what_the_adapters_policy_can_spend(overrides: dict[str, Any]) -> None:
    settings = WorkerSettings(env="dev", payment_deadline_s=3600, **overrides)
    worst = max(_budget_by_the_adapter(settings, t) for t in (False, True))
    assert settings.provider_retry_budget_s == pytest.approx(worst)


def test_the_payment_deadline_must_exceed_the_retry_budget() -> None:
    default = WorkerSettings(env="dev")
    assert default.payment_deadline_s > default.provider_retry_budget_s
    with pytest.raises(ValidationError, match=r"BILLING_PAYMENT_DEADLINE_S .* retry budget"):
        WorkerSettings(env="dev", payment_deadline_s=15)
    with pytest.raises(ValidationError, match="retry budget"):
        WorkerSettings(env="dev", payment_deadline_s=60, provider_timeout_s=30)
    WorkerSettings(
        env="dev", payment_deadline_s=15, provider_timeout_s=2, provider_retry_after_cap_s=1
    )


# ------------------------------------------------------------------------------- the gate
async def test_the_gate_spaces_calls_at_the_rate() -> None:
    gate = Gate(rate_per_s=50.0, burst=1, max_in_flight=8)
    started: list[float] = []

    async def call() -> None:
        async with gate.slot():
            started.append(time.monotonic())

    t0 = time.monotonic()
    await asyncio.gather(*(call() for _ in range(6)))
    assert started[-1] - t0 >= 5 / 50 - 0.01


async def test_the_gate_bounds_calls_in_flight() -> None:
    gate = Gate(rate_per_s=1e6, burst=100, max_in_flight=3)
    running, peak = 0, 0

    async def call() -> None:
        nonlocal running, peak
        async with gate.slot():
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(call() for _ in range(20)))
    assert peak == 3


async def test_a_429_pauses_every_call_not_only_its_own() -> None:
    gate = Gate(rate_per_s=1e6, burst=100, max_in_flight=8)
    gate.pause(0.3)
    t0 = time.monotonic()

    async def call() -> float:
        async with gate.slot():
            return time.monotonic() - t0

    waited = await asyncio.gather(*(call() for _ in range(4)))
    assert min(waited) >= 0.29


# ------------------------------------------------------------- the SDK keeps Retry-After
_REQUEST = PaymentRequest(
    payment_id="p-1",
    command_id="c-1",
    user_id="u-1",
    plan_id="monthly",
    amount=Money(29900, "RUB"),
    period_months=1,
    return_url="https://cinema.example/return",
    description="Monthly plan",
)


class _Throttling(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = b'{"type":"error","id":"e-1","code":"too_many_requests","description":"slow"}'
        self.send_response(429)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "0.25")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.hits += 1  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def throttling_server() -> Iterator[Any]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    server.hits = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


async def test_the_adapter_honours_retry_after_through_the_sdk(throttling_server: Any) -> None:
    port = throttling_server.server_address[1]
    settings = WorkerSettings(
        env="dev",
        yookassa_api_url=f"http://127.0.0.1:{port}/v3",
        provider_timeout_s=2.0,
        provider_max_attempts=2,
        provider_backoff_base_s=0.01,
    )
    provider = YooKassaProvider(settings)
    t0 = time.monotonic()
    try:
        with pytest.raises(ProviderThrottled) as caught:
            await provider.create_payment(_REQUEST, "sub-1")
    finally:
        await provider.close()
    assert caught.value.retry_after_s == 0.25
    assert throttling_server.hits == 2  # retried once, under the same key
    assert time.monotonic() - t0 >= 0.24  # after the asked wait, not the 10 ms backoff
