"""The ledger at scale (issue 13): ``python -m bench.scale [--subs 100000] [--json]``.

Generates the ledger table's changelog directly: one representative state built with the pure
machine (``bench.machine.aged_state``: a subscription paid once and renewed monthly by the
real timer for two years, so it follows the machine's current state format), copied with
varied ids, each with its index header (``streams.ledger.due``; 1% of them due now). Then,
with the real worker (``bench.ledger_worker``, only the ledger agent) on a private broker:

- state bytes per subscription (the table value);
- cold recovery (empty disk) in RocksDB and in memory, by Faust's own path
  (BILLING_TABLE_BULK_RESTORE=false, the baseline) and by the bulk restore
  (``streams.ledger.restore``) of the same changelog: states/s from start to "Worker ready"
  less the same worker's start on an empty table, and the worker's CPU per state;
- warm restart on its own disk (RocksDB, after a graceful stop): seconds to ready;
- worker peak RSS and the table's size on disk;
- the sweeper's work per tick with 1% due: popping the due keys from the index and deciding
  their commands (in-process, the agent's code path), against a tick with nothing due.

Figures before issue 13 (memory tables, full-scan sweeper): 5,000-7,100 states/s cold
recovery, 1 M in 198 s, ~4.1 KB RSS per state, ~15 s CPU per million states per full scan.
Goals: warm restart ≤ 30 s at 1 M, cold recovery ≥ 50,000 states/s. ``--subs 1000000`` for
the 1 M run (about 7 GB of changelog at ~7 KB a state: mind the disk; values are made as
they are sent, not held); ``--stores rocksdb`` skips the memory store; Faust's own recovery
path (the cold-recovery baseline) is measured up to ``--faust-path-max`` states.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    Result,
    cpu_seconds,
    finish,
    kafka_broker,
    loadavg,
    log,
    peak_rss_mb,
    report,
    workdir,
)

PARTITIONS = 4
DUE_SHARE = 0.01


class Values:
    """The ``n`` pairs of ``iter_values``, iterable again (each pass makes them anew)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter_values(self.n)


def _settings_env(
    bootstrap: str, root: Path, worker_id: str, store: str, bulk: bool = True
) -> dict[str, str]:
    from billing.kafka_local import free_port

    return dict(
        os.environ,
        BILLING_ENV="test",
        BILLING_KAFKA_BOOTSTRAP=bootstrap,
        BILLING_KAFKA_PARTITIONS=str(PARTITIONS),
        BILLING_WORKER_ID=worker_id,
        BILLING_STATE_DIR=str(root / f"state-{worker_id}-{store[:3]}-{int(bulk)}"),
        BILLING_TABLE_BULK_RESTORE=str(bulk).lower(),
        BILLING_WORKER_WEB_PORT=str(free_port()),
        BILLING_TABLE_STORE=store,
        BILLING_SWEEP_INTERVAL_S="3600",  # the sweeper is measured in-process
        BILLING_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )


def _policy() -> Any:
    from billing.config import WorkerSettings
    from streams.app import policy_from

    return policy_from(WorkerSettings(env="test"))


def iter_values(n: int) -> Iterator[tuple[bytes, bytes]]:
    """``n`` (key, table value) pairs from one aged state, made as they are read (1 M states
    are ~7 GB: not held in memory); 1% due now."""
    from bench.machine import aged_state
    from schemas.state import encode_state
    from streams.ledger.due import fingerprint, pack, request_days

    state, _ = aged_state(24)
    raw = encode_state(state)
    old_sub, old_user = state.subscription_id.encode(), state.user_id.encode()
    fp = fingerprint(_policy())
    days = request_days(state)
    now = int(time.time() * 1000)
    later = now + 30 * 86_400_000
    every = int(1 / DUE_SHARE)
    for i in range(n):
        sub = str(uuid.UUID(int=i + 1)).encode()
        body = raw.replace(old_sub, sub).replace(old_user, b"scale-user-%d" % i)
        wake = now - 1000 if i % every == 0 else later + i
        yield sub, pack(body, fp, wake, days)


