"""Transport throughput: consume → process → produce on a real broker, messages/s.

Variants, all on the same private broker, 4 partitions, the same input (PaySubscription
commands as JSON, keyed by subscription id, pre-loaded before the processor starts):

  (a) raw aiokafka, at-least-once: per fetched batch send all, flush, then commit  [baseline]
  (b) raw aiokafka, transactional: per fetched batch one transaction with
      send_offsets_to_transaction (exactly-once inside Kafka)
  (c) bare Faust agent passthrough (at_least_once, faust_fix applied), a separate process
  (c2) the same agent plus one table write per record (the ledger's changelog shape)
  (d) the ledger agent (create_app(agents=("ledger",)), a separate process): real commands
      through decode → table get → decide → table set → emit, until billing.events holds
      one event per command

Timing: (a)/(b) from the first fetch to the last commit; (c)/(c2)/(d) from the first output
visible in the output topic to the last (end offsets polled every 50 ms from this process),
so worker start-up and group join are excluded everywhere. Outputs are counted afterwards.

Run: ``python -m bench.transport [--n-raw 100000] [--n-faust 40000] [--only a,b,c,c2,d]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
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
    ratio,
    report,
    self_peak_rss_mb,
    workdir,
)
from bench.workload import pay_commands, preload, records
from schemas import topics as billing_topics
from schemas.messages import decode_event

PARTITIONS = 4
VARIANTS = ("a", "b", "c", "c2", "d", "dt")
LABELS = {
    "a": "(a) raw aiokafka at-least-once",
    "b": "(b) raw aiokafka transactional",
    "c": "(c) Faust passthrough",
    "c2": "(c2) Faust passthrough + table",
    "d": "(d) ledger agent",
    "dt": "(dt) ledger agent, full table",
}


# ------------------------------------------------------------------------------ raw loops
async def raw_loop(
    bootstrap: str, source: str, sink: str, n: int, *, transactional: bool
) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    group = f"bench-raw-{uuid.uuid4().hex[:6]}"
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
    )
    producer_args: dict[str, Any] = {"bootstrap_servers": bootstrap, "acks": "all"}
    if transactional:
        producer_args["transactional_id"] = f"{group}-txn"
    else:
        producer_args["enable_idempotence"] = True
    producer = AIOKafkaProducer(**producer_args)
    await producer.start()
    await consumer.start()
    done = 0
    batches = 0
    t0: float | None = None
    try:
        while done < n:
            fetched = await consumer.getmany(timeout_ms=500)
            if not fetched:
                continue
            if t0 is None:
                t0, cpu0 = time.monotonic(), time.process_time()
            offsets = {tp: recs[-1].offset + 1 for tp, recs in fetched.items()}
            if transactional:
                async with producer.transaction():
                    for recs in fetched.values():
                        for r in recs:
                            await producer.send(sink, r.value, key=r.key)
                    await producer.send_offsets_to_transaction(offsets, group)
            else:
                futures = []
                for recs in fetched.values():
                    for r in recs:
                        futures.append(await producer.send(sink, r.value, key=r.key))
                await producer.flush()
                for f in futures:
                    f.result()  # raises if a send failed: then we must not commit
                await consumer.commit(offsets)
            done += sum(len(r) for r in fetched.values())
            batches += 1
        t1, cpu1 = time.monotonic(), time.process_time()
        committed = 0
        for p in range(PARTITIONS):
            committed += await consumer.committed(TopicPartition(source, p)) or 0
    finally:
        await consumer.stop()
        await producer.stop()
    assert t0 is not None
    return {
        "n": done,
        "seconds": t1 - t0,
        "rate": done / (t1 - t0),
        "batches": batches,
        "committed": committed,
        "cpu_us": (cpu1 - cpu0) / done * 1e6,
    }


# ------------------------------------------------------------------------------ counting
async def end_offsets(bootstrap: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return int(sum((await c.end_offsets(tps)).values()))
    finally:
        await c.stop()


async def count_records(bootstrap: str, topic: str, inspect: Any = None) -> int:
    """Committed records in ``topic`` (read_committed, so aborted transactions and
    transaction markers are not counted); ``inspect(value)`` is called on each."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        n = 0
        while True:
            positions = [await c.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                return n
            got = await c.getmany(timeout_ms=1000, max_records=10000)
            n += sum(len(v) for v in got.values())
            if inspect is not None:
                for recs in got.values():
                    for r in recs:
                        inspect(r.value)
    finally:
        await c.stop()


class EventCensus:
    """Event types and distinct event ids seen on billing.events."""

    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}
        self.ids: set[str] = set()

    def inspect(self, value: bytes) -> None:
        ev = decode_event(value)
        name = type(ev).__name__
        self.kinds[name] = self.kinds.get(name, 0) + 1
        self.ids.add(ev.event_id)


