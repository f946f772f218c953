"""Streaming reconciliation at scale: ``python -m bench.bench_recon_stream [--lines 1000000]``.

A provider report of ``--lines`` lines reconciled by the streaming path, on a private broker
(4 partitions) and a private PostgreSQL (migrated), with one billing worker (the ledger and
the reconcile agents, ``streams.app.create_app``) and the feeder in a process of its own
(``reconciler.feed.publish_run``, as ``billing reconcile`` runs it).

The ledger: one subscription per report line (a real state: pay → pending → succeeded through
``streams.ledger.machine.decide``, about 3.7 KB of JSON), written straight into the ledger
table's changelog topic (``<worker id>-ledger-state-changelog``, compacted), which the worker
recovers its table from when it starts: making a million payments through the ledger would
take longer than the rest. Each state is a template whose subscription, user and payment ids
are replaced; the ids of the events in ``recent`` are shared (only a replay reads them).

The report: mostly matched lines, and about 3 % discrepancies of every class the repairs act
on (a missed webhook and a canceled payment the provider charged: applied through the
ledger; a double charge: refunded through the ledger; an amount mismatch, a provider payment
we never requested, a payment of ours the provider never reported: escalated), plus payments
still in flight. The run's counts per class must equal what the generator made.

Figures (every rate a ratio against the baseline, measured in the same run):
- baseline: a raw aiokafka consumer reading the same report (published beforehand to a
  scratch topic, as the feeder publishes it: lines many to a message) and decoding every
  message, in lines/s (``--skip-baselines`` to leave out);
- the pure matcher in-process (decode the line and the state, ``RunMemory.match``) on a
  sample;
- feed alone: the feeder publishing the report to the scratch topic, nobody consuming;
- the streaming path: from the first line published to the run ``finished`` in
  ``recon_runs`` (its ``finished_at``), lines/s; the feed's share of it; CPU per line of the
  worker and of PostgreSQL; peak RSS of the worker (its table holds every state) and of the
  feeder; the table's recovery at start (not in the timed window).

The worker's sweeper is slowed down (``BILLING_SWEEP_INTERVAL_S=3600``); it no longer scans
the table (due work comes from an index, ``streams.ledger.due``), so ``--with-sweeper``
(the production interval) changes little.

The worker's table recovery at start (cold, from the changelog) is reported, not timed:
measured in issue 13 at 5,000-7,100 states/s in memory (1 M in 198 s); ``bench.scale``
measures it and the warm restart from RocksDB.

``--profile FILE`` samples the worker with py-spy (if installed) over the timed window,
collapsed stacks per thread, idle included. ``BENCH_KEEP=1`` keeps the work directory (the
worker's log). Roles (internal): ``--role worker`` is the billing worker, ``--role feed`` the
feeder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    Result,
    cpu_seconds,
    finish,
    kafka_broker,
    loadavg,
    log,
    peak_rss_mb,
    postgres,
    ratio,
    report,
    tree_cpu_seconds,
    workdir,
)

PARTITIONS = 4
HOUR = 3_600_000
DEFAULT_LINES = 1_000_000
DEFAULT_SEED = 20261124
SCRATCH_TOPIC = "bench.recon.scratch"  # the report again, for the feed-alone and raw figures
CHANGELOG_SUFFIX = "-ledger-state-changelog"  # Faust: f"{app id}-{table name}-changelog"
BENCH = "recon_stream"

# What a subscription of the report is, with its share of the subscriptions. Discrepancies
# are about 3 % of the lines; "double" has two lines (the kept charge and the duplicate).
MIX: tuple[tuple[str, float], ...] = (
    ("missed_webhook", 0.008),  # ours pending, theirs succeeded: missing_internal, applied
    ("canceled_charged", 0.004),  # ours canceled, theirs succeeded: status_mismatch, applied
    ("amount", 0.004),  # another amount: amount_mismatch, escalated
    ("double", 0.004),  # two succeeded charges: matched + duplicate_charge, refunded
    ("unreported", 0.008),  # ours succeeded, no line: missing_at_provider at the marker
    ("stranger", 0.004),  # a line naming a subscription the ledger does not know
    ("in_flight", 0.008),  # pending on both sides within the SLA
)
EXPECTED_CLASSES: dict[str, dict[str, int]] = {
    "matched": {"matched": 1},
    "missed_webhook": {"missing_internal": 1},
    "canceled_charged": {"status_mismatch": 1},
    "amount": {"amount_mismatch": 1},
    "double": {"matched": 1, "duplicate_charge": 1},
    "unreported": {"missing_at_provider": 1},
    "stranger": {"missing_internal": 1},
    "in_flight": {"in_flight": 1},
}
STATE_OF = {  # the ledger state template of each kind (None: no state)
    "matched": "succeeded",
    "missed_webhook": "pending",
    "canceled_charged": "canceled",
    "amount": "succeeded",
    "double": "succeeded",
    "unreported": "succeeded",
    "stranger": None,
    "in_flight": "pending",
}


# ------------------------------------------------------------------------------ the data
@dataclass(frozen=True)
class Templates:
    """Encoded ledger states made by the real machine, and the ids to replace in them."""

    t0: int  # requested_at of every payment
    states: dict[str, bytes]
    sub_id: bytes
    user_id: bytes
    payment_id: bytes


def make_templates(t0: int) -> Templates:
    from bench.workload import observed, pay_command
    from schemas.state import encode_state
    from streams.ledger.machine import Policy, decide

    policy = Policy(payment_deadline_ms=3600_000)
    cmd = pay_command("bench-template-user", "bench-template-key", t0)
    states: dict[str, bytes] = {}
    first = decide(None, cmd, policy).state
    pending = decide(first, observed(cmd, "pending", t0 + 1000), policy).state
    assert pending is not None
    states["pending"] = encode_state(pending)
    for status in ("succeeded", "canceled"):
        final = decide(pending, observed(cmd, status, t0 + 2000), policy).state
        assert final is not None and final.payments[cmd.payment_id].status == status
        states[status] = encode_state(final)
    return Templates(
        t0=t0,
        states=states,
        sub_id=cmd.subscription_id.encode(),
        user_id=cmd.user_id.encode(),
        payment_id=cmd.payment_id.encode(),
    )


@dataclass(frozen=True)
class Slot:
    """One subscription of the benchmark: its kind, ids and report lines."""

    kind: str
    sub_id: str
    user_id: str
    payment_id: str
    lines: tuple[Any, ...]  # ReportLine

    def state(self, tpl: Templates) -> bytes | None:
        name = STATE_OF[self.kind]
        if name is None:
            return None
        return (
            tpl.states[name]
            .replace(tpl.sub_id, self.sub_id.encode())
            .replace(tpl.payment_id, self.payment_id.encode())
            .replace(tpl.user_id, self.user_id.encode())
        )


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def population(n_lines: int, seed: int, t0: int) -> Iterator[Slot]:
    """Subscriptions until their lines number ``n_lines``; the same for the same arguments
    (the feeder regenerates the report from them)."""
    from schemas.money import Money

    rng = random.Random(seed)
    price, odd = Money(29900, "RUB"), Money(19900, "RUB")
    bounds: list[tuple[float, str]] = []
    acc = 0.0
    for kind, share in MIX:
        acc += share
        bounds.append((acc, kind))
    made = 0
    while made < n_lines:
        r = rng.random()
        kind = next((k for b, k in bounds if r < b), "matched")
        if kind == "double" and n_lines - made < 2:
            kind = "matched"
        sub, user, pay = _uuid(rng), f"user-{_uuid(rng)}", _uuid(rng)
        created = t0 + 5000 + rng.randrange(HOUR // 2)

        prov = f"pp-{pay}"  # the provider id in the template state (bench.workload.observed)
        slot = Slot(kind, sub, user, pay, ())
        lines: tuple[Any, ...]
        if kind in ("matched", "missed_webhook", "canceled_charged"):
            lines = (_line(slot, prov, "succeeded", price, created),)
        elif kind == "amount":
            lines = (_line(slot, prov, "succeeded", odd, created),)
        elif kind == "double":
            lines = (
                _line(slot, prov, "succeeded", price, created),
                _line(slot, f"pp-dup-{pay}", "succeeded", price, created + 60),
            )
        elif kind == "unreported":
            lines = ()
        elif kind == "stranger":
            lines = (_line(slot, f"pp-stranger-{pay}", "succeeded", price, created),)
        else:  # in_flight
            lines = (_line(slot, prov, "pending", price, created),)
        made += len(lines)
        yield Slot(kind, sub, user, pay, lines)


def _line(slot: Slot, provider_id: str, status: str, amount: Any, created: int) -> Any:
    from schemas.recon import PaymentLine

    ok = status == "succeeded"
    return PaymentLine(
        provider_payment_id=provider_id,
        status=status,  # type: ignore[arg-type]
        amount=amount,
        paid=ok,
        created_at=created,
        subscription_id=slot.sub_id,
        payment_id=slot.payment_id,
        user_id=slot.user_id,
        payment_method_id="pm-1" if ok else None,
        payment_method_saved=ok,
    )


def expected_counts(n_lines: int, seed: int, t0: int) -> tuple[dict[str, int], Counter[str]]:
    counts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for slot in population(n_lines, seed, t0):
        kinds[slot.kind] += 1
        counts.update(EXPECTED_CLASSES[slot.kind])
    return dict(counts), kinds


# ---------------------------------------------------------------------------- the ledger
async def seed_changelog(
    bootstrap: str, topic: str, n_lines: int, seed: int, tpl: Templates
) -> tuple[int, int, float]:
    """Write every ledger state of the population to the table's changelog, as the ledger
    agent would have (key = subscription id on its partition, value = the encoded state).
    Returns (states, bytes, seconds)."""
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
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        max_batch_size=1 << 20,
        max_request_size=4 << 20,
        compression_type=None,
    )
    t = time.monotonic()
    await producer.start()
    states = size = 0
    try:
        batches: dict[int, Any] = {}
        futures: list[asyncio.Future[Any]] = []
        for slot in population(n_lines, seed, tpl.t0):
            value = slot.state(tpl)
            if value is None:
                continue
            key = slot.sub_id.encode()
            p = partition_for(key, PARTITIONS)
            batch = batches.get(p) or batches.setdefault(p, producer.create_batch())
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=p))
                batch = batches[p] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            states += 1
            size += len(value)
            if len(futures) >= 64:
                await asyncio.gather(*futures)
                futures.clear()
        for p, batch in batches.items():
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return states, size, time.monotonic() - t


# ---------------------------------------------------------------------------- baselines
async def raw_consume(bootstrap: str, topic: str) -> dict[str, float]:
    """The baseline: a plain aiokafka consumer reads the report (every message of ``topic``)
    and decodes each message (no state, no database); rates are in report lines."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from schemas.recon import ReportBatch, ReportEnvelope, decode_report_message

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        expect = sum(ends.values())
        n = lines = 0
        t0, cpu0 = time.monotonic(), time.process_time()
        while n < expect:
            got = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in got.values():
                for r in records:
                    assert r.value is not None
                    msg = decode_report_message(r.value)
                    if isinstance(msg, ReportBatch):
                        lines += len(msg.lines)
                    elif isinstance(msg, ReportEnvelope):
                        lines += 1
                n += len(records)
        seconds, cpu = time.monotonic() - t0, time.process_time() - cpu0
    finally:
        await consumer.stop()
    return {
        "n": lines,
        "messages": n,
        "seconds": seconds,
        "rate": lines / seconds,
        "cpu_us": cpu / lines * 1e6,
    }


