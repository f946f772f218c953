"""Chaos for the side-effecting consumers of billing.events (invariant 8: nothing acked before
it is done): the notifier (billing.notifications, billing.entitlements) and the ClickHouse
history worker.

Real domain events, folded by the pure ledger machine from payments (succeeded, declined,
refunded in full) and encoded as the ledger encodes them, are published to billing.events on a
broker of this test's own while the notifier's process (a Faust worker running only the
notifier) and the history worker are each SIGKILLed and SIGTERMed several times, every fault
soon after the previous restart so that it hits the backlog the downtime left. Afterwards:
every notification and entitlement change that any event stands for is on its topic (at least
once, with the same id and content), and ClickHouse holds every event and the same money
totals as the event log (invariant 6).

Replay a run with ``BILLING_CHAOS_SEED=<seed>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from analytics.totals import differences, from_event_log, from_history
from billing.clock import now_ms
from billing.kafka_local import KafkaBroker, ensure_topics, fetch_kafka_jars, free_port
from billing.processes import ManagedProcess
from schemas import notifications as contract
from schemas.ids import (
    command_id_for,
    derived_id,
    observation_id_for,
    payment_id_for,
    subscription_id_for,
)
from schemas.messages import (
    AnyEvent,
    PaymentObserved,
    PaySubscription,
    RefundObserved,
    RefundPayment,
    encode,
)
from schemas.money import Money
from schemas.topics import ENTITLEMENTS, EVENTS, NOTIFICATIONS
from streams.consumer import Start, run_consumer
from streams.ledger.machine import LedgerInput, Policy, decide
from streams.notify.agent import derive
from tests.chaos.invariants import read_topic

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(360)]

USERS = 12_000  # more than the run publishes: the faults end the publishing
RATE = 300.0  # events a second, published all through the faults
WORK_TIMEOUT_S = 20.0  # a restarted process is working within this (a dead member's session)
Fault = tuple[Literal["sigkill", "sigterm"], Literal["after ready", "while working", "IDLE"]]
# Each signal at each moment, twice, per process, in a seeded order.
FAULTS: list[Fault] = [
    (signal, when)
    for signal in ("sigkill", "sigterm")
    for when in ("after ready", "while working")
    for _ in range(2)
]
SETTLE_TIMEOUT_S = 90.0
PARTITIONS = 4
PRICE = Money(29900, "RUB")

# The notifier alone in a Faust worker of its own (the worker's other agents need the database
# and the provider); argv after ``-c`` goes to Faust's command line.
NOTIFIER_MAIN = (
    "import logging\n"
    "from billing.config import Settings\n"
    "from streams.app import create_app\n"
    "s = Settings()\n"
    "logging.basicConfig(level=s.log_level)\n"
    "create_app(s, agents=('notifier',)).main()\n"
)


# ---------------------------------------------------------------------------------- events
def _facts(user: str, fate: str, at: int) -> list[AnyEvent]:
    """The events the ledger emits for one user's payment: ``ok`` (succeeded), ``declined``,
    or ``refunded`` (succeeded, then refunded in full: the subscription is canceled)."""
    sub = subscription_id_for(user)
    cid = command_id_for(user, "chaos")
    pid = payment_id_for(cid)
    status: Literal["succeeded", "canceled"] = "canceled" if fate == "declined" else "succeeded"
    inputs: list[LedgerInput] = [
        PaySubscription(
            command_id=cid,
            subscription_id=sub,
            issued_at=at,
            user_id=user,
            payment_id=pid,
            plan_id="monthly",
            amount=PRICE,
            period_months=1,
            return_url="https://cinema.example/return",
            description="Cinema monthly",
        ),
        PaymentObserved(
            observation_id=observation_id_for(f"prov-{pid}", status),
            subscription_id=sub,
            observed_at=at + 1_000,
            source="webhook",
            payment_id=pid,
            provider_payment_id=f"prov-{pid}",
            status=status,
            amount=PRICE,
            paid=status == "succeeded",
        ),
    ]
    if fate == "refunded":
        rid = derived_id(sub, "refund-chaos")
        inputs += [
            RefundPayment(
                command_id=derived_id(sub, "refund-command-chaos"),
                subscription_id=sub,
                issued_at=at + 5_000,
                user_id=user,
                refund_id=rid,
                payment_id=pid,
                reason="chaos",
            ),
            RefundObserved(
                observation_id=observation_id_for(f"r-{rid}", "succeeded"),
                subscription_id=sub,
                observed_at=at + 6_000,
                source="gateway",
                refund_id=rid,
                payment_id=pid,
                provider_refund_id=f"r-{rid}",
                status="succeeded",
                amount=PRICE,
            ),
        ]
    policy = Policy(payment_deadline_ms=60_000)
    state = None
    out: list[AnyEvent] = []
    for msg in inputs:
        d = decide(state, msg, policy)
        state = d.state
        out += d.events
    return out


def backlog(rng: random.Random, users: int) -> list[list[AnyEvent]]:
    """Each user's events, in order (they share one key, so one partition)."""
    at = now_ms() - 3_600_000
    run = uuid.uuid4().hex[:8]
    fates = rng.choices(["ok", "declined", "refunded"], weights=[6, 2, 2], k=users)
    return [_facts(f"chaos-{run}-{i}", fate, at + i) for i, fate in enumerate(fates)]