def build_values(n: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """``n`` (key, table value) pairs (``iter_values``) in a list, and the state's size."""
    out = list(iter_values(n))
    return out, len(out[0][1])


async def seed_changelog(
    bootstrap: str, topic: str, values: Iterable[tuple[bytes, bytes]]
) -> float:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from schemas.topics import partition_for

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    t = time.monotonic()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
        compression_type=None,
    )
    await producer.start()
    try:
        pending = []
        for key, value in values:
            fut = await producer.send(
                topic, value, key=key, partition=partition_for(key, PARTITIONS)
            )
            pending.append(fut)
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - t


def _ready_after(
    env: dict[str, str], log_path: Path, ready_count: int
) -> tuple[subprocess.Popen[bytes], float]:
    t = time.monotonic()
    out = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ledger_worker"], env=env, stdout=out, stderr=out
    )
    deadline = time.monotonic() + 3600
    while log_path.read_text(errors="replace").count("Worker ready") < ready_count:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited; see {log_path}")
        if time.monotonic() > deadline:
            raise TimeoutError(log_path)
        time.sleep(0.05)
    return proc, time.monotonic() - t


def _cpu_before_stop(proc: subprocess.Popen[bytes]) -> float:
    """The worker's CPU seconds up to ready (read at once: an idle worker adds little)."""
    return cpu_seconds(proc.pid)


def _stop(proc: subprocess.Popen[bytes]) -> float:
    rss = peak_rss_mb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return rss


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def sweeper_tick(values: Iterable[tuple[bytes, bytes]]) -> tuple[float, float, int]:
    """ms of CPU for one sweeper tick with 1% due (pop + decode + due_commands per due key,
    as the agent does) and for a tick with nothing due; the number due."""
    from schemas.state import decode_state
    from schemas.topics import partition_for
    from streams.ledger.due import LedgerIndex, unpack
    from streams.ledger.machine import due_commands

    policy = _policy()
    index = LedgerIndex()
    now = int(time.time() * 1000)
    table = {}  # only what is due is read from the table
    n = 0
    for key, raw in values:
        head = unpack(raw)
        assert head is not None
        index.put(partition_for(key, PARTITIONS), key, head.wake, head.days)
        if head.wake is not None and head.wake <= now:
            table[key] = raw
        n += 1
    parts = set(range(PARTITIONS))
    t = time.process_time()
    due = index.pop_due(now, parts, n)
    for _p, key in due:
        due_commands(decode_state(table[key]), now, policy, None)
    busy = (time.process_time() - t) * 1000
    t = time.process_time()
    for _ in range(100):
        index.pop_due(now, parts, n)
    idle = (time.process_time() - t) * 10
    return busy, idle, len(due)


