"""Run every benchmark, one at a time, and print a summary table: ``make bench`` or
``python -m bench.run_all [--quick] [--only NAME,…]`` (names: ``BENCHES``)
(clickhouse and recon_batch are bench/bench_clickhouse.py and bench/bench_recon_batch.py, each
run in a process of its own).

Each benchmark is also runnable alone (``python -m bench.<name> --help``). Figures are ratios
against a baseline measured in the same run; absolute numbers depend on the machine and on
whatever else runs on it (the load average is printed with each benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

from bench.common import (
    REPO,
    Result,
    Row,
    loadavg,
    log,
    machine_line,
    print_result,
    ratio,
    table,
)

BENCHES = (
    "machine",
    "transport",
    "e2e_latency",
    "api_intake",
    "clickhouse",
    "recon_batch",
    "recon_stream",
)


# Headline figures for the summary, per benchmark.
def _headline(bench: str, name: str) -> bool:
    if bench == "machine":
        return name.startswith(("decide: pay", "agent hot path"))
    if bench == "transport":
        return ":" not in name or "capacity" in name or name.startswith("(d) ledger")
    if bench == "e2e_latency":
        return "peak RSS" not in name or "worker" in name
    if bench == "api_intake":
        return name.endswith(("p50", "p99", "achieved", "errors"))
    if bench == "clickhouse":
        return "baseline" not in name
    if bench == "recon_batch":
        return name.startswith(("load_report", "classify", "batch total", "peak RSS"))
    return True


def _runner(name: str, quick: bool) -> Callable[[], Result]:
    if name == "machine":
        from bench import machine

        return lambda: machine.run(10_000 if quick else 20_000)
    if name == "transport":
        from bench import transport

        if quick:
            return lambda: transport.run(n_raw=30_000, n_faust=10_000)
        return lambda: transport.run(n_raw=100_000, n_faust=40_000)
    if name == "e2e_latency":
        from bench import e2e_latency

        if quick:
            return lambda: e2e_latency.run(rate=20, count=100, idle_n=10)
        return lambda: e2e_latency.run(rate=20, count=400, idle_n=20)
    if name == "api_intake":
        from bench import api_intake

        if quick:
            return lambda: api_intake.run([100, 500], seconds=5, capacity=0)
        return lambda: api_intake.run([100, 500, 1000], seconds=10)
    if name == "clickhouse":
        args = ["--events", "20000", "--history", "1000000"] if quick else []
        return lambda: subprocess_bench("bench.bench_clickhouse", "clickhouse", args)
    if name == "recon_stream":
        from bench import bench_recon_stream

        return lambda: bench_recon_stream.run(100_000 if quick else 1_000_000)
    if name == "recon_batch":
        args = ["--lines", "100000"] if quick else []
        return lambda: subprocess_bench("bench.bench_recon_batch", "recon_batch", args)
    raise ValueError(name)


def subprocess_bench(module: str, name: str, args: list[str]) -> Result:
    """A benchmark of the ClickHouse store in a process of its own (chdb allows one data
    directory per process). Its JSON rows become this table's rows."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", module, "--json", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr[-2000:]
        raise RuntimeError(f"{module} exited {proc.returncode}: {tail}")
    data = json.loads(proc.stdout[proc.stdout.index("{") :])
    result = Result(name)
    for r in data["rows"]:
        note = r.get("note") or ""
        if r.get("cpu_s") is not None:
            note = f"cpu {r['cpu_s']:.2f} s" + (f", {note}" if note else "")
        result.add(
            r["name"],
            float(r["value"]),
            r["unit"],
            ratio=r.get("ratio"),
            baseline=r.get("vs") or "",
            note=note,
        )
    load = data.get("load")
    load_text = f"{load:.2f}" if isinstance(load, int | float) else "n/a"
    path = module.replace(".", "/") + ".py"
    result.notes.append(f"{path}; 1-min load average at start {load_text}")
    result.seconds = time.monotonic() - started
    return result


def headline_rows(results: dict[str, Result]) -> list[Row]:
    return [r for res in results.values() for r in res.rows if _headline(res.bench, r.name)]


def derived_rows(results: dict[str, Result]) -> list[Row]:
    """Ratios across benchmarks: what Faust and Kafka cost over the pure ledger logic."""
    out: list[Row] = []
    m, t = results.get("machine"), results.get("transport")
    if m is None or t is None:
        return out
    hot = m.get("agent hot path (no Faust), fresh subscription")
    agent = t.get("(d) ledger agent")
    agent_cpu = t.get("(d) ledger agent: CPU per message")
    if hot and agent:
        out.append(
            Row(
                "derived",
                "ledger agent rate / pure hot path rate",
                agent.value,
                "commands/s",
                ratio(agent.value, hot.value),
                "hot path",
                f"hot path {hot.value:,.0f}/s in-process",
            )
        )
    if hot and agent_cpu:
        hot_us = 1e6 / hot.value
        out.append(
            Row(
                "derived",
                "ledger worker CPU per command / hot path CPU",
                agent_cpu.value,
                "us",
                ratio(agent_cpu.value, hot_us),
                "hot path",
                f"hot path {hot_us:.1f} us; the rest is Faust, aiokafka and the table",
            )
        )
    return out


def settle(limit: float, max_wait: float) -> None:
    """Wait for other work on the machine to calm down (the benchmarks share 2 cores)."""
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(5)
    if os.getloadavg()[0] >= limit:
        log(f"load average still {loadavg()} after {max_wait:.0f} s; running anyway")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(BENCHES))
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="LOAD",
        help="before each benchmark wait (up to --settle-max s) for the 1-min load average "
        "to fall below LOAD; 0 (default) does not wait",
    )
    ap.add_argument("--settle-max", type=float, default=300.0)
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    bad = set(names) - set(BENCHES)
    if bad:
        ap.error(f"unknown benchmarks {sorted(bad)}; choose from {BENCHES}")

    print(f"machine: {machine_line()}")
    started = time.monotonic()
    results: dict[str, Result] = {}
    failed: dict[str, str] = {}
    for name in names:
        if args.settle:
            settle(args.settle, args.settle_max)
        log(f"=== {name} === (load average {loadavg()})")
        try:
            res = _runner(name, args.quick)()
        except Exception as exc:
            traceback.print_exc()
            failed[name] = f"{type(exc).__name__}: {exc}"
            continue
        results[name] = res
        print_result(res)

    rows = headline_rows(results) + derived_rows(results)
    print(f"\n== summary ({time.monotonic() - started:.0f} s; {machine_line()}) ==")
    if rows:
        print(table(rows, with_bench=True))
    for name, err in failed.items():
        print(f"  FAILED {name}: {err}")


if __name__ == "__main__":
    main()