def pure_matcher(n_sample: int, seed: int, tpl: Templates) -> dict[str, float]:
    """The matcher's own cost in this process: per line, decode the report message, get the
    encoded state from a dict, decode it and ``match_line`` (``RunMemory.match``)."""
    from schemas.recon import ReportEnvelope, decode_report_message, encode_report_message
    from schemas.recon_match import MatchConfig
    from streams.reconcile.agent import RunMemory, decode_for_match

    table: dict[bytes, bytes] = {}
    values: list[bytes] = []
    for slot in population(n_sample, seed, tpl.t0):
        encoded = slot.state(tpl)
        if encoded is not None:
            table[slot.sub_id.encode()] = encoded
        values.extend(
            encode_report_message(ReportEnvelope(run_id="pure", line=line)) for line in slot.lines
        )
    cfg = MatchConfig(tpl.t0 - HOUR, tpl.t0 + HOUR, now=tpl.t0 + HOUR, pending_sla_ms=2 * HOUR)
    memory = RunMemory()
    t0, cpu0 = time.monotonic(), time.process_time()
    for value in values:
        msg = decode_report_message(value)
        assert isinstance(msg, ReportEnvelope)
        sub = msg.line.subscription_id
        raw = table.get(sub.encode()) if sub else None
        memory.match(cfg, "pure", 0, msg.line, decode_for_match(raw) if raw else None)
    seconds, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return {
        "n": len(values),
        "seconds": seconds,
        "rate": len(values) / seconds,
        "cpu_us": cpu / len(values) * 1e6,
    }


