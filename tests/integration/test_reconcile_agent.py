"""The reconcile agent in a real Faust worker (the ledger and reconcile agents, run by
``tests.e2e.recon_worker``) against a broker of this module's own and PostgreSQL.

The test drives the ledger with commands and provider events (no gateway runs, so the ledger
keeps exactly what it is told), publishes a report as a run, and checks what the agent
classified, recorded and repaired: the repairs come back through the ledger as events. A
second run over the same window finds nothing new. A larger run gives the lines/s figure of
the streaming path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from billing.clock import now_ms
from billing.kafka_local import KafkaBroker, ensure_topics, fetch_kafka_jars, free_port
from billing.processes import ManagedProcess
from reconciler import feed, store
from schemas import topics
from schemas.ids import derived_id
from schemas.messages import (
    PaymentObserved,
    PaySubscription,
    RefundRequested,
    decode_event,
    encode,
)
from schemas.money import Money
from schemas.recon import (
    EndOfReport,
    ReportBatch,
    ReportEnvelope,
    ReportLine,
    encode_report_message,
)
from schemas.recon_match import MATCH_CLASSES, MatchConfig
from schemas.recon_runs import RunReport
from tests.integration.recon_support import payment_line, refund_line, uid

pytestmark = pytest.mark.integration

PARTITIONS = 4
PRICE = Money(29900, "RUB")
HOUR = 3_600_000
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ stack
@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker of this module's own: the worker uses the fixed billing topic names."""
    b = KafkaBroker(tmp_path_factory.mktemp("kafka"), free_port(), free_port(), fetch_kafka_jars())
    b.start()
    try:
        asyncio.run(ensure_topics(b.bootstrap, PARTITIONS, topics.BILLING_TOPICS))
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def worker(
    broker: KafkaBroker, module_pg_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    root = tmp_path_factory.mktemp("worker")
    env = dict(
        os.environ,
        BILLING_ENV="test",
        BILLING_STATE_DIR=str(root / "state"),
        BILLING_KAFKA_BOOTSTRAP=broker.bootstrap,
        BILLING_KAFKA_PARTITIONS=str(PARTITIONS),
        BILLING_POSTGRES_DSN=module_pg_dsn,
        BILLING_WORKER_ID=f"recon-{uuid.uuid4().hex[:6]}",
        BILLING_WORKER_WEB_PORT=str(free_port()),
        BILLING_PAYMENT_DEADLINE_S="3600",  # no sweeps of what the test leaves in flight
        BILLING_BROKER_SESSION_TIMEOUT_S="6",
        BILLING_RECON_NIGHTLY="false",
        RECON_WORKER_AGENTS="ledger",
        PYTHONUNBUFFERED="1",
    )
    proc = ManagedProcess(
        "recon-worker",
        [sys.executable, "-m", "tests.e2e.recon_worker", "worker", "-l", "info"],
        log_path=root / "worker.log",
        env=env,
        cwd=ROOT,
    )
    proc.start()
    try:
        proc.wait_ready(
            lambda: "[^Worker]: Ready" in proc.log_path.read_text(errors="replace"), timeout=90
        )
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
async def producer(broker: KafkaBroker) -> AsyncIterator[AIOKafkaProducer]:
    p = feed.new_producer(broker.bootstrap)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@dataclass
class Events:
    """billing.events as the ledger emits them, by subscription (a background consumer)."""

    by_sub: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    def types(self, sub: str) -> list[str]:
        return [type(e).__name__ for e in self.by_sub[sub]]

    def distinct(self, sub: str) -> int:
        """Distinct events (a replayed command re-emits the same ids)."""
        return len({e.event_id for e in self.by_sub[sub]})

    async def wait(self, check: Any, wait_s: float = 60, what: str = "events") -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
async def events(broker: KafkaBroker) -> AsyncIterator[Events]:
    out = Events()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    tps = [TopicPartition(topics.EVENTS, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)

    async def pump() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    assert r.value is not None
                    event = decode_event(r.value)
                    out.by_sub[event.subscription_id].append(event)

    task = asyncio.create_task(pump())
    try:
        yield out
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()


@pytest.fixture
async def conn(module_pg_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(module_pg_dsn, autocommit=True) as c:
        yield c


# ---------------------------------------------------------------------------- ledger
@dataclass
class Ledger:
    """Tells the ledger about payments through the topics it consumes."""

    producer: AIOKafkaProducer
    at: int
    sent: list[Any] = field(default_factory=list)
    later: list[tuple[str, str, str, str]] = field(default_factory=list)

    async def pay(self, sub: str, user: str, payment_id: str) -> None:
        cmd = PaySubscription(
            command_id=str(uuid.uuid4()),
            subscription_id=sub,
            issued_at=self.at,
            user_id=user,
            payment_id=payment_id,
            plan_id="monthly",
            amount=PRICE,
            period_months=1,
            return_url="https://cinema.example/return",
            description="Cinema monthly",
        )
        self.sent.append(await self.producer.send(topics.COMMANDS, encode(cmd), key=sub.encode()))

    def observe(self, sub: str, payment_id: str, provider_id: str, status: str) -> None:
        """Queued until ``apply``: the ledger drops an outcome of a payment it has not
        requested yet, and commands and provider events are two topics (no order between)."""
        self.later.append((sub, payment_id, provider_id, status))

    async def apply(self, events: Events, wait_s: float = 60) -> None:
        """Send the payments, wait until requested, then their outcomes, wait until applied."""
        await self.flush()
        subs = {sub for sub, *_ in self.later}
        await events.wait(lambda: all(events.by_sub[s] for s in subs), wait_s, "payments requested")
        for sub, payment_id, provider_id, status in self.later:
            await self._observe(sub, payment_id, provider_id, status)
        await self.flush()
        await events.wait(
            lambda: all(len(events.by_sub[s]) >= 2 for s in subs), wait_s, "outcomes applied"
        )
        self.later.clear()

    async def _observe(self, sub: str, payment_id: str, provider_id: str, status: str) -> None:
        obs = PaymentObserved(
            observation_id=str(uuid.uuid4()),
            subscription_id=sub,
            observed_at=self.at + 1000,
            source="webhook",
            payment_id=payment_id,
            provider_payment_id=provider_id,
            status=status,  # type: ignore[arg-type]
            amount=PRICE,
            paid=status == "succeeded",
        )
        self.sent.append(
            await self.producer.send(topics.PROVIDER_EVENTS, encode(obs), key=sub.encode())
        )

    async def flush(self) -> None:
        for fut in self.sent:
            await fut
        self.sent.clear()


async def start_run(
    conn: psycopg.AsyncConnection[Any],
    producer: AIOKafkaProducer,
    lines: list[ReportLine],
    cfg: MatchConfig,
) -> feed.FeedResult:
    run = await store.create_run(
        conn,
        run_id=str(uuid.uuid4()),
        window_start=cfg.window_start,
        window_end=cfg.window_end,
        source="registry",
        source_ref="test",
        taken_at=cfg.now,
        pending_sla_ms=cfg.pending_sla_ms,
    )
    assert run is not None
    return await feed.publish_run(conn, producer, run, lines)


async def wait_done(
    conn: psycopg.AsyncConnection[Any], run_id: str, wait_s: float = 90
) -> RunReport:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        report = await store.run_report(conn, run_id)
        if report.done:
            return report
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} not done in {wait_s}s: {report}")


# ------------------------------------------------------------------------------ tests
async def test_streaming_run_classifies_repairs_and_a_rerun_finds_nothing_new(
    worker: ManagedProcess,
    producer: AIOKafkaProducer,
    events: Events,
    conn: psycopg.AsyncConnection[Any],
) -> None:
    t0 = now_ms()
    ledger = Ledger(producer, t0)
    lines: list[ReportLine] = []
    expected: dict[str, str] = {}
    subs: dict[str, str] = {}

    async def payment(status_ours: str | None, name: str) -> tuple[str, str, str]:
        sub, pid, prov = uid("sub-"), str(uuid.uuid4()), uid(f"prov-{name}-")
        await ledger.pay(sub, uid("user-"), pid)
        if status_ours is not None:
            ledger.observe(sub, pid, prov, status_ours)
        subs[name] = sub
        return sub, pid, prov

    # matched
    for i in range(3):
        sub, pid, prov = await payment("succeeded", f"ok{i}")
        lines.append(payment_line(sub, pid, prov, "succeeded", t0 + 10))
        expected[prov] = "matched"
    # a missed webhook: ours pending, theirs succeeded -> apply
    sub, pid, missed = await payment("pending", "missed")
    lines.append(payment_line(sub, pid, missed, "succeeded", t0 + 10))
    expected[missed] = "missing_internal"
    # ours canceled, theirs succeeded -> apply (the provider holds the money)
    sub, pid_canceled, canceled = await payment("canceled", "canceled")
    lines.append(payment_line(sub, pid_canceled, canceled, "succeeded", t0 + 10))
    expected[canceled] = "status_mismatch"
    # a double charge -> refund the second
    sub, pid_dup, kept = await payment("succeeded", "dup")
    dup = uid("prov-second-")
    lines.append(payment_line(sub, pid_dup, kept, "succeeded", t0 + 10))
    lines.append(payment_line(sub, pid_dup, dup, "succeeded", t0 + 20))
    expected[kept], expected[dup] = "matched", "duplicate_charge"
    # an amount mismatch -> escalate
    sub, pid, odd_kept = await payment("succeeded", "odd")
    odd = uid("prov-odd-")
    lines.append(payment_line(sub, pid, odd_kept, "succeeded", t0 + 10))
    lines.append(payment_line(sub, pid, odd, "succeeded", t0 + 30, Money(100, "RUB")))
    expected[odd_kept], expected[odd] = "matched", "amount_mismatch"
    # ours succeeded, the provider never reported it -> escalate at the end of the report
    _, _, gone = await payment("succeeded", "gone")
    expected[gone] = "missing_at_provider"
    # a provider payment for a subscription we never billed -> escalate
    stranger = uid("prov-stranger-")
    lines.append(payment_line(uid("sub-"), str(uuid.uuid4()), stranger, "succeeded", t0 + 10))
    expected[stranger] = "missing_internal"
    # a refund made outside our system -> refund_mismatch, escalate
    sub, pid, refunded = await payment("succeeded", "refunded")
    outside = uid("prov-refund-")
    lines.append(payment_line(sub, pid, refunded, "succeeded", t0 + 10))
    lines.append(refund_line(sub, pid, refunded, None, outside, "succeeded", t0 + 40))
    expected[refunded], expected[outside] = "matched", "refund_mismatch"
    # in flight within the SLA
    sub, pid, flying = await payment("pending", "flying")
    lines.append(payment_line(sub, pid, flying, "pending", t0 + 10))
    expected[flying] = "in_flight"
    await ledger.apply(events)

    cfg = MatchConfig(
        window_start=t0 - HOUR, window_end=t0 + HOUR, now=now_ms(), pending_sla_ms=2 * HOUR
    )
    # Noise the agent must survive: garbage, and a line of a run nobody recorded.
    await producer.send_and_wait(topics.PROVIDER_REPORT, b"not json", key=b"x")
    stray = ReportEnvelope(run_id=str(uuid.uuid4()), line=lines[0])
    await producer.send_and_wait(topics.PROVIDER_REPORT, encode_report_message(stray), key=b"stray")

    first = await start_run(conn, producer, lines, cfg)
    report = await wait_done(conn, first.run.run_id)
    assert report.spec.status == "finished", report
    items = await store.run_items(conn, first.run.run_id)
    found = {i.provider_id: i.kind for i in items if i.provider_id in expected}
    # Matched items are counted, not recorded: every other one is, as expected.
    assert found == {p: k for p, k in expected.items() if k != "matched"}
    # Nothing else: the duplicate's refund, requested by the ledger while the run went on,
    # is after the report was taken (not "unreported"), and no other state is in the window.
    assert len(items) == len(found), [i for i in items if i.provider_id not in expected]
    assert report.counts == expected_counts(expected)
    tally = await store.run_tally(conn, first.run.run_id)
    n_matched = list(expected.values()).count("matched")  # every one a succeeded payment
    assert tally.counts == {"matched": n_matched}
    assert tally.totals["payments_ours"] == {"RUB": n_matched * PRICE.amount_minor}
    assert tally.totals["payments_theirs"] == tally.totals["payments_ours"]
    assert report.unresolved == 4  # amount, gone, stranger, outside refund
    assert report.new_discrepancies == report.discrepancies == 7

    # The repairs came back through the ledger.
    await events.wait(
        lambda: "PaymentSucceeded" in events.types(subs["missed"]), what="missed webhook applied"
    )
    await events.wait(
        lambda: events.types(subs["canceled"]).count("PaymentSucceeded") == 1,
        what="status mismatch applied",
    )
    await events.wait(
        lambda: "RefundRequested" in events.types(subs["dup"]), what="duplicate refunded"
    )
    refund = next(e for e in events.by_sub[subs["dup"]] if isinstance(e, RefundRequested))
    key = next(i.refund_key for i in items if i.kind == "duplicate_charge")
    assert refund.request.provider_payment_id == dup and refund.request.duplicate
    assert refund.request.actor == "reconciler" and refund.request.amount == PRICE
    assert refund.request.refund_id == key
    assert refund.request.command_id == derived_id(str(key), "reconciliation-refund")
    applied = next(
        e for e in events.by_sub[subs["missed"]] if type(e).__name__ == "PaymentSucceeded"
    )
    assert applied.provider_payment_id == missed

    # Run it again: the repaired ones now match, nothing new, nothing twice.
    before = {s: events.distinct(s) for s in subs.values()}
    second = await start_run(conn, producer, lines, dataclasses.replace(cfg, now=now_ms()))
    again = await wait_done(conn, second.run.run_id)
    assert again.spec.status == "finished"
    assert again.new_discrepancies == 0
    items2 = {i.provider_id: i.kind for i in await store.run_items(conn, second.run.run_id)}
    assert missed not in items2 and canceled not in items2  # repaired: now matched
    assert again.counts["matched"] == report.counts["matched"] + 2
    assert again.counts["missing_internal"] == report.counts["missing_internal"] - 1
    assert again.counts["status_mismatch"] == report.counts["status_mismatch"] - 1 == 0
    assert items2[dup] == "duplicate_charge"  # refunded at the provider by the gateway
    await asyncio.sleep(2)  # let any (wrong) second repair reach the ledger
    assert {s: events.distinct(s) for s in subs.values()} == before
    rows = await conn.execute(
        "SELECT count(*) FROM recon_items WHERE provider_id = ANY(%s)", (list(expected),)
    )
    total = await rows.fetchone()
    discrepant = sum(1 for k in expected.values() if k != "matched")
    assert total is not None and total[0] == discrepant  # matched ones never become rows


def expected_counts(expected: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(MATCH_CLASSES, 0)
    for kind in expected.values():
        counts[kind] += 1
    return counts


async def test_streaming_throughput(
    worker: ManagedProcess,
    producer: AIOKafkaProducer,
    events: Events,
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """Lines/s of the streaming path: publish to run finished (one worker, 4 partitions)."""
    n = int(os.environ.get("RECON_BENCH_LINES", "3000"))
    t0 = now_ms() + 30 * 24 * HOUR  # a window of its own: the other test's states are outside
    ledger = Ledger(producer, t0)
    lines: list[ReportLine] = []
    subs = []
    for _ in range(n):
        sub, pid, prov = uid("sub-"), str(uuid.uuid4()), uid("prov-")
        await ledger.pay(sub, uid("user-"), pid)
        ledger.observe(sub, pid, prov, "succeeded")
        lines.append(payment_line(sub, pid, prov, "succeeded", t0 + 10))
        subs.append(sub)
    await ledger.apply(events, wait_s=180)
    cfg = MatchConfig(
        window_start=t0 - HOUR, window_end=t0 + HOUR, now=t0 + HOUR, pending_sla_ms=2 * HOUR
    )
    started = time.monotonic()
    result = await start_run(conn, producer, lines, cfg)
    fed = time.monotonic() - started
    report = await wait_done(conn, result.run.run_id, wait_s=300)
    took = time.monotonic() - started
    assert report.spec.status == "finished"
    assert report.counts["matched"] >= n and report.discrepancies == 0
    print(
        f"\nreconcile streaming: {n} lines fed in {fed:.2f}s, run finished after {took:.2f}s:"
        f" {n / took:.0f} lines/s end to end ({len(events.by_sub)} ledger states)"
    )


def test_markers_follow_lines_in_every_partition() -> None:
    """The contract the agent relies on: a marker names its partition and count."""
    marker = EndOfReport(run_id="r", partition=3, lines_sent=7)
    assert msgspec.json.decode(encode_report_message(marker))["type"] == "end"


async def test_a_partition_not_seen_whole_makes_the_run_incomplete(
    worker: ManagedProcess,
    producer: AIOKafkaProducer,
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """As after a takeover mid-run: the marker says more lines preceded it than this worker
    saw. The partition is done but not complete, and so is the run (run it again)."""
    t0 = now_ms()
    cfg = MatchConfig(window_start=t0 - HOUR, window_end=t0, now=t0, pending_sla_ms=2 * HOUR)
    run = await store.create_run(
        conn,
        run_id=str(uuid.uuid4()),
        window_start=cfg.window_start,
        window_end=cfg.window_end,
        source="registry",
        taken_at=cfg.now,
    )
    assert run is not None
    line = payment_line(uid("sub-"), str(uuid.uuid4()), uid("prov-"), "succeeded", t0 - 10)
    planned, _ = feed.plan([line], PARTITIONS)
    await store.start_feeding(conn, run.run_id, lines=2, partitions=PARTITIONS)
    sent = await feed.publish_report(producer, run.run_id, planned, 0)  # lines, no markers
    assert sent == {}
    target = planned[0][0]
    for p in range(PARTITIONS):
        marker = EndOfReport(run_id=run.run_id, partition=p, lines_sent=2 if p == target else 0)
        await producer.send_and_wait(
            topics.PROVIDER_REPORT, encode_report_message(marker), partition=p
        )
    report = await wait_done(conn, run.run_id)
    assert report.spec.status == "incomplete" and report.incomplete_partitions == 1
    assert report.counts["missing_internal"] == 1  # the line it saw is recorded all the same


# ------------------------------------------------------------------ replays, in-process
async def test_a_replay_here_or_in_the_next_owner_records_nothing_twice(
    conn: psycopg.AsyncConnection[Any], module_pg_dsn: str
) -> None:
    """The agent's work without Faust (``Reconciler.handle``) over a day with every kind of
    item, against PostgreSQL: a first owner processes part of the partition and "crashes"
    before its offsets are committed; a second owner gets everything again from the start
    (lines one to a message, as an older feeder sends them, then batches) and the marker.
    The run's counts are the batch matcher's, each item once; a marker replayed afterwards
    changes nothing."""
    from psycopg_pool import AsyncConnectionPool

    from reconciler.matcher import reconcile
    from schemas.state import encode_state
    from streams.reconcile.agent import Reconciler
    from tests.integration.recon_support import make_day

    day = make_day(now_ms() - 48 * HOUR)
    table = {s.subscription_id.encode(): encode_state(s) for s in day.states}
    run = await store.create_run(
        conn,
        run_id=str(uuid.uuid4()),
        window_start=day.cfg.window_start,
        window_end=day.cfg.window_end,
        source="registry",
        taken_at=day.cfg.now,
        pending_sla_ms=day.cfg.pending_sla_ms,
    )
    assert run is not None
    planned, _ = feed.plan(day.lines, 1)
    lines = [line for _, line in planned]
    await store.start_feeding(conn, run.run_id, lines=len(lines), partitions=1)
    singles = [
        encode_report_message(ReportEnvelope(run_id=run.run_id, line=line)) for line in lines
    ]
    batches = [
        encode_report_message(ReportBatch(run_id=run.run_id, partition=0, lines=lines[i : i + 4]))
        for i in range(0, len(lines), 4)
    ]
    marker = encode_report_message(
        EndOfReport(run_id=run.run_id, partition=0, lines_sent=len(lines))
    )
    sent: list[tuple[str, bytes, bytes]] = []

    async def send(topic: str, key: bytes, value: bytes) -> None:
        sent.append((topic, key, value))

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        module_pg_dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True)

    async def get_pool() -> AsyncConnectionPool[Any]:
        return pool

    try:
        # The first owner: the first half, one line to a message (offsets 0..k).
        half = len(singles) // 2
        first = Reconciler(table, send, get_pool, 1)
        await first.handle([(0, o, v) for o, v in enumerate(singles[:half])])
        await first.handle([(0, o, v) for o, v in enumerate(singles[:half])])  # redelivered
        repairs_first = len(sent)
        # The next owner: everything again from offset 0, then the rest as batches.
        second = Reconciler(table, send, get_pool, 1)
        await second.handle([(0, o, v) for o, v in enumerate(singles)])
        base = len(singles)
        await second.handle([(0, base + o, v) for o, v in enumerate(batches)])  # seen: nothing
        await second.handle([(0, base + len(batches), marker)])
        report = await store.run_report(conn, run.run_id)
        assert report.spec.status == "finished" and report.incomplete_partitions == 0
        expected = reconcile(day.states, day.lines, day.cfg).summary
        assert report.counts == expected.counts
        assert report.totals == store.totals_json(expected)
        assert len(sent) > repairs_first  # repairs are sent again on a replay (idempotent)
        # The marker again (a replay after the run finished): the same run.
        third = Reconciler(table, send, get_pool, 1)
        await third.handle([(0, base + len(batches), marker)])
        assert await store.run_report(conn, run.run_id) == report
    finally:
        await pool.close()