class OutputWatch:
    """Polls the summed end offsets of an output topic; records when it first moves and
    when it reaches ``n``."""

    def __init__(self, bootstrap: str, topic: str, n: int, pid: int, base: int = 0) -> None:
        self.bootstrap, self.topic, self.n, self.pid = bootstrap, topic, n, pid
        self.base = base  # outputs already there (an earlier run's)

    async def run(self, limit_s: float, alive: Any) -> dict[str, Any]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await c.start()
        tps = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        start = time.monotonic()
        t_first: float | None = None
        c_first = 0
        cpu_first = 0.0
        last = 0
        self.samples: list[tuple[float, int]] = []
        try:
            while True:
                now = time.monotonic()
                count = int(sum((await c.end_offsets(tps)).values()))
                if count > self.base and t_first is None:
                    t_first, c_first = now, count
                    cpu_first = cpu_seconds(self.pid)
                if t_first is not None:
                    self.samples.append((now - t_first, count))
                last = count
                if count >= self.n:
                    break
                if now - start > limit_s:
                    raise TimeoutError(f"{self.topic}: {count} of {self.n} after {limit_s:.0f}s")
                if not alive():
                    raise RuntimeError(f"worker exited with {count} of {self.n} outputs")
                await asyncio.sleep(0.05)
        finally:
            await c.stop()
        assert t_first is not None
        t_end = time.monotonic()
        cpu_used = cpu_seconds(self.pid) - cpu_first
        seconds = t_end - t_first
        return {
            "n": last,
            "seconds": seconds,
            "rate": (last - c_first) / seconds if seconds > 0 else float("nan"),
            "startup_s": t_first - start,
            "thirds": self.thirds(),
            "cpu_us": cpu_used / max(1, last - c_first) * 1e6,
        }

    def thirds(self) -> list[float]:
        """Rate in each third of the timed window (a falling rate shows a cost that grows
        with the state, not a constant per-message cost)."""
        if len(self.samples) < 4:
            return []
        total = self.samples[-1][0]
        rates = []
        for i in range(3):
            lo, hi = total * i / 3, total * (i + 1) / 3
            pts = [s for s in self.samples if lo <= s[0] <= hi]
            if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
                rates.append((pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]))
        return rates


# ------------------------------------------------------------------------------ workers
def _start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_worker(
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    bootstrap: str,
    out_topic: str,
    n: int,
    base: int = 0,
) -> dict[str, Any]:
    proc = _start(argv, env, log_path)
    try:
        watch = OutputWatch(bootstrap, out_topic, n, proc.pid, base)
        stats = asyncio.run(watch.run(limit_s=60 + n / 100, alive=lambda: proc.poll() is None))
        stats["peak_rss_mb"] = peak_rss_mb(proc.pid)
        stats["cpu_s"] = cpu_seconds(proc.pid)
    except BaseException:
        sys.stderr.write(log_path.read_text(errors="replace")[-3000:])
        raise
    finally:
        _stop(proc)
    return stats


def faust_passthrough(
    root: Path, bootstrap: str, source: str, sink: str, n: int, *, table: bool
) -> dict[str, Any]:
    name = "c2" if table else "c"
    env = dict(
        os.environ,
        BENCH_FAUST_ID=f"bench-faust-{name}-{uuid.uuid4().hex[:6]}",
        BENCH_FAUST_BOOTSTRAP=bootstrap,
        BENCH_FAUST_IN=source,
        BENCH_FAUST_OUT=sink,
        BENCH_FAUST_DATADIR=str(root / f"faust-{name}"),
        BENCH_FAUST_PARTITIONS=str(PARTITIONS),
        BENCH_FAUST_TABLE="1" if table else "0",
        PYTHONUNBUFFERED="1",
    )
    argv = [sys.executable, "-m", "bench.faust_passthrough"]
    return run_worker(argv, env, root / f"faust-{name}.log", bootstrap, sink, n)


async def _commit_at_end(bootstrap: str, group: str, topic: str) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        c.assign(tps)
        ends = await c.end_offsets(tps)
        await c.commit({tp: OffsetAndMetadata(off, "") for tp, off in ends.items()})
    finally:
        await c.stop()