# ------------------------------------------------------------------------------- feeder
async def feed_role(args: argparse.Namespace) -> None:
    """The feeder process: regenerate the report, record the run (unless it exists), publish
    it with ``reconciler.feed.publish_run``; print its timings as JSON."""
    from psycopg import AsyncConnection

    from reconciler import feed, store

    t = time.monotonic()
    lines = [line for slot in population(args.lines, args.seed, args.t0) for line in slot.lines]
    generated = time.monotonic() - t
    marks: dict[str, float] = {}

    def publishing(total: int) -> None:
        marks["first_publish"] = time.time()

    producer = feed.new_producer(args.bootstrap)
    await producer.start()
    try:
        async with await AsyncConnection.connect(args.dsn, autocommit=True) as conn:
            run = await store.create_run(
                conn,
                run_id=args.run_id,
                window_start=args.t0 - HOUR,
                window_end=args.t0 + HOUR,
                source="registry",
                source_ref="bench",
                trigger="bench",
                taken_at=int(time.time() * 1000),
                pending_sla_ms=2 * HOUR,
            )
            assert run is not None
            start = time.time()
            result = await feed.publish_run(
                conn,
                producer,
                run,
                lines,
                topic=args.topic,
                progress=feed.FeedProgress(publishing=publishing),
            )
            fed = time.time()
    finally:
        await producer.stop()
    print(
        json.dumps(
            {
                "generated_s": generated,
                "start": start,
                "first_publish": marks.get("first_publish", start),
                "fed": fed,
                "lines": result.lines,
                "per_partition": result.per_partition,
                "peak_rss_mb": peak_rss_mb(os.getpid()),
                "cpu_s": time.process_time(),
            }
        ),
        flush=True,
    )


