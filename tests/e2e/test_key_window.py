"""No provider create past the key window (ARCHITECTURE.md invariant 7), end to end: a real
broker, PostgreSQL, the emulator and worker processes on a controllable clock.

Requests whose first gateway call was lost (a payment created at the provider but its answer
lost, a payment never created, a refund made but its answer lost) are left unknown; both
clocks move 25 h, past the 24 h the provider (here the emulator) honours an Idempotence-Key.
Then every path that brings an old request back to the gateway is taken, one at a time: the
sweeper's re-drive, a relay republish, a duplicate command, and the worker restarted under a
new BILLING_WORKER_ID reading from ``earliest``. Counted on the emulator: not one create call
after the clock moved; every payment and refund ends terminal or ``unknown`` with a reason.
Without the gateway's guard the first re-drive alone makes a second charge at the emulator.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.ids import subscription_id_for
from schemas.topics import COMMANDS, EVENTS
from tests.e2e.client import ask_refund, pay, refund_status, wait_status
from tests.e2e.harness import Stack, log_contains, wait_until

pytestmark = [pytest.mark.e2e]

STACK_ENV = {
    "BILLING_PROVIDER_MAX_ATTEMPTS": "1",  # one lost call is one lost call
    "BILLING_PAYMENT_REDRIVE_MAX_BACKOFF_S": "5",  # re-drives come often: each one a chance
    "BILLING_SWEEP_INTERVAL_S": "0.5",
}
HOUR_MS = 3_600_000
CREATES = ("payments.create", "refunds.create")


def creates(stack: Stack) -> dict[str, int]:
    """Create calls the emulator received (whatever their outcome) and objects it made."""
    stats = stack.control.stats()
    out = {e: int(stats["requests"].get(e, 0)) for e in CREATES}
    out.update(payments=stats["payments_created"], refunds=stats["refunds_created"])
    return out


def fault(stack: Stack, endpoint: str, kind: str, when: str) -> int:
    spec = stack.control.add_fault(endpoint, kind, when=when, count=None, delay_s=4)
    fault_id: int = spec["id"]
    return fault_id


def drop_fault(stack: Stack, fault_id: int) -> None:
    httpx.delete(f"{stack.emulator_url}/__emulator/faults/{fault_id}", timeout=10)


def statuses(stack: Stack, payment_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    rows = stack.query(
        "SELECT payment_id::text, status, status_reason FROM payments"
        " WHERE payment_id = ANY(%s::uuid[])",
        payment_ids,
    )
    return {str(r[0]): (str(r[1]), r[2]) for r in rows}


def refund_row(stack: Stack, refund_id: str) -> tuple[str, str | None]:
    (row,) = stack.query(
        "SELECT status, status_reason FROM refunds WHERE refund_id = %s", refund_id
    )
    return str(row[0]), row[1]


async def _lag(stack: Stack, group: str, topic: str) -> int:
    """How many messages of ``topic`` the consumer group has not committed yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.broker.bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.broker.bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(topic, p) for p in range(stack.partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
        await admin.close()
    done = {tp: meta.offset for tp, meta in committed.items()}
    return sum(max(0, end - done.get(tp, 0)) for tp, end in ends.items())


def processed(stack: Stack, group: str) -> None:
    """Wait until the worker's group has handled every command there is now, then every
    event there is after that (so the gateway saw what the ledger emitted for them), and
    the gateway's calls have had time to land."""
    for topic in (COMMANDS, EVENTS):
        ends_at = time.monotonic() + 90
        while asyncio.run(_lag(stack, group, topic)) > 0:
            # The sweeper keeps appending re-drives: wait for a moment with nothing pending.
            assert time.monotonic() < ends_at, f"{group} never caught up on {topic}"
            time.sleep(0.3)
    time.sleep(3)


def list_calls(stack: Stack) -> int:
    requests: dict[str, int] = stack.control.stats()["requests"]
    return requests.get("payments.list", 0) + requests.get("refunds.list", 0)


async def publish(stack: Stack, rows: list[tuple[Any, ...]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker.bootstrap, acks="all")
    await producer.start()
    try:
        for subscription_id, payload in rows:
            await producer.send_and_wait(
                COMMANDS, bytes(payload), key=str(subscription_id).encode()
            )
    finally:
        await producer.stop()


def test_no_create_past_the_key_window(stack: Stack) -> None:
    stack.control.reset()
    lost_a, lost_b, refunder = (f"kw-{n}-{uuid.uuid4().hex[:6]}" for n in "abr")
    users = [lost_a, lost_b, refunder]

    # A paid payment to refund; from here on no notification reaches us (the gateway's own
    # answers are the only news, and they are lost).
    paid = pay(stack, refunder)
    pending = wait_status(stack, refunder, paid, "pending")
    stack.control.confirm(pending["provider_payment_id"], "succeed")
    wait_status(stack, refunder, paid, "succeeded")
    stack.control.add_fault("notifications", "lost", count=None)

    # A: created at the provider, the answer lost (and every re-drive's too).
    f = fault(stack, "payments.create", "timeout", "after")
    pid_a = pay(stack, lost_a)
    wait_status(stack, lost_a, pid_a, "unknown")
    assert creates(stack)["payments"] == 2
    drop_fault(stack, f)
    # B: never created (the provider hung before the work), nor on any re-drive.
    fault(stack, "payments.create", "timeout", "before")
    pid_b = pay(stack, lost_b)
    wait_status(stack, lost_b, pid_b, "unknown")
    # R: a partial refund made at the provider, its answer lost.
    fault(stack, "refunds.create", "timeout", "after")
    asked = ask_refund(stack, refunder, paid, "100.00")
    assert asked.status_code == 202, asked.text
    refund_id = asked.json()["refund_id"]
    refund_status(stack, refunder, refund_id, "unknown")
    assert creates(stack)["refunds"] == 1
    payments = [paid, pid_a, pid_b]

    # 25 h later on every clock: each key is forgotten at the provider. Objects are counted
    # before the move (while the faults stand, a create can only replay its key), calls a
    # moment after it (a call decided before the engine's clock moved has landed); then the
    # API faults go, so a create would now go through (notifications stay lost).
    made = {k: v for k, v in creates(stack).items() if k not in CREATES}  # faults make none
    stack.advance_clock(25 * HOUR_MS)
    time.sleep(1.0)
    before = {**creates(stack), **made}
    for spec in stack.control.faults():
        if spec["endpoint"] != "notifications":
            drop_fault(stack, spec["id"])

    def check(when: str) -> None:
        assert creates(stack) == before, f"{when}: a create after the key window"

    # 0. The sweeper re-drives all three: found by searching (A canceled by the provider
    # after its confirmation window, R succeeded), or given up (B: never created).
    gave_up_b = log_contains(stack.workers[0].log_path, f"payment {pid_b} left unknown")

    def resolved() -> bool:
        return (
            statuses(stack, [pid_a])[pid_a][0] == "canceled"
            and refund_row(stack, refund_id)[0] == "succeeded"
            and gave_up_b()
        )

    wait_until(
        lambda: creates(stack) != before or resolved(),
        timeout=90,
        message="A found canceled, R found succeeded, B given up",
    )
    check("re-drive")

    def final() -> None:
        seen = statuses(stack, payments)
        assert seen[paid][0] == "succeeded", seen
        assert seen[pid_a][0] == "canceled", seen
        assert seen[pid_b][0] == "unknown" and seen[pid_b][1], seen
        assert refund_row(stack, refund_id)[0] == "succeeded"
        for pid, (status, reason) in seen.items():
            assert status in ("succeeded", "canceled") or (status == "unknown" and reason), pid

    final()

    # 1. The relay republishes the commands as if never applied.
    forced = stack.query(
        "UPDATE command_outbox SET status = 'accepted', next_publish_at = now(),"
        " published_at = NULL WHERE user_id = ANY(%s) RETURNING command_id::text",
        users,
    )
    assert len(forced) == 4  # three payments and the refund
    wait_until(
        lambda: (
            stack.query(
                "SELECT count(*) FROM command_outbox WHERE user_id = ANY(%s)"
                " AND published_at IS NOT NULL",
                users,
            )[0][0]
            == 4
        ),
        timeout=60,
        message="relay republished the commands",
    )
    processed(stack, stack.worker_id)
    check("relay republish")
    final()

    # 2. The same commands published again, straight to billing.commands.
    rows = stack.query(
        "SELECT subscription_id, payload FROM command_outbox WHERE user_id = ANY(%s)", users
    )
    asyncio.run(publish(stack, rows))
    processed(stack, stack.worker_id)
    check("duplicate command")
    final()

    # 3. The worker restarted under a new id, its groups reading from the earliest offset: a
    # fresh ledger replays every command and provider event, the gateway every request.
    searches = list_calls(stack)
    group = f"billing-new-{uuid.uuid4().hex[:6]}"
    stack.workers[0].stop()
    stack.env.update(BILLING_WORKER_ID=group, BILLING_WORKER_OFFSET_RESET="earliest")
    fresh = stack._worker(1)
    stack.workers.append(fresh)
    stack.start_worker(fresh)
    wait_until(
        log_contains(fresh.log_path, f"payment {pid_b} left unknown"),
        timeout=90,
        message="the restarted gateway gave up on the replayed B",
    )
    processed(stack, group)
    assert list_calls(stack) > searches  # it searched, it did not create
    check("restart from earliest")
    seen = statuses(stack, payments)
    for status, reason in seen.values():
        assert status in ("succeeded", "canceled") or (status == "unknown" and reason), seen
    for user in users:
        assert stack.query(
            "SELECT count(*) FROM subscriptions WHERE subscription_id = %s",
            subscription_id_for(user),
        ) == [(1,)]
    print(f"key window e2e: emulator {creates(stack)}; payments {seen}")