def ledger_agent(
    root: Path,
    bootstrap: str,
    preload_cmds: list[tuple[bytes, bytes]],
    n_before: int,
    table_subs: int = 0,
) -> dict[str, Any]:
    """The ledger worker on ``n`` commands; with ``table_subs``, its table first holds that
    many 2-year states (``bench.scale``'s changelog, restored before the timed window)."""
    from billing.kafka_local import free_port
    from streams.ledger.agent import TABLE_NAME

    worker_id = f"bench-ledger-{uuid.uuid4().hex[:6]}"
    # Its group starts where billing.commands ends now (commands preloaded after this call
    # are its input); then "earliest" for what has no committed offset.
    asyncio.run(_commit_at_end(bootstrap, worker_id, billing_topics.COMMANDS))
    if table_subs:
        from bench.scale import Values, seed_changelog

        topic = f"{worker_id}-{TABLE_NAME}-changelog"
        s = asyncio.run(seed_changelog(bootstrap, topic, Values(table_subs)))
        log(f"seeded {table_subs:,} states to {topic} in {s:.1f} s")
    env = dict(
        os.environ,
        BILLING_ENV="test",
        BILLING_KAFKA_BOOTSTRAP=bootstrap,
        BILLING_KAFKA_PARTITIONS=str(PARTITIONS),
        BILLING_WORKER_ID=worker_id,
        BILLING_STATE_DIR=str(root / f"ledger-state-{worker_id}"),
        BILLING_WORKER_WEB_PORT=str(free_port()),
        # No deadline may pass during the run: the sweeper would add redrive events.
        BILLING_PAYMENT_DEADLINE_S="3600",
        BILLING_WORKER_OFFSET_RESET="earliest",
        PYTHONUNBUFFERED="1",
    )
    if preload_cmds:
        s = asyncio.run(preload(bootstrap, billing_topics.COMMANDS, preload_cmds, PARTITIONS))
        log(f"preloaded {len(preload_cmds)} PaySubscription in {s:.1f} s")
    argv = [sys.executable, "-m", "bench.ledger_worker"]
    log_path = root / f"ledger-{worker_id}.log"
    n = n_before + len(preload_cmds)
    return run_worker(argv, env, log_path, bootstrap, billing_topics.EVENTS, n, base=n_before)