def expected_messages(events: list[AnyEvent]) -> dict[str, tuple[str, bytes]]:
    """Message id -> (topic, encoded message) of everything the events stand for."""
    out: dict[str, tuple[str, bytes]] = {}
    for e in events:
        for m in derive(e):
            if isinstance(m, contract.Notification):
                out[m.notification_id] = (NOTIFICATIONS, contract.encode(m))
            else:
                out[m.entitlement_id] = (ENTITLEMENTS, contract.encode(m))
    return out


async def publish(
    bootstrap: str, per_user: list[list[AnyEvent]], rate: float, stop: threading.Event
) -> list[AnyEvent]:
    """Send the users' events at about ``rate`` events a second until ``stop`` is set (or all
    are sent); returns the events sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    sent: list[AnyEvent] = []
    started = time.monotonic()
    try:
        for events in per_user:
            if stop.is_set():
                break
            futures = [
                await producer.send(EVENTS, encode(e), key=e.subscription_id.encode())
                for e in events
            ]
            await asyncio.gather(*futures)
            sent += events
            ahead = len(sent) / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()
    return sent


# ------------------------------------------------------------------------------ processes
def _ready_count(p: ManagedProcess) -> int:
    try:
        return p.log_path.read_text(errors="replace").count("[^Worker]: Ready")
    except FileNotFoundError:
        return 0


def start(p: ManagedProcess, timeout: float = 90) -> None:
    before = _ready_count(p)
    p.start()
    p.wait_ready(lambda: _ready_count(p) > before, timeout=timeout)


Progress = Callable[[], Awaitable[int]]


async def chaos(
    p: ManagedProcess, plan: list[Fault], rng: random.Random, progress: Progress
) -> list[str]:
    """Each fault either soon after the process reported ready (it is joining its group,
    opening its store and picking up the backlog its downtime left) or while it works: once
    ``progress`` (what it has produced or committed) moved, a moment later. Returns what was
    done, for the report."""
    done = []
    for fault, when in plan:
        base = await progress()
        if when == "after ready":
            await asyncio.sleep(rng.uniform(0.1, 1.2))
        else:
            deadline = time.monotonic() + WORK_TIMEOUT_S
            while time.monotonic() < deadline and not await progress() > base:  # noqa: ASYNC110 - polled from outside
                await asyncio.sleep(0.05)
            if time.monotonic() >= deadline:
                when = "IDLE"
            await asyncio.sleep(rng.uniform(0.0, 0.4))
        t0 = time.monotonic()
        if fault == "sigkill":
            await asyncio.to_thread(p.kill)
        else:
            await asyncio.to_thread(p.stop, 20)  # SIGTERM; SIGKILL if it hangs
        await asyncio.to_thread(start, p)
        done.append(f"{p.name} {fault} {when} (back in {time.monotonic() - t0:.1f}s)")
    return done


@asynccontextmanager
async def output_end(bootstrap: str) -> AsyncIterator[Progress]:
    """The notifier's progress: records on its output topics."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    tps = [TopicPartition(t, i) for t in (NOTIFICATIONS, ENTITLEMENTS) for i in range(PARTITIONS)]

    async def measure() -> int:
        return sum((await consumer.end_offsets(tps)).values())

    try:
        yield measure
    finally:
        await consumer.stop()