def run_feeder(
    root: Path, bootstrap: str, dsn: str, n: int, seed: int, t0: int, topic: str, run_id: str
) -> dict[str, Any]:
    import subprocess

    log_path = root / f"feed-{topic}.log"
    argv = [
        sys.executable, "-m", "bench.bench_recon_stream", "--role", "feed",
        "--lines", str(n), "--seed", str(seed), "--t0", str(t0), "--bootstrap", bootstrap,
        "--dsn", dsn, "--topic", topic, "--run-id", run_id,
    ]  # fmt: skip
    with log_path.open("wb") as err:
        out = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err, check=False)
    if out.returncode != 0:
        sys.stderr.write(log_path.read_text(errors="replace")[-3000:])
        raise RuntimeError(f"feeder failed ({out.returncode}); see {log_path}")
    stats: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return stats


# ------------------------------------------------------------------------------- worker
def worker_role() -> None:
    """The billing worker with the ledger and the reconcile agents (settings from env)."""
    import logging

    from billing.config import Settings
    from streams.app import create_app

    settings = Settings()
    logging.basicConfig(level=settings.log_level)
    app = create_app(settings, agents=("ledger", "reconcile"))
    sys.argv = [sys.argv[0], "worker", "-l", "info", "--without-web"]
    app.main()


