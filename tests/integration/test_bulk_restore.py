"""Cold recovery in bulk (``streams.ledger.restore``): a worker on an empty disk reads the
ledger table's changelog in large batches straight into RocksDB, ends with exactly what the
changelog holds (last value per key, deletions applied) and the partition's offset at its
end, and its due index is built from what it restored (no pass over the database). Then a
restart on its own disk reads nothing in bulk; a memory-store worker restores the same
changelog in bulk too. The real app with only the ledger agent (``bench.ledger_worker``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import rocksdict
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.scale import build_values
from billing.kafka_local import KafkaBroker, free_port
from schemas.topics import partition_for
from streams.ledger.agent import TABLE_NAME

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PARTITIONS = 4
N = 12_000  # > restore.MIN_RECORDS per partition
READY = "Worker ready"
OFFSET_KEY = b"__faust\0offset__"


async def _seed(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, max_request_size=8 << 20)
    await producer.start()
    try:
        futs = [
            await producer.send(topic, v, key=k, partition=partition_for(k, PARTITIONS))
            for k, v in records
        ]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def _run_until_ready(env: dict[str, str], log: Path, count: int) -> None:
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ledger_worker"], env=env, stdout=out, stderr=out
    )
    try:
        deadline = time.monotonic() + 150
        while log.read_text(errors="replace").count(READY) < count:
            assert proc.poll() is None, f"worker exited; see {log}"
            assert time.monotonic() < deadline, f"not ready; see {log}"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _env(bootstrap: str, worker_id: str, state: Path, store: str) -> dict[str, str]:
    return dict(
        os.environ,
        BILLING_ENV="test",
        BILLING_KAFKA_BOOTSTRAP=bootstrap,
        BILLING_KAFKA_PARTITIONS=str(PARTITIONS),
        BILLING_WORKER_ID=worker_id,
        BILLING_STATE_DIR=str(state),
        BILLING_WORKER_WEB_PORT=str(free_port()),
        BILLING_TABLE_STORE=store,
        BILLING_SWEEP_INTERVAL_S="3600",
        BILLING_BROKER_SESSION_TIMEOUT_S="6",
        PYTHONUNBUFFERED="1",
    )


async def test_cold_recovery_in_bulk_restores_the_changelog(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    worker_id = f"bulk-{uuid.uuid4().hex[:8]}"
    topic = f"{worker_id}-{TABLE_NAME}-changelog"
    values, _size = build_values(N)
    # Older values first, then the last ones; every 50th key deleted afterwards.
    older = [(k, v.replace(b"scale-user", b"older-user")) for k, v in values[: N // 4]]
    deleted = [k for k, _v in values[::50]]
    records: list[tuple[bytes, bytes | None]] = [*older, *values, *((k, None) for k in deleted)]
    await _seed(bootstrap, topic, records)
    expected = {k: v for k, v in values if k not in set(deleted)}

    state = tmp_path / "rocks"
    log = tmp_path / "rocks.log"
    env = _env(bootstrap, worker_id, state, "rocksdb://")
    await asyncio.to_thread(_run_until_ready, env, log, 1)
    text = log.read_text(errors="replace")
    assert f"bulk restore of {topic}: {len(records)} records" in text
    assert "states from disk" not in text  # the index came from the restore itself

    got: dict[bytes, bytes] = {}
    offsets = []
    for db_path in sorted((state / "faust").rglob(f"{TABLE_NAME}-*.db")):
        db = rocksdict.Rdict(str(db_path), options=rocksdict.Options(raw_mode=True))
        try:
            for key, value in db.items():
                assert isinstance(key, bytes) and isinstance(value, bytes)
                if key == OFFSET_KEY:
                    offsets.append(int(value))
                else:
                    got[key] = value
        finally:
            db.close()
    assert got == expected
    per_partition = [0] * PARTITIONS
    for k, _v in records:
        per_partition[partition_for(k, PARTITIONS)] += 1
    assert sorted(offsets) == sorted(n - 1 for n in per_partition)

    # Restarted on its own disk: nothing to restore in bulk, the index from the snapshot the
    # graceful stop left beside the databases.
    await asyncio.to_thread(_run_until_ready, env, log, 2)
    text = log.read_text(errors="replace")
    assert text.count("bulk restore of") == 1
    assert "states from the stop's snapshot" in text.split(READY)[1]

    # A memory store restores the same changelog in bulk too.
    mem_log = tmp_path / "memory.log"
    mem_env = _env(bootstrap, worker_id, tmp_path / "memory", "memory://")
    await asyncio.to_thread(_run_until_ready, mem_env, mem_log, 1)
    assert f"bulk restore of {topic}: {len(records)} records" in mem_log.read_text(errors="replace")
