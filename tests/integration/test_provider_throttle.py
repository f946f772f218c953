"""The shop's rate limit against the emulator (issue 13): a 429 tells how long to wait
(Retry-After), the adapter waits that long, not its own short backoff, and every call of the
provider waits with it; the retry uses the same key, so one object is made."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from providers.yookassa_adapter import YooKassaProvider
from schemas.messages import PaymentRequest
from schemas.money import Money
from tests.fixtures.emulator import EmulatorHandle

pytestmark = pytest.mark.integration


def new_request() -> PaymentRequest:
    return PaymentRequest(
        payment_id=str(uuid.uuid4()),
        command_id=str(uuid.uuid4()),
        user_id=f"user-{uuid.uuid4().hex[:8]}",
        plan_id="monthly",
        amount=Money(49900, "RUB"),
        period_months=1,
        return_url="https://cinema.example/return",
        description="Monthly plan",
    )


async def test_a_429_is_waited_out_for_its_retry_after_then_one_payment(
    fresh_emulator: EmulatorHandle,
) -> None:
    fresh_emulator.control.add_fault("payments.create", "429", count=1, delay_s=0.6)
    provider = YooKassaProvider(
        fresh_emulator.settings(provider_max_attempts=3),
        backoff_base_s=0.01,
        backoff_cap_s=0.02,
    )
    first, second = new_request(), new_request()
    try:
        t0 = time.monotonic()

        async def pay(request: PaymentRequest, start_s: float) -> tuple[str | None, float]:
            await asyncio.sleep(start_s)
            made = await provider.create_payment(request, str(uuid.uuid4()))
            return made.payment_id, time.monotonic() - t0

        # The second starts once the first one's 429 has paused the shop.
        done = await asyncio.gather(pay(first, 0.0), pay(second, 0.2))
    finally:
        await provider.close()
    assert [d[0] for d in done] == [first.payment_id, second.payment_id]
    # Both waited the asked 0.6 s (not the 10-20 ms backoff), the second one too.
    assert min(d[1] for d in done) >= 0.55
    stats = fresh_emulator.control.stats()
    # A 429 before the work is no create call at the emulator: the retry and the second.
    assert stats["create_calls"] == 2
    assert stats["payments_created"] == 2