@dataclass
class Worker:
    proc: Any
    log_path: Path
    worker_id: str
    samples: list[tuple[float, float]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def alive(self) -> bool:
        return bool(self.proc.poll() is None)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(root: Path, bootstrap: str, dsn: str, worker_id: str, *, sweeper: bool) -> Worker:
    import subprocess

    from billing.kafka_local import free_port

    env = dict(
        os.environ,
        BILLING_ENV="test",
        BILLING_KAFKA_BOOTSTRAP=bootstrap,
        BILLING_KAFKA_PARTITIONS=str(PARTITIONS),
        BILLING_POSTGRES_DSN=dsn,
        BILLING_WORKER_ID=worker_id,
        BILLING_STATE_DIR=str(root / "worker-state"),
        BILLING_WORKER_WEB_PORT=str(free_port()),
        BILLING_PAYMENT_DEADLINE_S="3600",  # nothing in flight is re-driven meanwhile
        BILLING_RECON_NIGHTLY="false",
        PYTHONUNBUFFERED="1",
    )
    if not sweeper:
        env["BILLING_SWEEP_INTERVAL_S"] = "3600"
    log_path = root / "worker.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_recon_stream", "--role", "worker"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
    return Worker(proc, log_path, worker_id)


def stop_worker(worker: Worker) -> None:
    import signal
    import subprocess

    if worker.alive():
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(60)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait(10)


def wait_recovered(worker: Worker, timeout: float) -> float:
    """Until the worker has recovered its table and resumed its streams; seconds."""
    t = time.monotonic()
    deadline = t + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"worker exited; see {worker.log_path}\n{worker.log_text()[-3000:]}")
        if "Worker ready" in worker.log_text():
            return time.monotonic() - t
        time.sleep(0.5)
    raise TimeoutError(f"worker not ready after {timeout:.0f}s; see {worker.log_path}")


async def wait_finished(
    dsn: str, run_id: str, worker: Worker, limit_s: float, pg_pid: int | None, bootstrap: str
) -> dict[str, Any]:
    """Poll the run until it is done; log progress (the worker's committed offsets)."""
    from psycopg import AsyncConnection

    from reconciler import store
    from schemas.recon_runs import DONE_STATUSES

    deadline = time.monotonic() + limit_s
    last_log = time.monotonic()
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            try:  # cheap: run_report's count of open discrepancies is not for polling
                status, _partitions, done_parts = await store.run_progress(conn, run_id)
            except store.RunNotFound:  # the feeder has not recorded it yet
                await asyncio.sleep(0.2)
                continue
            if status in DONE_STATUSES:
                report = await store.run_report(conn, run_id)
                cur = await conn.execute(
                    "SELECT extract(epoch FROM finished_at)::float8 FROM recon_runs"
                    " WHERE run_id = %s",
                    (run_id,),
                )
                row = await cur.fetchone()
                assert row is not None
                return {"report": report, "finished": float(row[0])}
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} not done after {limit_s:.0f}s: {status}")
            if not worker.alive():
                raise RuntimeError(f"worker exited; see {worker.log_path}")
            if time.monotonic() - last_log > 15:
                last_log = time.monotonic()
                done = await _committed(worker, bootstrap)
                log(
                    f"  run {status}: {done:,} report messages committed,"
                    f" {done_parts}/{PARTITIONS} partitions done, worker CPU"
                    f" {cpu_seconds(worker.pid):.0f} s"
                    + (f", postgres CPU {tree_cpu_seconds(pg_pid):.0f} s" if pg_pid else "")
                )
            await asyncio.sleep(0.2)