# ------------------------------------------------------------------------------ main
def run(
    n_raw: int = 100_000,
    n_faust: int = 40_000,
    only: tuple[str, ...] = VARIANTS,
    table_subs: int = 1_000_000,
) -> Result:
    from billing.kafka_local import ensure_topics

    result = Result("transport")
    started = time.monotonic()
    load0 = loadavg()
    stats: dict[str, dict[str, Any]] = {}
    with workdir("transport") as root, kafka_broker(root) as bootstrap:
        tag = uuid.uuid4().hex[:6]
        raw_in, faust_in = f"bench.{tag}.raw-in", f"bench.{tag}.faust-in"
        warm_in, warm_out = f"bench.{tag}.warm-in", f"bench.{tag}.warm-out"
        outs = {v: f"bench.{tag}.out-{v}" for v in ("a", "b", "c", "c2")}
        asyncio.run(
            ensure_topics(
                bootstrap,
                PARTITIONS,
                topics=[
                    raw_in,
                    faust_in,
                    warm_in,
                    warm_out,
                    *outs.values(),
                    *billing_topics.BILLING_TOPICS,
                ],
            )
        )
        t = time.monotonic()
        cmds = pay_commands(max(n_raw, n_faust), tag)
        recs = records(cmds)
        log(
            f"built {len(recs)} commands in {time.monotonic() - t:.1f} s "
            f"({sum(len(v) for _, v in recs) / len(recs):.0f} bytes each)"
        )
        if {"a", "b"} & set(only):
            s = asyncio.run(preload(bootstrap, raw_in, recs[:n_raw], PARTITIONS))
            log(f"preloaded {n_raw} to {raw_in} in {s:.1f} s")
        if {"c", "c2"} & set(only):
            s = asyncio.run(preload(bootstrap, faust_in, recs[:n_faust], PARTITIONS))
            log(f"preloaded {n_faust} to {faust_in} in {s:.1f} s")
        dt_recs = records(pay_commands(n_faust, f"{tag}-dt")) if "dt" in only else []
        del cmds
        # The broker's JVM is cold: a first, untimed pass of the baseline loop warms it up.
        n_warm = min(n_raw, 30_000)
        asyncio.run(preload(bootstrap, warm_in, recs[:n_warm], PARTITIONS))
        st = asyncio.run(raw_loop(bootstrap, warm_in, warm_out, n_warm, transactional=False))
        log(f"warm-up pass (untimed): {st['rate']:,.0f} msg/s")

        for v in only:
            log(f"running {LABELS[v]} ...")
            if v in ("a", "b"):
                st = asyncio.run(
                    raw_loop(bootstrap, raw_in, outs[v], n_raw, transactional=v == "b")
                )
                st["outputs"] = asyncio.run(count_records(bootstrap, outs[v]))
                st["peak_rss_mb"] = self_peak_rss_mb()
            elif v in ("c", "c2"):
                st = faust_passthrough(root, bootstrap, faust_in, outs[v], n_faust, table=v == "c2")
                st["outputs"] = asyncio.run(count_records(bootstrap, outs[v]))
            else:
                # Each its own commands and group; billing.events holds both runs' events.
                cmds_v = dt_recs if v == "dt" else recs[:n_faust]
                before = asyncio.run(count_records(bootstrap, billing_topics.EVENTS))
                subs = table_subs if v == "dt" else 0
                st = ledger_agent(root, bootstrap, cmds_v, before, subs)
                census = EventCensus()
                st["outputs"] = (
                    asyncio.run(count_records(bootstrap, billing_topics.EVENTS, census.inspect))
                    - before
                )
                st["kinds"], st["distinct"] = census.kinds, len(census.ids)
            stats[v] = st
            log(
                f"{LABELS[v]}: {st['rate']:,.0f} msg/s over {st['seconds']:.1f} s, "
                f"outputs {st['outputs']}"
            )

    base = stats.get("a", {}).get("rate", float("nan"))
    for v in only:
        st = stats[v]
        expect = n_raw if v in ("a", "b") else n_faust
        note = f"n={expect}, {st['seconds']:.1f} s"
        if st["outputs"] != expect:
            note += f", outputs {st['outputs']} (!= {expect})"
        if "startup_s" in st:
            note += f", start-up {st['startup_s']:.1f} s"
        if "kinds" in st:
            note += f", events {st['kinds']}, {st['distinct']} distinct ids"
        if st.get("thirds"):
            note += ", by thirds " + "/".join(f"{r:,.0f}" for r in st["thirds"])
        unit = "commands/s" if v in ("d", "dt") else "msgs/s"
        result.add(
            LABELS[v], st["rate"], unit, ratio=ratio(st["rate"], base), baseline="(a)", note=note
        )
    base_cpu = stats.get("a", {}).get("cpu_us", float("nan"))
    for v in only:
        st = stats[v]
        who = "benchmark process" if v in ("a", "b") else "worker process"
        result.add(
            f"{LABELS[v]}: CPU per message",
            st["cpu_us"],
            "us",
            baseline="(a)",
            ratio=ratio(st["cpu_us"], base_cpu),
            note=f"{who}, timed window",
        )
    # What one free core would sustain: much steadier than the rates when other work
    # shares the machine (the broker's own CPU is not counted).
    for v in only:
        cap = 1e6 / stats[v]["cpu_us"]
        result.add(
            f"{LABELS[v]}: one-core capacity",
            cap,
            "msgs/s",
            baseline="(a)",
            ratio=ratio(cap, 1e6 / base_cpu),
            note="1 / CPU per message",
        )
    for v in only:
        st = stats[v]
        if v in ("c", "c2", "d", "dt"):
            cpu = st.get("cpu_s", float("nan"))
            result.add(
                f"{LABELS[v]}: worker peak RSS",
                st["peak_rss_mb"],
                "MiB",
                note=f"worker CPU {cpu:.1f} s in total",
            )
    result.notes.append(
        "raw loops run in the benchmark process (timed first fetch → last commit); Faust "
        "variants are worker processes (timed first output → last output visible, 50 ms poll)"
    )
    result.notes.append(
        "(dt)'s event census counts (d)'s events too (one topic); its outputs are its own"
    )
    result.notes.append(
        "ledger: one PaySubscription per fresh subscription → one PaymentRequested; "
        "payment deadline 3600 s so the sweeper adds nothing"
    )
    finish(result, load0, started)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-raw", type=int, default=100_000)
    ap.add_argument("--n-faust", type=int, default=40_000)
    ap.add_argument("--only", default=",".join(VARIANTS))
    ap.add_argument(
        "--table-subs", type=int, default=1_000_000, help="states in (dt)'s table before it runs"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    only = tuple(v for v in args.only.split(",") if v)
    bad = set(only) - set(VARIANTS)
    if bad:
        ap.error(f"unknown variants {sorted(bad)}")
    res = run(args.n_raw, args.n_faust, only, args.table_subs)
    report(res, args.json)


if __name__ == "__main__":
    main()
