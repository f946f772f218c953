"""API intake under a steady offered load: ``python -m bench.api_intake``.

The real API process (uvicorn, one process, production settings) with its PostgreSQL and
broker, started by the e2e harness. No Faust worker runs and the relay delay is an hour, so
what is measured is intake alone: auth, validation, the idempotency record and the outbox
row in one transaction, the 202, then the background publish to billing.commands and its
bookkeeping UPDATE.

  baseline: GET /healthz at the same offered rate and duration (no database, no Kafka)
  POST /api/v1/payments: distinct users and Idempotency-Keys, open loop

Latency is measured from each request's scheduled start (open loop, so a slow server shows
up as latency, not as a lower offered rate). The load generator (aiohttp) runs on the same
2 cores as the API, PostgreSQL and the broker; its own lag is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from bench.common import (
    Result,
    cpu_seconds,
    finish,
    loadavg,
    log,
    ratio,
    report,
    tree_cpu_seconds,
)
from bench.load import open_loop, summary
from bench.stack_env import mint_tokens, process_pids, process_rss, running_stack

BODY = {"plan_id": "monthly", "return_url": "https://cinema.example/return"}


Phase = tuple[str, str, float]  # (label, "healthz" | "post", offered rate)


async def scenario(stack: Any, phases: list[Phase], seconds: float) -> dict[str, Any]:
    import aiohttp

    warm = 200
    counts = [int(rate * seconds) for _, _, rate in phases]
    tag = uuid.uuid4().hex[:6]
    t = time.monotonic()
    tokens = mint_tokens(f"intake-{tag}", sum(counts) + warm)
    log(f"minted {len(tokens)} tokens in {time.monotonic() - t:.1f} s")
    base = stack.api_url
    api_pid = stack.api.pid
    pg_pid = process_pids(stack, with_postgres=True).get("postgres (all backends)")
    next_user = [0]

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as http:

        async def healthz(i: int) -> int:
            async with http.get(f"{base}/healthz") as resp:
                await resp.read()
                return resp.status

        async def post(i: int) -> int:
            u = next_user[0]
            next_user[0] += 1  # every request a user and key of its own
            headers = {
                "Authorization": f"Bearer {tokens[u]}",
                "Idempotency-Key": f"{tag}-{u}",
            }
            async with http.post(f"{base}/api/v1/payments", json=BODY, headers=headers) as r:
                await r.read()
                return r.status

        # Warm-up (untimed): connections, the API's pool, the producer, caches.
        await open_loop(100, warm, post)
        await open_loop(200, 400, healthz)
        await asyncio.sleep(1)

        results: dict[str, dict[str, Any]] = {}
        for (label, kind, rate), count in zip(phases, counts, strict=True):
            cpu0 = cpu_seconds(api_pid) if api_pid else float("nan")
            pg0 = tree_cpu_seconds(pg_pid) if pg_pid else float("nan")
            samples, wall = await open_loop(rate, count, healthz if kind == "healthz" else post)
            cpu = (cpu_seconds(api_pid) if api_pid else float("nan")) - cpu0
            pg_cpu = (tree_cpu_seconds(pg_pid) if pg_pid else float("nan")) - pg0
            st: dict[int | str, int] = {}
            for smp in samples:
                key: int | str = smp.status if smp.status else (smp.error or "client error")
                st[key] = st.get(key, 0) + 1
            results[label] = {
                "samples": samples,
                "wall": wall,
                "cpu": cpu,
                "pg_cpu": pg_cpu,
                "statuses": st,
            }
            log(f"{label}: {len(samples)} requests in {wall:.1f} s, statuses {st}")
            # Let the API finish the background publishes (and any backlog) before the next.
            await asyncio.sleep(3)

    return {"results": results, "posts": next_user[0], "tag": tag}


def outbox_counts(stack: Any, tag: str, wait_s: float = 20) -> tuple[int, int]:
    """(outbox rows, rows marked published) for this run's users, once all are published or
    after ``wait_s``: every 202 must have its command row, published by the API right after."""
    deadline = time.monotonic() + wait_s
    while True:
        rows = stack.query(
            "SELECT count(*), count(published_at) FROM command_outbox WHERE user_id LIKE %s",
            f"intake-{tag}-%",
        )
        total, published = int(rows[0][0]), int(rows[0][1])
        if published >= total or time.monotonic() > deadline:
            return total, published
        time.sleep(0.5)


def run(rate: float = 500.0, seconds: float = 15.0, low_rate: float = 100.0) -> Result:
    result = Result("api_intake")
    started = time.monotonic()
    load0 = loadavg()
    phases: list[Phase] = [(f"GET /healthz @{rate:g}/s", "healthz", rate)]
    if low_rate:
        phases.append((f"POST /payments @{low_rate:g}/s", "post", low_rate))
    phases.append((f"POST /payments @{rate:g}/s", "post", rate))
    with running_stack(
        "intake",
        workers=0,
        extra_env={"BILLING_RELAY_DELAY_S": "3600"},
    ) as stack:
        out = asyncio.run(scenario(stack, phases, seconds))
        outbox, published = outbox_counts(stack, out["tag"])
        rss = process_rss(stack)
    res = out["results"]
    base_label = phases[0][0]
    base = summary(res[base_label]["samples"], lambda s: s == 200)
    base_cpu = res[base_label]["cpu"] / max(1, base["sent"])
    for label, kind, r in phases:
        ok = 200 if kind == "healthz" else 202
        stats = summary(res[label]["samples"], lambda s, ok=ok: s == ok)
        for q in ("p50", "p99"):
            v = stats[f"{q}_ms"]
            result.add(
                f"{label} {q}",
                v,
                "ms",
                ratio=ratio(v, base[f"{q}_ms"]),
                baseline=f"healthz {q}",
                note=f"p95 {stats['p95_ms']:.1f} ms, max {stats['max_ms']:.0f} ms"
                if q == "p50"
                else f"client lag p99 {stats['lag_p99_ms']:.1f} ms",
            )
        result.add(
            f"{label} achieved",
            stats["achieved_rps"],
            "req/s",
            ratio=ratio(stats["achieved_rps"], r),
            baseline="offered",
            note=f"{stats['ok']} x {ok} of {stats['sent']} over {seconds:g} s offered",
        )
        result.add(
            f"{label} errors",
            stats["errors"],
            "count",
            note=f"statuses {res[label]['statuses']}",
        )
        cpu = res[label]["cpu"] / max(1, stats["sent"])
        result.add(
            f"{label} API CPU/request",
            cpu * 1000,
            "ms",
            ratio=ratio(cpu, base_cpu),
            baseline="healthz",
            note=f"PostgreSQL {res[label]['pg_cpu'] / max(1, stats['sent']) * 1000:.2f} ms/request",
        )
    result.add(
        "outbox rows marked published",
        published,
        "count",
        note=f"of {outbox} outbox rows for {out['posts']} POSTs (incl. 200 warm-up)",
    )
    result.add("peak RSS api", rss["api"], "MiB")
    result.notes.append(
        "intake only (no Faust worker; relay delay 1 h, so only the API's immediate publish "
        "runs); latency from the scheduled start (open loop)"
    )
    finish(result, load0, started)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--low-rate", type=float, default=100.0, help="a second POST rate (0: none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.rate, args.seconds, args.low_rate)
    report(res, args.json)


if __name__ == "__main__":
    main()