@asynccontextmanager
async def committed(bootstrap: str, group: str) -> AsyncIterator[Progress]:
    """The history's progress: offsets its group committed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()

    async def measure() -> int:
        offsets = await _committed_offsets(admin, group)
        return sum(o.offset for o in offsets.values() if o.offset > 0)

    try:
        yield measure
    finally:
        await admin.close()


def run_chaos(
    p: ManagedProcess,
    plan: list[Fault],
    rng: random.Random,
    probe: Callable[[], AbstractAsyncContextManager[Progress]],
    report: list[str],
) -> None:
    async def main() -> None:
        async with probe() as progress:
            report.extend(await chaos(p, plan, rng, progress))

    asyncio.run(main())


def join_then_set(threads: list[threading.Thread], stop: threading.Event) -> None:
    for t in threads:
        t.join(timeout=240)
    stop.set()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    b = KafkaBroker(tmp_path / "kafka", free_port(), free_port(), fetch_kafka_jars())
    b.start()
    try:
        asyncio.run(ensure_topics(b.bootstrap, PARTITIONS))
        yield b
    finally:
        b.stop()


def _env(tmp_path: Path, broker: KafkaBroker) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update(
        BILLING_ENV="test",
        BILLING_KAFKA_BOOTSTRAP=broker.bootstrap,
        BILLING_KAFKA_PARTITIONS=str(PARTITIONS),
        BILLING_WORKER_ID=f"billing-{uuid.uuid4().hex[:6]}",
        BILLING_BROKER_SESSION_TIMEOUT_S="6",
        BILLING_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


# ---------------------------------------------------------------------------------- checks
async def notifier_problems(bootstrap: str, expected: dict[str, tuple[str, bytes]]) -> list[str]:
    """Every expected message on its topic with its content; the copies are counted."""
    found: dict[str, tuple[str, bytes]] = {}
    copies: Counter[str] = Counter()
    problems: list[str] = []
    for topic in (NOTIFICATIONS, ENTITLEMENTS):
        for r in await read_topic(bootstrap, topic):
            msg = contract.decode(r.value or b"")
            mid = (
                msg.notification_id
                if isinstance(msg, contract.Notification)
                else msg.entitlement_id
            )
            copies[mid] += 1
            if mid in found and found[mid] != (topic, r.value):
                problems.append(f"{mid}: two different messages carry this id")
            found[mid] = (topic, r.value or b"")
    missing = [m for m in expected if m not in found]
    if missing:
        problems.append(f"{len(missing)} of {len(expected)} messages missing, e.g. {missing[:3]}")
    wrong = [m for m, v in expected.items() if m in found and found[m] != v]
    if wrong:
        problems.append(f"{len(wrong)} messages differ from what their events stand for")
    unexpected = set(found) - set(expected)
    if unexpected:
        problems.append(f"{len(unexpected)} messages no event stands for")
    problems.append(f"(notifier: {sum(copies.values())} messages, {len(found)} distinct)")
    return problems


def history_problems(history_url: str, bootstrap: str) -> list[str]:
    try:
        ch = from_history(history_url, now_ms() - 2 * 86_400_000, now_ms() + 86_400_000)
    except httpx.HTTPError as exc:
        return [f"history not answering: {exc!r}"]
    log = asyncio.run(from_event_log(bootstrap))
    if not log:
        return ["the event log holds no money"]
    return [f"ClickHouse vs log: {d}" for d in differences(event_log=log, clickhouse=ch)]


def clickhouse_event_count(env: dict[str, str]) -> int:
    """Distinct event ids in the store (read in a process of its own: chdb allows one store
    per process, and the history worker must be stopped first)."""
    code = (
        "from billing.config import Settings\n"
        "from billing.clickhouse import connect\n"
        "print(connect(Settings()).query('SELECT uniqExact(event_id) FROM events')[0][0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ test
def test_notifier_and_history_lose_nothing_when_killed_and_stopped(
    tmp_path: Path, broker: KafkaBroker, chaos_seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(chaos_seed)
    with capsys.disabled():
        print(f"\nchaos seed={chaos_seed} (replay: BILLING_CHAOS_SEED={chaos_seed})")
    env = _env(tmp_path, broker)
    logs = tmp_path / "logs"
    notifier = ManagedProcess(
        "notifier",
        [sys.executable, "-c", NOTIFIER_MAIN, "worker", "-l", "info"],
        log_path=logs / "notifier.log",
        env=dict(
            env,
            BILLING_STATE_DIR=str(tmp_path / "state-notifier"),
            BILLING_WORKER_WEB_PORT=str(free_port()),
        ),
    )
    history_port = free_port()
    history_url = f"http://127.0.0.1:{history_port}"
    history_env = dict(
        env,
        BILLING_STATE_DIR=str(tmp_path / "state-history"),
        BILLING_HISTORY_PORT=str(history_port),
        BILLING_HISTORY_BATCH="500",
    )
    history = ManagedProcess.python(
        "history",
        ["streams.history", "worker", "-l", "info"],
        log_path=logs / "history.log",
        env=history_env,
    )
    per_user = backlog(rng, USERS)
    group = f"{env['BILLING_WORKER_ID']}-history"
    try:
        start(notifier)
        start(history)
        report: list[str] = []
        threads = [
            threading.Thread(
                target=run_chaos,
                args=(
                    p,
                    rng.sample(FAULTS, len(FAULTS)),
                    random.Random(f"{chaos_seed}-{p.name}"),
                    measure,
                    report,
                ),
                daemon=True,
            )
            for p, measure in (
                (notifier, lambda: output_end(broker.bootstrap)),
                (history, lambda: committed(broker.bootstrap, group)),
            )
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        stop = threading.Event()
        waiter = threading.Thread(target=join_then_set, args=(threads, stop), daemon=True)
        waiter.start()
        events = asyncio.run(publish(broker.bootstrap, per_user, RATE, stop))
        waiter.join()
        assert not any(t.is_alive() for t in threads), "a fault sequence hung"
        expected = expected_messages(events)
        with capsys.disabled():
            print(
                f"{len(events)} events, {len(expected)} messages expected;"
                f" faults in {time.monotonic() - t0:.0f}s:\n  " + "\n  ".join(sorted(report))
            )
        assert len(events) < sum(map(len, per_user)), "the faults outlasted the backlog"
        idle = [r for r in report if "IDLE" in r]
        assert len(idle) <= 2, f"faults that hit an idle consumer: {idle}"

        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            problems = asyncio.run(notifier_problems(broker.bootstrap, expected))
            problems += history_problems(history_url, broker.bootstrap)
            failed = [p for p in problems if not p.startswith("(")]
            if not failed or time.monotonic() > deadline:
                break
            time.sleep(3)
        with capsys.disabled():
            print("\n".join(problems))
        assert failed == [], "\n".join(problems)
        history.stop()
        assert clickhouse_event_count(history_env) == len({e.event_id for e in events})
    finally:
        for p in (notifier, history):
            p.kill()


async def _committed_offsets(admin: AIOKafkaAdminClient, group: str) -> dict[Any, Any]:
    try:
        return dict(await admin.list_consumer_group_offsets(group))
    except KafkaError:  # the coordinator of a new broker is not there yet
        return {}


async def _stable(admin: AIOKafkaAdminClient, group: str) -> bool:
    """The group has a member and its partitions are assigned."""
    try:
        (response,) = await admin.describe_consumer_groups([group])
    except KafkaError:  # the coordinator of a new broker is not there yet
        return False
    return any(g[2] == "Stable" and g[5] for g in response.groups)


def test_a_new_groups_start_is_pinned_before_its_first_batch(broker: KafkaBroker) -> None:
    """A ``latest`` consumer stopped before its first batch starts again where it first
    started, not at the later end (it would skip what came meanwhile); ``lookback_s`` reaches
    back to records already there when a group is new."""
    topic, group = NOTIFICATIONS, f"pin-{uuid.uuid4().hex[:6]}"

    async def consume(group: str, start: Start, until: int) -> list[bytes]:
        seen: list[bytes] = []

        async def handle(records: Sequence[Any]) -> None:
            seen.extend(r.value for r in records)

        task = asyncio.ensure_future(
            run_consumer(
                "pin",
                bootstrap=broker.bootstrap,
                topic=topic,
                group=group,
                start=start,
                handle=handle,
                session_timeout_s=6.0,
            )
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            async with asyncio.timeout(30):
                while not await _stable(admin, group):  # noqa: ASYNC110 - no event for it
                    await asyncio.sleep(0.1)
                while len(seen) < until:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        finally:
            await admin.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return seen

    async def send(values: list[bytes]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send(topic, v) for v in values])
        finally:
            await producer.stop()

    async def main() -> None:
        await send([b"before-0", b"before-1"])
        assert await consume(group, Start("latest"), until=0) == []  # pinned at the end
        await send([b"meanwhile-0", b"meanwhile-1"])
        assert sorted(await consume(group, Start("latest"), until=2)) == [
            b"meanwhile-0",
            b"meanwhile-1",
        ]
        back = await consume(f"{group}-back", Start("latest", lookback_s=3600), until=4)
        assert len(back) == 4

    asyncio.run(main())
