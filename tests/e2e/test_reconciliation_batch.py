"""The batch path end to end, against the streaming path on the same data: real broker,
database, worker (reconcile agents), history worker (ClickHouse, batch runs) and emulator.

Part 1: a day of traffic with a lost webhook, a double charge, an amount mismatch, a refund
made outside our system and a payment left unconfirmed. The batch path (``billing reconcile
--engine batch``) runs first: it finds each object in its class, the repairs it publishes go
through the ledger (the payment succeeds, the double charge is refunded once, never the one
we recorded). Then, on the repaired books, a streaming run and a batch run over the same
window agree item for item (class and repair of every object, counts per class, succeeded
totals). Part 2: both runs are in the ClickHouse history (``recon_runs``), and so are their
discrepancies.
"""

from __future__ import annotations

import functools
import time
import uuid
from typing import Any

import httpx
import pytest

from billing.clock import now_ms
from tests.e2e.client import paid_user, pay, payment, provider_refunds, wait_status
from tests.e2e.harness import Stack, wait_until
from tests.e2e.recon_client import (
    active,
    create_at_provider,
    emulator_payment,
    iso,
    items_by_object,
    lose_next_notification,
    reconcile_cli,
    run_row,
)

pytestmark = [pytest.mark.e2e]

STACK_ENV = {"BILLING_PAYMENT_DEADLINE_S": "1800"}  # no re-read heals a lost webhook first
STACK_HISTORY = True


def history_runs(stack: Stack) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{stack.history_url}/analytics/recon_runs/", timeout=30)
    assert resp.status_code == 200, resp.text
    return {r["run_id"]: r for r in resp.json()}


def test_batch_path_repairs_and_agrees_with_the_streaming_path(stack: Stack) -> None:
    window_start = now_ms() - 60_000
    expected: dict[str, str] = {}

    user, pid = paid_user(stack)
    expected[payment(stack, user, pid)["provider_payment_id"]] = "matched"
    idle = f"u-{uuid.uuid4().hex[:8]}"
    idle_pid = pay(stack, idle)
    expected[wait_status(stack, idle, idle_pid, "pending")["provider_payment_id"]] = "in_flight"

    lost_user = f"u-{uuid.uuid4().hex[:8]}"
    lost_pid = pay(stack, lost_user)
    lost_provider = wait_status(stack, lost_user, lost_pid, "pending")["provider_payment_id"]
    lose_next_notification(stack, lost_provider)
    expected[lost_provider] = "missing_internal"

    dup_user, dup_pid = paid_user(stack)
    kept = payment(stack, dup_user, dup_pid)["provider_payment_id"]
    second = create_at_provider(stack, emulator_payment(stack, kept)["metadata"], "299.00")
    expected[kept], expected[second] = "matched", "duplicate_charge"

    odd_user, odd_pid = paid_user(stack)
    odd_kept = payment(stack, odd_user, odd_pid)["provider_payment_id"]
    odd = create_at_provider(stack, emulator_payment(stack, odd_kept)["metadata"], "1.00")
    expected[odd_kept], expected[odd] = "matched", "amount_mismatch"

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
    expected[out_payment], expected[resp.json()["id"]] = "matched", "refund_mismatch"
    window = ("--from", iso(window_start), "--to", iso(now_ms() + 60_000))

    # ----------------------------------------------------------- the batch path first
    started = time.monotonic()
    code, out, batch1 = reconcile_cli(stack, *window, "--engine", "batch", "--wait")
    took = time.monotonic() - started
    print(f"\n$ billing reconcile {' '.join(window)} --engine batch --wait  # exit {code}\n{out}")
    assert batch1 is not None, out
    assert code == 1, out  # escalations wait for an admin
    found = items_by_object(stack, batch1)
    classes = {k: found[k][0] for k in expected if k in found}
    # Matched items are counted, not recorded (as by the streaming path).
    assert classes == {k: v for k, v in expected.items() if v != "matched"}, out
    first = run_row(stack, batch1)
    assert first["status"] == "finished"
    assert first["counts"]["matched"] == sum(1 for v in expected.values() if v == "matched")
    assert found[second][1] == "refund_later_duplicate"

    # Its repairs, through the ledger.
    wait_status(stack, lost_user, lost_pid, "succeeded")
    wait_until(functools.partial(active, stack, lost_user), message="repaired user active")
    wait_until(
        lambda: any(r["status"] == "succeeded" for r in provider_refunds(stack, second)),
        message="the duplicate charge refunded at the provider",
    )
    assert len(provider_refunds(stack, second)) == 1
    assert provider_refunds(stack, kept) == []

    # ----------------------------------------- both paths on the repaired books
    code_s, out_s, streaming = reconcile_cli(stack, *window, "--wait")
    code_b, out_b, batch2 = reconcile_cli(stack, *window, "--engine", "batch", "--wait")
    assert streaming is not None and batch2 is not None, out_s + out_b
    assert code_s == code_b == 1, out_s + out_b
    s_row, b_row = run_row(stack, streaming), run_row(stack, batch2)
    assert s_row["counts"] == b_row["counts"], (out_s, out_b)
    assert s_row["totals"] == b_row["totals"], (out_s, out_b)
    assert s_row["lines"] == b_row["lines"]
    s_items = items_by_object(stack, streaming)
    b_items = items_by_object(stack, batch2)
    assert s_items == b_items  # both record every item but the matched ones (counted)
    assert b_items, "the escalations and the idle payment are recorded"
    # Repaired by the first batch run: matched now (counted, not recorded) on both paths.
    assert lost_provider not in s_items and s_row["counts"]["missing_internal"] == 0
    assert s_row["counts"]["duplicate_charge"] == 1  # still a duplicate, its refund matched
    assert b_row["new_discrepancies"] == 0 and s_row["new_discrepancies"] == 0
    assert len(provider_refunds(stack, second)) == 1  # not refunded twice

    # ----------------------------------------------------- the ClickHouse history
    def in_history() -> bool:
        runs = history_runs(stack)
        return all(
            r in runs and runs[r]["status"] == "finished" for r in (batch1, streaming, batch2)
        )

    wait_until(in_history, timeout=60, message="the runs copied into ClickHouse")
    runs = history_runs(stack)
    assert runs[batch1]["engine"] == "batch" and runs[streaming]["engine"] == "streaming"
    assert runs[streaming]["counts"] == s_row["counts"]
    assert runs[batch2]["counts"] == b_row["counts"]
    day = httpx.get(
        f"{stack.history_url}/analytics/discrepancies_by_day/",
        params={"from": str(window_start - 86_400_000), "to": str(now_ms() + 86_400_000)},
        timeout=30,
    ).json()
    kinds = {d["kind"] for d in day}
    assert {"missing_internal", "duplicate_charge", "amount_mismatch", "refund_mismatch"} <= kinds
    print(
        f"\nbatch reconciliation e2e: {first['lines']} lines, first batch run {took:.1f}s by"
        f" the CLI ({first['duration_ms']} ms recorded); streaming {s_row['duration_ms']} ms,"
        f" batch {b_row['duration_ms']} ms on the repaired books"
    )