def run(n: int, stores: tuple[str, ...], faust_path_max: int) -> Result:
    result = Result("scale")
    started, load0 = time.monotonic(), loadavg()
    size = len(next(iter_values(1))[1])
    values = Values(n)
    log(f"state of {size:,} bytes")
    result.add("state bytes per subscription (2 years, 24 renewals)", size, "bytes")
    busy, idle, due = sweeper_tick(values)
    result.add(
        f"sweeper tick, {due:,} due of {n:,} (1%)",
        busy,
        "ms CPU",
        note=f"{busy * 1000 / max(due, 1):.0f} us per due key; before: full scan every 15 ticks",
    )
    result.add("sweeper tick, nothing due", idle, "ms CPU")
    with workdir("scale") as root, kafka_broker(root) as bootstrap:
        from billing.kafka_local import ensure_topics
        from schemas import topics as topic_names
        from streams.ledger.agent import TABLE_NAME

        asyncio.run(ensure_topics(bootstrap, PARTITIONS, topic_names.BILLING_TOPICS))
        # Baseline: the same worker on an empty table.
        env = _settings_env(bootstrap, root, f"scale-empty-{uuid.uuid4().hex[:6]}", "rocksdb://")
        proc, empty_s = _ready_after(env, root / "empty.log", 1)
        empty_cpu = _cpu_before_stop(proc)
        empty_rss = _stop(proc)
        log(f"empty table: ready in {empty_s:.1f} s")
        result.add("start, empty table (baseline)", empty_s, "s")
        # One changelog per store (RocksDB and memory workers name it after their id);
        # each is recovered by Faust's own path (before) and by the bulk restore, same run.
        for store in stores:
            wid = f"scale-{store[:3]}-{uuid.uuid4().hex[:6]}"
            s = asyncio.run(seed_changelog(bootstrap, f"{wid}-{TABLE_NAME}-changelog", values))
            log(f"seeded {n:,} states for {wid} in {s:.1f} s")
            rates: dict[bool, float] = {}
            for bulk in (False, True) if n <= faust_path_max else (True,):
                env = _settings_env(bootstrap, root, wid, store, bulk)
                log_path = root / f"{wid}-{bulk}.log"
                proc, cold_s = _ready_after(env, log_path, 1)
                cpu = _cpu_before_stop(proc)
                rss = _stop(proc)
                rate = rates[bulk] = n / max(cold_s - empty_s, 1e-3)
                path = "bulk restore" if bulk else "Faust's path"
                log(f"{store} cold, {path}: ready in {cold_s:.1f} s ({rate:,.0f} states/s)")
                result.add(
                    f"cold recovery, {store}, {path}",
                    rate,
                    "states/s",
                    baseline=f"Faust's path {rates[False]:,.0f}" if False in rates else "",
                    note=f"{cold_s:.1f} s to ready, {(cpu - empty_cpu) * 1e6 / n:.0f} us "
                    "worker CPU per state; goal >= 50,000",
                )
                if not bulk:
                    continue
                result.add(
                    f"worker peak RSS, {store}",
                    rss,
                    "MB",
                    baseline=f"empty table {empty_rss:.0f} MB",
                    note=f"{(rss - empty_rss) * 1e3 / n:.1f} KB per state over it; before ~4.1 KB",
                )
                if store.startswith("rocksdb"):
                    disk = _du_mb(Path(env["BILLING_STATE_DIR"]))
                    result.add("table on disk, RocksDB", disk, "MB")
                    proc, warm_s = _ready_after(env, log_path, 2)
                    warm_cpu = _cpu_before_stop(proc)
                    _stop(proc)
                    text = log_path.read_text(errors="replace")
                    m = re.findall(
                        r"(\d+) states from (disk|the stop's snapshot) in ([\d.]+)s", text
                    )
                    idx = sum(float(s) for _n, _w, s in m[-PARTITIONS:])
                    how = (
                        "snapshot" if all(w != "disk" for _n, w, _s in m[-PARTITIONS:]) else "disk"
                    )
                    log(f"warm restart: ready in {warm_s:.1f} s (index from {how} {idx:.1f} s)")
                    result.add(
                        "warm restart (RocksDB, own disk)",
                        warm_s,
                        "s",
                        baseline=f"empty table {empty_s:.1f} s",
                        note=f"index from {how} in {idx:.1f} s, worker CPU {warm_cpu:.1f} s "
                        f"(empty table {empty_cpu:.1f} s); goal <= 30 s at 1 M",
                    )
    return finish(result, load0, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", type=int, default=100_000)
    parser.add_argument("--stores", default="rocksdb,memory", help="rocksdb,memory")
    parser.add_argument(
        "--faust-path-max",
        type=int,
        default=200_000,
        help="measure Faust's own (slow) recovery path only up to this many states",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    stores = tuple(f"{name.strip()}://" for name in args.stores.split(",") if name.strip())
    report(run(args.subs, stores, args.faust_path_max), args.json)


if __name__ == "__main__":
    main()
