"""The ledger's state table on disk (RocksDB): a worker SIGKILLed mid-run and restarted on
its own disk keeps every state (none lost, none duplicated: each subscription holds its one
payment, once) and, restarted, reads the changelog from the offsets its databases hold, not
from the start. The worker is the real app with only the ledger agent
(``bench.ledger_worker``) on the session's broker."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.workload import pay_commands, records
from billing.kafka_local import KafkaBroker, free_port
from schemas import topics as topic_names
from schemas.state import decode_state
from streams.ledger.agent import TABLE_NAME
from streams.ledger.due import unpack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

N1, N2 = 3_000, 1_000
READY = "Worker ready"


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "bench.ledger_worker"], env=env, stdout=out, stderr=out
    )


def _log_count(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text)


async def _wait_log(log: Path, text: str, count: int, within_s: float = 90.0) -> None:
    deadline = time.monotonic() + within_s
    while _log_count(log, text) < count:
        assert time.monotonic() < deadline, f"no {text!r} #{count} in {log}"
        await asyncio.sleep(0.3)


async def _produce(bootstrap: str, recs: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futs = [await producer.send(topic_names.COMMANDS, v, key=k) for k, v in recs]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def _changelog(bootstrap: str, topic: str, keys: set[bytes]) -> dict[bytes, list[bytes]]:
    """Every value of each of our keys on the changelog, in order."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: dict[bytes, list[bytes]] = {}
    try:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=1000)
            for recs in batch.values():
                for r in recs:
                    if r.key is not None and r.key in keys and r.value is not None:
                        out.setdefault(r.key, []).append(r.value)
    finally:
        await consumer.stop()
    return out


async def _wait_states(bootstrap: str, topic: str, keys: set[bytes], n: int) -> dict[bytes, bytes]:
    deadline = time.monotonic() + 120
    while True:
        log = await _changelog(bootstrap, topic, keys)
        if len(log) >= n or time.monotonic() > deadline:
            return {k: v[-1] for k, v in log.items()}
        await asyncio.sleep(1.0)


def _start_offsets(text: str) -> list[int]:
    """The changelog offsets Faust's recovery started reading at (its last log table)."""
    table = text.rsplit("Reading Starts At - Active", 1)[-1].split('+"', 1)[0]
    return [int(m) for m in re.findall(r"[|│]\s*\d+\s*[|│]\s*(-?\d+)\s*[|│]", table)]


async def test_sigkill_and_restart_on_own_disk_keeps_every_state(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    tag = uuid.uuid4().hex[:8]
    worker_id = f"rocks-{tag}"
    changelog = f"{worker_id}-{TABLE_NAME}-changelog"
    env = dict(
        os.environ,
        BILLING_ENV="test",
        BILLING_KAFKA_BOOTSTRAP=bootstrap,
        BILLING_KAFKA_PARTITIONS="4",
        BILLING_WORKER_ID=worker_id,
        BILLING_STATE_DIR=str(tmp_path / "state"),
        BILLING_WORKER_WEB_PORT=str(free_port()),
        BILLING_TABLE_STORE="rocksdb://",
        BILLING_PAYMENT_DEADLINE_S="3600",  # no re-drive during the test
        BILLING_BROKER_SESSION_TIMEOUT_S="6",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "worker.log"
    cmds = pay_commands(N1 + N2, tag)
    recs = records(cmds)
    prefix = {c.subscription_id.encode() for c in cmds}  # our keys on the shared topics
    proc = _spawn(env, log)
    try:
        await _wait_log(log, READY, 1)
        await _produce(bootstrap, recs[:N1])
        # Killed mid-run: part of the first batch is applied.
        deadline = time.monotonic() + 60
        while len(await _changelog(bootstrap, changelog, prefix)) < N1 // 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await _produce(bootstrap, recs[N1:])
        proc = _spawn(env, log)
        await _wait_log(log, READY, 2)
        states = await _wait_states(bootstrap, changelog, prefix, N1 + N2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = log.read_text(errors="replace")
    # None lost, none duplicated: every subscription holds its one payment, once.
    assert len(states) == N1 + N2
    for cmd in cmds:
        raw = states[cmd.subscription_id.encode()]
        state = decode_state(raw)
        assert list(state.payments) == [cmd.payment_id]
        assert unpack(raw) is not None  # indexed without decoding on the next recovery
    # The restart read the changelog from what its disk held, not from the start.
    second = text[text.index(READY) :]
    starts = _start_offsets(second)
    assert len(starts) == 4 and min(starts) > 0, f"recovery started at {starts}"
    assert "states from disk" in second


async def test_a_graceful_restart_loads_the_index_snapshot_and_a_crash_reads_the_disk(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A stop leaves each partition's due index beside its database; the next start loads
    it (no read of every value) and deletes it, so a crash after that start rebuilds from
    the values, never from a snapshot that could be stale."""
    bootstrap = kafka_broker.bootstrap
    tag = uuid.uuid4().hex[:8]
    worker_id = f"snap-{tag}"
    changelog = f"{worker_id}-{TABLE_NAME}-changelog"
    state_dir = tmp_path / "state"
    env = dict(
        os.environ,
        BILLING_ENV="test",
        BILLING_KAFKA_BOOTSTRAP=bootstrap,
        BILLING_KAFKA_PARTITIONS="4",
        BILLING_WORKER_ID=worker_id,
        BILLING_STATE_DIR=str(state_dir),
        BILLING_WORKER_WEB_PORT=str(free_port()),
        BILLING_TABLE_STORE="rocksdb://",
        BILLING_PAYMENT_DEADLINE_S="3600",
        BILLING_BROKER_SESSION_TIMEOUT_S="6",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "worker.log"
    cmds = pay_commands(N2 + N2, tag)
    recs = records(cmds)
    keys = {c.subscription_id.encode() for c in cmds}

    def snapshots() -> list[Path]:
        return sorted(state_dir.rglob("*.db.index"))

    proc = _spawn(env, log)
    try:
        await _wait_log(log, READY, 1)
        await _produce(bootstrap, recs[:N2])
        await _wait_states(bootstrap, changelog, keys, N2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        assert len(snapshots()) == 4, "a graceful stop leaves one snapshot per partition"
        taken = sum(
            int(n) for n in re.findall(r"partition \d+ snapshot of (\d+) states", log.read_text())
        )
        assert taken == N2

        proc = _spawn(env, log)
        await _wait_log(log, READY, 2)
        second = log.read_text(errors="replace").split(READY)[-2]
        loaded = re.findall(r"(\d+) states from the stop's snapshot", second)
        assert sum(map(int, loaded)) == N2 and len(loaded) == 4, second[-3000:]
        assert "states from disk" not in second
        assert snapshots() == [], "a snapshot is read once"

        await _produce(bootstrap, recs[N2:])
        await _wait_states(bootstrap, changelog, keys, N2 + N2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _spawn(env, log)
        await _wait_log(log, READY, 3)
        third = log.read_text(errors="replace").split(READY)[-2]
        from_disk = re.findall(r"(\d+) states from disk", third)
        assert sum(map(int, from_disk)) == N2 + N2, third[-3000:]
        assert "from the stop's snapshot" not in third
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
