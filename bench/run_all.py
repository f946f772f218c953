"""Run every benchmark, one at a time, and print a summary table: ``make bench`` or
``python -m bench.run_all [--quick] [--only machine,transport,e2e_latency,api_intake]``.

Each benchmark is also runnable alone (``python -m bench.<name> --help``). Figures are ratios
against a baseline measured in the same run; absolute numbers depend on the machine and on
whatever else runs on it (the load average is printed with each benchmark).
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable

from bench.common import Result, Row, log, machine_line, print_result, ratio, table

BENCHES = ("machine", "transport", "e2e_latency", "api_intake")


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
            return lambda: api_intake.run(rate=500, seconds=5, low_rate=100)
        return lambda: api_intake.run(rate=500, seconds=15, low_rate=100)
    raise ValueError(name)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(BENCHES))
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
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
        log(f"=== {name} ===")
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
