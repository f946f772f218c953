"""No amplification when the provider is slower than the payment deadline (issue 13): the
ledger re-drives every payment while its first create is still in flight, and the gateway
does not send that create again (streams.gateway.inflight), so the emulator counts one
create call per payment, not one per re-drive. Without the guard this run made two or more
creates per payment."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from schemas.ids import subscription_id_for
from tests.e2e.client import pay, wait_status
from tests.e2e.harness import Stack

pytestmark = [pytest.mark.e2e]

STACK_ENV = {
    # The test suite may set a deadline under the retry budget (the settings refuse it
    # elsewhere): every payment is re-driven while its create is in flight.
    "BILLING_PAYMENT_DEADLINE_S": "1",
    "BILLING_SWEEP_INTERVAL_S": "0.5",
    "BILLING_PROVIDER_TIMEOUT_S": "5",
}
USERS = 8
CREATE_S = 2.5  # every create takes this long at the emulator


def test_a_payment_re_driven_while_its_create_is_in_flight_is_created_once(
    stack: Stack,
) -> None:
    stack.control.reset()
    stack.control.configure(auto_confirm="succeed", auto_confirm_delay_s=0)
    stack.control.add_fault("payments.create", "delay", count=None, delay_s=CREATE_S)
    users = [f"amp-{i}-{uuid.uuid4().hex[:6]}" for i in range(USERS)]
    with ThreadPoolExecutor(USERS) as pool:
        pids = list(pool.map(lambda u: pay(stack, u), users))
    for user, pid in zip(users, pids, strict=True):
        wait_status(stack, user, pid, "succeeded", timeout=90)
    stack.control.clear_faults()
    stats = stack.control.stats()
    redriven = stack.query(
        "SELECT count(*) FROM subscription_events"
        " WHERE event_type = 'PaymentRedriven' AND subscription_id = ANY(%s::uuid[])",
        [subscription_id_for(u) for u in users],
    )[0][0]
    assert redriven >= USERS // 2, "the deadline must have re-driven payments in flight"
    assert stats["payments_created"] == USERS
    assert stats["create_calls"] <= 1.2 * USERS, stats["create_calls"]