async def _committed(worker: Worker, bootstrap: str) -> int:
    """Report messages the worker's group committed (progress display only)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from schemas.topics import PROVIDER_REPORT

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        offsets = await admin.list_consumer_group_offsets(worker.worker_id)
        return sum(m.offset for tp, m in offsets.items() if tp.topic == PROVIDER_REPORT)
    except Exception:
        return 0
    finally:
        await admin.close()


def start_profiler(pid: int, path: Path) -> Any:
    """py-spy (if installed) sampling the worker for the timed window, collapsed stacks."""
    import shutil
    import subprocess

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [
            exe,
            "record",
            "-p",
            str(pid),
            "-o",
            str(path),
            "-f",
            "raw",
            "-r",
            "200",
            "--threads",
            "--idle",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(proc: Any) -> None:
    import signal

    proc.send_signal(signal.SIGINT)
    proc.wait(60)


def postmaster_pid(root: Path) -> int | None:
    try:
        return int((root / "pg" / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------------- main
def run(
    lines: int = DEFAULT_LINES,
    *,
    seed: int = DEFAULT_SEED,
    baselines: bool = True,
    sweeper: bool = False,
    sample: int = 100_000,
    profile: Path | None = None,
) -> Result:
    from billing.kafka_local import ensure_topics
    from schemas import topics as billing_topics
    from schemas.recon_match import MATCH_CLASSES

    result = Result(BENCH)
    started = time.monotonic()
    load0 = loadavg()
    t0 = int(time.time() * 1000) - 10 * 60_000  # the payments were requested 10 min ago
    tpl = make_templates(t0)
    expected, kinds = expected_counts(lines, seed, t0)
    log(f"report: {lines:,} lines, {sum(kinds.values()):,} subscriptions, {dict(kinds)}")
    with workdir("recon-stream") as root, kafka_broker(root) as bootstrap, postgres(root) as dsn:
        pg_pid = postmaster_pid(root)
        asyncio.run(
            ensure_topics(
                bootstrap, PARTITIONS, topics=[*billing_topics.BILLING_TOPICS, SCRATCH_TOPIC]
            )
        )
        worker_id = f"bench-recon-{uuid.uuid4().hex[:6]}"
        n_states, size, seconds = asyncio.run(
            seed_changelog(bootstrap, worker_id + CHANGELOG_SUFFIX, lines, seed, tpl)
        )
        log(
            f"changelog: {n_states:,} ledger states ({size / n_states:,.0f} bytes each,"
            f" {size / 2**20:,.0f} MiB) in {seconds:.1f} s"
        )

        stats: dict[str, dict[str, Any]] = {}
        if baselines:
            log("feed alone (scratch topic, nobody consuming) ...")
            stats["feed"] = run_feeder(
                root, bootstrap, dsn, lines, seed, t0, SCRATCH_TOPIC, str(uuid.uuid4())
            )
            f = stats["feed"]
            f["rate"] = f["lines"] / (f["fed"] - f["first_publish"])
            log(f"  {f['rate']:,.0f} lines/s, feeder peak RSS {f['peak_rss_mb']:.0f} MiB")
            log("baseline: raw aiokafka consume + decode of the scratch topic ...")
            stats["raw"] = asyncio.run(raw_consume(bootstrap, SCRATCH_TOPIC))
            log(f"  {stats['raw']['rate']:,.0f} lines/s ({stats['raw']['messages']:,} messages)")
            log(f"pure matcher in-process ({min(sample, lines):,} lines) ...")
            stats["pure"] = pure_matcher(min(sample, lines), seed, tpl)
            log(f"  {stats['pure']['rate']:,.0f} lines/s")

        log("starting the worker (recovers the ledger table from its changelog) ...")
        worker = start_worker(root, bootstrap, dsn, worker_id, sweeper=sweeper)
        try:
            recovery_s = wait_recovered(worker, timeout=600 + n_states / 1000)
            rss_recovered = peak_rss_mb(worker.pid)
            log(f"  recovered in {recovery_s:.1f} s, worker peak RSS {rss_recovered:,.0f} MiB")
            cpu_w0 = cpu_seconds(worker.pid)
            cpu_pg0 = tree_cpu_seconds(pg_pid) if pg_pid else float("nan")
            run_id = str(uuid.uuid4())
            spy = start_profiler(worker.pid, profile) if profile else None
            log(f"streaming run {run_id}: feeding {lines:,} lines ...")
            import threading

            feed_out: dict[str, Any] = {}

            def feeding() -> None:
                try:
                    feed_out.update(
                        run_feeder(
                            root,
                            bootstrap,
                            dsn,
                            lines,
                            seed,
                            t0,
                            billing_topics.PROVIDER_REPORT,
                            run_id,
                        )
                    )
                except Exception as exc:
                    feed_out["error"] = repr(exc)

            feeder = threading.Thread(target=feeding, daemon=True)
            feeder.start()
            done = asyncio.run(
                wait_finished(dsn, run_id, worker, 600 + lines / 100, pg_pid, bootstrap)
            )
            feeder.join()
            if "error" in feed_out:
                raise RuntimeError(feed_out["error"])
            cpu_w = cpu_seconds(worker.pid) - cpu_w0
            cpu_pg = (tree_cpu_seconds(pg_pid) - cpu_pg0) if pg_pid else float("nan")
            rss_worker = peak_rss_mb(worker.pid)
            if spy is not None:
                stop_profiler(spy)
        except BaseException:
            sys.stderr.write(worker.log_text()[-4000:])
            raise
        finally:
            stop_worker(worker)
        report = done["report"]
        took = done["finished"] - feed_out["first_publish"]
        fed_s = feed_out["fed"] - feed_out["first_publish"]
        stream_rate = lines / took

        counts = {k: v for k, v in report.counts.items() if v}
        ok = report.spec.status == "finished" and counts == expected
        log(
            f"  run {report.spec.status} after {took:.1f} s: {stream_rate:,.0f} lines/s;"
            f" counts {'as expected' if ok else f'{counts} != expected {expected}'}"
        )

    base = stats.get("raw", {}).get("rate", float("nan"))
    note = f"n={lines:,}, {took:.1f} s, {report.spec.status}"
    if not ok:
        note += f", COUNTS WRONG: {counts} != {expected}"
    result.add(
        "streaming path: first publish → run finished",
        stream_rate,
        "lines/s",
        ratio=ratio(stream_rate, base),
        baseline="raw",
        note=note,
    )
    result.add(
        "streaming path: feed share (publish → fed)",
        lines / fed_s,
        "lines/s",
        ratio=ratio(lines / fed_s, base),
        baseline="raw",
        note=f"{fed_s:.1f} s of {took:.1f} s, concurrent with the worker",
    )
    result.add(
        "worker CPU per line",
        cpu_w / lines * 1e6,
        "us",
        note=f"{cpu_w:.0f} s in the timed window (ledger repairs included)",
    )
    result.add(
        "worker one-core capacity",
        lines / cpu_w if cpu_w else float("nan"),
        "lines/s",
        ratio=ratio(lines / cpu_w, base) if cpu_w else None,
        baseline="raw",
        note="1 / worker CPU per line",
    )
    if pg_pid:
        result.add("PostgreSQL CPU per line", cpu_pg / lines * 1e6, "us", note="all backends")
    result.add(
        "worker peak RSS",
        rss_worker,
        "MiB",
        note=f"{n_states:,} ledger states ({size / 2**20:,.0f} MiB encoded);"
        f" {rss_recovered:,.0f} MiB after recovery",
    )
    result.add("feeder peak RSS", feed_out["peak_rss_mb"], "MiB", note="separate process")
    result.add(
        "table recovery at start",
        n_states / recovery_s,
        "states/s",
        note=f"{recovery_s:.1f} s, not in the timed window",
    )
    if baselines:
        raw, pure, fd = stats["raw"], stats["pure"], stats["feed"]
        result.add(
            "baseline: raw aiokafka consume + decode",
            raw["rate"],
            "lines/s",
            ratio=1.0,
            baseline="raw",
            note=f"{raw['messages']:,} messages, {raw['cpu_us']:.1f} us CPU per line",
        )
        result.add(
            "pure matcher in-process (decode, state decode, match_line)",
            pure["rate"],
            "lines/s",
            ratio=ratio(pure["rate"], base),
            baseline="raw",
            note=f"sample of {pure['n']:,} lines, {pure['cpu_us']:.1f} us CPU per line",
        )
        result.add(
            "feed alone (nobody consuming)",
            fd["rate"],
            "lines/s",
            ratio=ratio(fd["rate"], base),
            baseline="raw",
            note=f"publish_run; generating the report took {fd['generated_s']:.1f} s",
        )
    result.notes.append(f"report mix (subscriptions): {dict(kinds)}; expected classes {expected}")
    result.notes.append(
        "one worker (ledger + reconcile agents), 4 partitions; sweeper "
        + (
            "at its production interval"
            if sweeper
            else "slowed down (BILLING_SWEEP_INTERVAL_S=3600)"
        )
    )
    result.notes.append(f"classes: {', '.join(k for k in MATCH_CLASSES if k in counts)}")
    finish(result, load0, started)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=DEFAULT_LINES)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--sample", type=int, default=100_000, help="lines of the pure matcher")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--with-sweeper", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", type=Path, help="py-spy the worker's timed window to FILE")
    ap.add_argument("--role", choices=("bench", "worker", "feed"), default="bench")
    # feeder role
    ap.add_argument("--t0", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", default="", help=argparse.SUPPRESS)
    ap.add_argument("--dsn", default="", help=argparse.SUPPRESS)
    ap.add_argument("--topic", default="", help=argparse.SUPPRESS)
    ap.add_argument("--run-id", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "worker":
        worker_role()
        return
    if args.role == "feed":
        asyncio.run(feed_role(args))
        return
    res = run(
        args.lines,
        seed=args.seed,
        baselines=not args.skip_baselines,
        sweeper=args.with_sweeper,
        sample=args.sample,
        profile=args.profile,
    )
    report(res, args.json)


if __name__ == "__main__":
    main()
