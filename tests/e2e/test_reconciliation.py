"""Reconciliation end to end: real broker, database, engine (the API and a worker, which runs the
reconcile agent) and the YooKassa emulator.

A day of traffic: plain purchases, a declined one, one left unconfirmed, a refund through the
API; then what reconciliation exists for, made at the emulator:

- two lost webhooks (the user paid; the notification never came);
- a provider-side success we never heard of (the create call failed after the provider made
  the payment, so we never had its id; the user paid; the notification was lost);
- a double charge (a second provider payment under the same payment of ours);
- an amount mismatch (a provider payment under one of our payments, another amount);
- a refund the provider made outside our system.

The CLI runs the window and waits for the match: every object is in its class, the
repairable ones are repaired through the ledger (the payments succeed, the double charge is
refunded at the provider, all visible in the event history), the escalations wait and the
CLI exits 1. A second run over the same window finds nothing new; once an admin decides the
escalations, the run reports nothing unresolved and the CLI exits 0.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid

import httpx
import psycopg
import pytest

from billing.clock import now_ms
from reconciler import store
from reconciler.matcher import duplicate_refund_key
from tests.e2e.client import (
    ask_refund,
    paid_user,
    pay,
    payment,
    provider_refunds,
    refund_status,
    wait_status,
)
from tests.e2e.harness import Stack, wait_until
from tests.e2e.recon_client import (
    active,
    create_at_provider,
    emulator_payment,
    iso,
    items_by_object,
    lose_next_notification,
    provider_payment_of,
    reconcile_cli,
    run_row,
    tallied,
)

pytestmark = [pytest.mark.e2e]

# Nothing re-reads a payment on its own during the test (the sweeper's re-drive would heal a
# lost webhook before the report is taken; the CLI's run must find it).
STACK_ENV = {"BILLING_PAYMENT_DEADLINE_S": "1800"}


# ------------------------------------------------------------------------------- test
def test_a_day_of_traffic_reconciled_repaired_and_rerun(stack: Stack) -> None:
    window_start = now_ms() - 60_000
    expected: dict[str, str] = {}  # provider id -> class

    # Plain traffic.
    plain = [paid_user(stack) for _ in range(3)]
    for user, pid in plain:
        expected[payment(stack, user, pid)["provider_payment_id"]] = "matched"
    refunded_user, refunded_pid = paid_user(stack)
    asked = ask_refund(stack, refunded_user, refunded_pid, "100.00")
    assert asked.status_code == 202, asked.text
    our_refund = refund_status(stack, refunded_user, asked.json()["refund_id"], "succeeded")
    expected[payment(stack, refunded_user, refunded_pid)["provider_payment_id"]] = "matched"
    expected[our_refund["provider_refund_id"]] = "matched"
    declined = f"u-{uuid.uuid4().hex[:8]}"
    declined_pid = pay(stack, declined)
    pending = wait_status(stack, declined, declined_pid, "pending")
    stack.control.confirm(pending["provider_payment_id"], "cancel", reason="card_expired")
    wait_status(stack, declined, declined_pid, "canceled")
    expected[pending["provider_payment_id"]] = "matched"
    idle = f"u-{uuid.uuid4().hex[:8]}"
    idle_pid = pay(stack, idle)
    expected[wait_status(stack, idle, idle_pid, "pending")["provider_payment_id"]] = "in_flight"

    # Two lost webhooks.
    lost: list[tuple[str, str]] = []
    for _ in range(2):
        user = f"u-{uuid.uuid4().hex[:8]}"
        pid = pay(stack, user)
        provider_id = wait_status(stack, user, pid, "pending")["provider_payment_id"]
        lose_next_notification(stack, provider_id)
        lost.append((user, pid))
        expected[provider_id] = "missing_internal"

    # A success we never heard of: the create answered 500 after making the payment (every
    # attempt), so the ledger has the payment as unknown, without a provider id.
    unheard = f"u-{uuid.uuid4().hex[:8]}"
    stack.control.add_fault("payments.create", "500", when="after", count=3)
    unheard_pid = pay(stack, unheard)
    wait_until(
        lambda: payment(stack, unheard, unheard_pid)["status"] == "unknown",
        message="payment outcome unknown",
    )
    stack.control.clear_faults()
    unheard_provider = provider_payment_of(stack, unheard_pid)["id"]
    lose_next_notification(stack, unheard_provider)
    assert payment(stack, unheard, unheard_pid)["provider_payment_id"] is None
    expected[unheard_provider] = "missing_internal"

    # A double charge: the same payment of ours charged again under another key.
    dup_user, dup_pid = paid_user(stack)
    kept = payment(stack, dup_user, dup_pid)["provider_payment_id"]
    meta = emulator_payment(stack, kept)["metadata"]
    second = create_at_provider(stack, meta, "299.00")
    expected[kept], expected[second] = "matched", "duplicate_charge"

    # An amount mismatch: a provider payment under one of ours, another amount.
    odd_user, odd_pid = paid_user(stack)
    odd_kept = payment(stack, odd_user, odd_pid)["provider_payment_id"]
    odd = create_at_provider(stack, emulator_payment(stack, odd_kept)["metadata"], "1.00")
    expected[odd_kept], expected[odd] = "matched", "amount_mismatch"

    # A refund the provider made outside our system.
    out_user, out_pid = paid_user(stack)
    out_payment = payment(stack, out_user, out_pid)["provider_payment_id"]
    resp = httpx.post(
        f"{stack.emulator_url}/v3/refunds",
        auth=("100500", "emulator-secret"),
        headers={"Idempotence-Key": str(uuid.uuid4())},
        json={"payment_id": out_payment, "amount": {"value": "50.00", "currency": "RUB"}},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    outside_refund = resp.json()["id"]
    expected[out_payment], expected[outside_refund] = "matched", "refund_mismatch"

    # The lost ones are still not known to us.
    for user, pid in [*lost, (unheard, unheard_pid)]:
        assert payment(stack, user, pid)["status"] in ("pending", "unknown")
    window = ("--from", iso(window_start), "--to", iso(now_ms() + 60_000))

    # ------------------------------------------------------------------- first run
    started = time.monotonic()
    code, out, run_id = reconcile_cli(stack, *window, "--wait")
    took = time.monotonic() - started
    assert run_id is not None, out
    print(f"\n$ billing reconcile {' '.join(window)} --wait  # exit {code}\n{out}")
    assert code == 1, out  # escalations wait for an admin
    assert "Items per class" in out and "Succeeded totals per currency" in out, out
    found = items_by_object(stack, run_id)
    # Every item is recorded but the matched ones, which the agents only count.
    recorded = {k: v for k, v in expected.items() if v != "matched"}
    assert {k: found[k][0] for k in recorded} == recorded, out
    assert not {k for k, v in expected.items() if v == "matched"} & set(found), out
    first = run_row(stack, run_id)
    assert first["status"] == "finished"
    n_matched = list(expected.values()).count("matched")
    assert first["counts"]["matched"] >= n_matched  # (other tests' traffic may be in the window)
    assert first["counts"]["matched"] == tallied(stack, run_id)
    assert first["counts"]["missing_internal"] == 3
    assert first["counts"]["duplicate_charge"] == 1
    assert first["counts"]["amount_mismatch"] == 1
    assert first["counts"]["refund_mismatch"] == 1
    assert first["unresolved"] == 2 and first["new_discrepancies"] == first["discrepancies"]
    assert first["totals"]["payments_theirs"]["RUB"] != first["totals"]["payments_ours"]["RUB"]
    assert found[second][1] == "refund_later_duplicate"

    # The repairs, through the ledger.
    for user, pid in [*lost, (unheard, unheard_pid)]:
        wait_status(stack, user, pid, "succeeded")
        wait_until(functools.partial(active, stack, user), message=f"{user} active (repaired)")
    assert payment(stack, unheard, unheard_pid)["provider_payment_id"] == unheard_provider
    wait_until(
        lambda: any(r["status"] == "succeeded" for r in provider_refunds(stack, second)),
        message="the duplicate charge refunded at the provider",
    )
    dup_refunds = provider_refunds(stack, second)
    assert len(dup_refunds) == 1 and dup_refunds[0]["amount"]["value"] == "299.00"
    assert dup_refunds[0]["metadata"]["refund_id"] == duplicate_refund_key(second)
    assert provider_refunds(stack, kept) == []  # never the charge we recorded
    events = stack.query(
        "SELECT event_type, body FROM subscription_events WHERE subscription_id ="
        " (SELECT subscription_id FROM payments WHERE payment_id = %s) ORDER BY version",
        dup_pid,
    )
    types = [t for t, _ in events]
    assert "RefundRequested" in types and "RefundSucceeded" in types, types
    requested = next(body for t, body in events if t == "RefundRequested")
    assert requested["request"]["actor"] == "reconciler" and requested["request"]["duplicate"]
    assert payment(stack, dup_user, dup_pid)["status"] == "succeeded"  # ours untouched

    # ------------------------------------------------------------------ second run
    code2, out2, run2 = reconcile_cli(stack, *window, "--wait")
    assert run2 is not None and run2 != run_id, out2
    assert code2 == 1, out2  # the escalations still wait
    again = run_row(stack, run2)
    assert again["status"] == "finished" and again["new_discrepancies"] == 0, out2
    found2 = items_by_object(stack, run2)
    for provider_id, kind in expected.items():
        if kind in ("missing_internal", "matched"):
            assert provider_id not in found2  # matched now: counted, not recorded
        else:
            assert found2[provider_id][0] == kind
    assert dup_refunds[0]["id"] not in found2  # the repair's own refund: matched
    # The three repaired payments and the duplicate's refund are matched now.
    assert again["counts"]["matched"] >= first["counts"]["matched"] + 4
    assert again["counts"]["matched"] == tallied(stack, run2)
    open_keys = {
        key
        for (key,) in stack.query(
            "SELECT i.item_key FROM recon_run_items r JOIN recon_items i USING (item_key)"
            " WHERE r.run_id = %s AND i.discrepancy",
            run2,
        )
    }
    first_keys = {
        key
        for (key,) in stack.query("SELECT item_key FROM recon_run_items WHERE run_id = %s", run_id)
    }
    assert open_keys <= first_keys
    assert len(provider_refunds(stack, second)) == 1  # not refunded twice

    # ------------------------------------------------------------ admin decisions
    async def decide() -> None:
        async with await psycopg.AsyncConnection.connect(stack.dsn, autocommit=True) as conn:
            for item in await store.list_items(conn, run_id=run2):
                await store.resolve(
                    conn,
                    item.item_key,
                    resolution="write_off" if item.kind == "amount_mismatch" else "accept_ours",
                    actor="admin:e2e",
                    note="checked with the provider",
                    at=now_ms(),
                )

    asyncio.run(decide())
    code3, out3, _ = reconcile_cli(stack, "--show", run2)
    assert code3 == 0, out3
    print(
        f"\nreconciliation e2e: {first['lines']} lines, first run {took:.1f}s by the CLI"
        f" ({first['duration_ms']} ms recorded), second run {again['duration_ms']} ms"
    )
