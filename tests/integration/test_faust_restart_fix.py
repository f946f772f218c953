"""Regression test for the faust 0.15.3 at-least-once restart-loss race (streams/faust_fix.py).

A Faust worker forwards numbered records from an input topic to an output topic. Before each
start a backlog is produced while the worker is down; while it runs, records keep arriving
(live traffic). The worker is stopped mid-stream with SIGTERM and SIGKILL alternately, and the
last start drains everything: every input number must then be in the output at least once.

Without the fix the race loses the records that were queued when faust's late seek landed:
the next live record makes faust mark the skipped offsets as a "gap" and commit past them.
A delay injected into the committed-offset lookup widens that window so the loss shows on
every run (measured: 10 of 10 runs, about half of the restarts each), not now and then; the
same scenario with the fix must lose nothing. Timing matters: the stop must come after
"Worker ready" plus a commit or two, or the next start re-reads what was skipped (a 1 s delay
with an early stop lost nothing).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.structs import OffsetAndMetadata, RecordMetadata

from billing.kafka_local import KafkaBroker, ensure_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
RESTARTS = 3  # starts after the first, each with a waiting backlog; the last one drains
BATCH = 1500  # backlog produced before each start
LIVE_RATE = 100  # records/s produced all along; a record after the late seek commits the skip
COMMITTED_DELAY_S = 0.3  # per source partition: a 1.2 s window without the fix
AGENT_SLEEP_S = 0.002  # about 400 records/s: the queue still holds backlog when the seek lands
SETTLE_S = 1.0  # > broker_commit_interval: a skip gets committed before the stop
READY_TIMEOUT_S = 45.0
DRAIN_TIMEOUT_S = 60.0
STALL_S = 5.0


@dataclass
class Outcome:
    produced: int
    lost: list[int]
    lost_per_start: list[int]  # start 0 has no committed offsets yet, so it cannot lose
    duplicates: int
    seconds: float


class Worker:
    """One worker process at a time, its output appended to one log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def ready_count(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count("Worker ready")
        except FileNotFoundError:
            return 0

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.faust_fix_app"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        """Spawn a worker and wait for its "Worker ready" (partitions assigned and resumed)."""
        before = self.ready_count()
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.ready_count() <= before:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                tail = self.log_path.read_text(errors="replace")[-4000:]
                pytest.fail(f"faust worker did not get ready; log tail:\n{tail}")
            await asyncio.sleep(0.1)

    def stop(self, sig: signal.Signals) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Feeder:
    """Produces consecutive numbers (key = value = the number) and remembers where they went."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self.sent: dict[int, asyncio.Future[RecordMetadata]] = {}
        self._live: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.producer.start()

    async def burst(self, count: int) -> None:
        for _ in range(count):
            await self._send_next()
        await self.producer.flush()

    async def _send_next(self) -> None:
        n = len(self.sent)
        self.sent[n] = await self.producer.send(self.topic, key=str(n).encode(), value=b"%d" % n)

    async def _live_loop(self) -> None:
        while True:
            await self._send_next()
            await asyncio.sleep(1 / LIVE_RATE)

    def live(self, on: bool) -> None:
        if on and self._live is None:
            self._live = asyncio.create_task(self._live_loop())
        elif not on and self._live is not None:
            self._live.cancel()
            self._live = None

    async def stop(self) -> dict[int, tuple[int, int]]:
        """Stop producing; return number -> (partition, offset) for everything sent."""
        self.live(False)
        await self.producer.flush()
        await self.producer.stop()
        return {n: (f.result().partition, f.result().offset) for n, f in self.sent.items()}


async def _group_offsets(
    admin: AIOKafkaAdminClient, group: str, tps: list[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata]:
    """Committed offsets; on a fresh broker the offsets topic appears with the first group."""
    deadline = time.monotonic() + 30
    while True:
        try:
            offsets: dict[TopicPartition, OffsetAndMetadata]
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            return offsets
        except GroupCoordinatorNotAvailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    committed = await _group_offsets(admin, group, tps)
    return {tp.partition: max(committed[tp].offset, 0) if tp in committed else 0 for tp in tps}


async def _drained(admin: AIOKafkaAdminClient, probe: AIOKafkaConsumer, group: str) -> bool:
    """True once the worker's committed offsets reach the end of every input partition."""
    tps = sorted(probe.assignment())
    ends = await probe.end_offsets(tps)
    committed = await _group_offsets(admin, group, tps)
    return all(tp in committed and committed[tp].offset >= ends[tp] for tp in tps)


async def _output_total(probe: AIOKafkaConsumer, topic: str) -> int:
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    return sum((await probe.end_offsets(tps)).values())


async def _read_all(bootstrap: str, topic: str) -> list[int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        numbers: list[int] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                numbers.extend(int(r.value) for r in records if r.value is not None)
        return numbers
    finally:
        await consumer.stop()


async def run_scenario(broker: KafkaBroker, workdir: Path, *, apply_fix: bool) -> Outcome:
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]
    app_id = f"fixtest-{run}"
    topic_in, topic_out = f"fixtest.in.{run}", f"fixtest.out.{run}"
    bootstrap = broker.bootstrap
    await ensure_topics(bootstrap, PARTITIONS, [topic_in, topic_out])
    env = dict(
        os.environ,
        FIXAPP_ID=app_id,
        FIXAPP_BOOTSTRAP=bootstrap,
        FIXAPP_IN=topic_in,
        FIXAPP_OUT=topic_out,
        FIXAPP_DATADIR=str(workdir / "faust"),
        FIXAPP_APPLY_FIX="1" if apply_fix else "0",
        FIXAPP_COMMITTED_DELAY_S=str(COMMITTED_DELAY_S),
        FIXAPP_AGENT_SLEEP_S=str(AGENT_SLEEP_S),
        PYTHONUNBUFFERED="1",
    )
    worker = Worker(env, workdir / "worker.log")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await probe.start()
    probe.assign([TopicPartition(topic_in, p) for p in range(PARTITIONS)])
    feeder = Feeder(bootstrap, topic_in)
    await feeder.start()
    starts_at: list[dict[int, int]] = []  # committed input offsets at each worker start
    try:
        for i in range(RESTARTS + 1):
            await feeder.burst(BATCH)  # the backlog waiting for this start
            starts_at.append(await _committed(admin, app_id, topic_in))
            out_before = await _output_total(probe, topic_out)
            feeder.live(True)
            await worker.start()
            # Let it work through part of the backlog and commit, then stop it mid-stream.
            deadline = time.monotonic() + 15
            while (await _output_total(probe, topic_out)) - out_before < BATCH // 3:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(SETTLE_S)
            if i == RESTARTS:
                break
            worker.stop(signal.SIGKILL if i % 2 else signal.SIGTERM)
            feeder.live(False)
        # The last start drains everything. Done when the commits reach the end; faust as
        # shipped can also stall its commits behind a lost offset, so output that stopped
        # growing ends the drain too.
        where = await feeder.stop()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        last_total, last_change = -1, time.monotonic()
        while not await _drained(admin, probe, app_id) and time.monotonic() < deadline:
            total = await _output_total(probe, topic_out)
            if total != last_total:
                last_total, last_change = total, time.monotonic()
            elif time.monotonic() - last_change > STALL_S:
                break
            await asyncio.sleep(0.2)
        worker.stop(signal.SIGTERM)
    finally:
        feeder.live(False)
        worker.stop(signal.SIGKILL)
        await probe.stop()
        await admin.close()
    output = await _read_all(bootstrap, topic_out)
    distinct = set(output)
    lost = sorted(set(where) - distinct)
    # A lost record belongs to the last start that began at or before its offset.
    lost_per_start = [0] * len(starts_at)
    for n in lost:
        partition, offset = where[n]
        lost_per_start[max(i for i, c in enumerate(starts_at) if c[partition] <= offset)] += 1
    return Outcome(
        produced=len(where),
        lost=lost,
        lost_per_start=lost_per_start,
        duplicates=len(output) - len(distinct),
        seconds=time.monotonic() - started,
    )


@pytest.mark.parametrize("apply_fix", [False, True], ids=["without-fix", "with-fix"])
async def test_no_input_lost_across_restarts(
    kafka_broker: KafkaBroker, tmp_path: Path, apply_fix: bool
) -> None:
    outcome = await run_scenario(kafka_broker, tmp_path, apply_fix=apply_fix)
    print(
        f"\n{'with' if apply_fix else 'without'} fix: produced {outcome.produced}, "
        f"lost {len(outcome.lost)} (per start {outcome.lost_per_start}), "
        f"duplicates {outcome.duplicates}, "
        f"{RESTARTS} restarts after the first start, {outcome.seconds:.1f} s"
    )
    if apply_fix:
        assert outcome.lost == [], f"{len(outcome.lost)} lost, first {outcome.lost[:20]}"
    else:
        # The scenario must still reproduce the race, or the with-fix run proves nothing.
        assert outcome.lost, "faust as shipped lost nothing: the race is no longer reproduced"
