"""API intake under a steady offered load: ``python -m bench.api_intake``.

The real API (uvicorn, 1 and then ``--workers`` processes, production settings) with its
PostgreSQL, broker and the provider emulator, started by the e2e harness. No Faust worker runs
and the relay delay is an hour, so what is measured is intake alone: auth, validation, the
idempotency record and the outbox row in one transaction, the 202, then the batched publish to
billing.commands and its bookkeeping UPDATE. Every figure the issue asks, in one run:

  baselines (per API process count): GET /healthz at the top rate (no database, no Kafka), and
    POST /bare of bench/bare_intake.py (bare FastAPI + one psycopg INSERT, same processes)
    at each rate, right before the POSTs at that rate
  POST /api/v1/payments at each --rates, with 1 and with --workers API processes: achieved
    rate, p50/p99, API and PostgreSQL CPU per request
  overload (--workers processes): 3x capacity (``--capacity``, or the best rate measured above):
    goodput against capacity, the latency of refusals, answers slower than --bound-s, refusals
    without Retry-After or the error shape; then recovery: half the capacity offered at once
  webhook redelivery burst: --burst notifications for --burst-objects provider payments
    (already succeeded), all at once: provider re-reads per object

Latency is measured from each request's scheduled start (open loop, so a slow server shows
up as latency, not as a lower offered rate). The load generator (aiohttp) runs on the same
2 cores as the API, PostgreSQL and the broker; its own lag is reported, and so is the load
average before and after each phase (the box may be shared: compare the ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    Result,
    finish,
    loadavg,
    log,
    percentile,
    ratio,
    report,
    tree_cpu_seconds,
)
from bench.load import Sample, open_loop, summary
from bench.stack_env import mint_tokens, process_pids, process_rss, running_stack

BODY = {"plan_id": "monthly", "return_url": "https://cinema.example/return"}
GOAL_P99_MS = 50.0
GOAL_RATE = 500.0


@dataclass
class Phase:
    label: str
    kind: str  # "healthz" | "bare" | "post" | "webhook"
    rate: float
    count: int
    pause_s: float = 3.0  # after it: let the API finish its background publishes
    # filled in by the run
    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = float("nan")
    pg_cpu: float = float("nan")
    load: str = ""

    @property
    def ok(self) -> int:
        return 200 if self.kind in ("healthz", "webhook") else 202

    def statuses(self) -> dict[int | str, int]:
        st: dict[int | str, int] = {}
        for s in self.samples:
            key: int | str = s.status if s.status else (s.error or "client error")
            st[key] = st.get(key, 0) + 1
        return st


@dataclass
class Refusals:
    """What the client saw of the refusals: by code, and any not in the promised form."""

    codes: dict[str, int] = field(default_factory=dict)
    bad_form: int = 0  # no Retry-After, or not {"error": {"code", "message", "details"}}


def _refusal_ok(headers: Any, body: bytes) -> tuple[str, bool]:
    try:
        err = json.loads(body)["error"]
        code = str(err["code"])
        shaped = {"code", "message", "details"} <= set(err)
    except (ValueError, KeyError, TypeError):
        return "?", False
    retry = headers.get("Retry-After", "")
    return code, shaped and retry.isdigit() and int(retry) >= 1


async def run_phases(
    stack: Any, phases: list[Phase], refusals: Refusals, *, bare_url: str = "", warm: int = 200
) -> None:
    """Run ``phases`` in order against the stack's API (its processes as they are now), after
    ``warm`` untimed POSTs (and healthz and bare, when a bare server is given)."""
    import aiohttp

    tag = uuid.uuid4().hex[:6]
    posts = sum(p.count for p in phases if p.kind == "post") + warm
    t = time.monotonic()
    tokens = mint_tokens(f"intake-{tag}", posts)
    log(f"minted {len(tokens)} tokens in {time.monotonic() - t:.1f} s")
    base = stack.api_url
    api_pid = stack.api.pid
    pg_pid = process_pids(stack, with_postgres=True).get("postgres (all backends)")
    next_user = [0]

    # Idle connections are dropped by the client after 1 s, before uvicorn's keep-alive
    # timeout (5 s) closes them under a request (which aiohttp reports as a disconnect).
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=1.0),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as http:

        async def healthz(i: int) -> int:
            async with http.get(f"{base}/healthz") as resp:
                await resp.read()
                return resp.status

        async def bare(i: int) -> int:
            async with http.post(f"{bare_url}/bare", json=BODY) as r:
                await r.read()
                return r.status

        async def post(i: int) -> int:
            u = next_user[0]
            next_user[0] += 1  # every request a user and key of its own
            headers = {
                "Authorization": f"Bearer {tokens[u]}",
                "Idempotency-Key": f"{tag}-{u}",
            }
            async with http.post(f"{base}/api/v1/payments", json=BODY, headers=headers) as r:
                body = await r.read()
                if r.status >= 400:  # which refusal: overloaded, rate_limited, database_...
                    code, good = _refusal_ok(r.headers, body)
                    key = f"{r.status} {code}"
                    refusals.codes[key] = refusals.codes.get(key, 0) + 1
                    refusals.bad_form += 0 if good else 1
                return r.status

        # Warm-up (untimed): connections, every process's pool, the producer, caches.
        if warm:
            await open_loop(100, warm, post)
            await open_loop(200, 400, healthz)
            if bare_url:
                await open_loop(200, 400, bare)
            await asyncio.sleep(1)
        kinds: dict[str, Callable[[int], Awaitable[int]]] = {
            "healthz": healthz,
            "bare": bare,
            "post": post,
        }
        for ph in phases:
            cpu0 = tree_cpu_seconds(api_pid) if api_pid else float("nan")
            pg0 = tree_cpu_seconds(pg_pid) if pg_pid else float("nan")
            load0 = loadavg().split()[0]
            ph.samples, ph.wall = await open_loop(ph.rate, ph.count, kinds[ph.kind])
            ph.cpu = (tree_cpu_seconds(api_pid) if api_pid else float("nan")) - cpu0
            ph.pg_cpu = (tree_cpu_seconds(pg_pid) if pg_pid else float("nan")) - pg0
            ph.load = f"{load0}→{loadavg().split()[0]}"
            log(f"{ph.label}: {len(ph.samples)} requests in {ph.wall:.1f} s, {ph.statuses()}")
            await asyncio.sleep(ph.pause_s)


# ------------------------------------------------------------------------ webhook burst
def seed_provider_payments(stack: Any, n: int) -> list[str]:
    """``n`` payments in the emulator, already succeeded, carrying our metadata; the emulator
    sends no notifications of its own meanwhile. Returns their provider ids."""
    import httpx

    from billing.config import Settings
    from schemas.ids import command_id_for, payment_id_for, subscription_id_for

    stack.control.configure(webhook_url="")
    settings = Settings()
    auth = (settings.yookassa_shop_id, settings.yookassa_secret_key.get_secret_value())
    ids = []
    with httpx.Client(base_url=f"{stack.emulator_url}/v3", auth=auth, timeout=10) as http:
        for i in range(n):
            user = f"burst-{uuid.uuid4().hex[:8]}-{i}"
            body = {
                "amount": {"value": "299.00", "currency": "RUB"},
                "capture": True,
                "confirmation": {"type": "redirect", "return_url": BODY["return_url"]},
                "description": "Monthly plan",
                "metadata": {
                    "payment_id": payment_id_for(command_id_for(user, "k")),
                    "subscription_id": subscription_id_for(user),
                },
            }
            resp = http.post("/payments", json=body, headers={"Idempotence-Key": user})
            resp.raise_for_status()
            ids.append(str(resp.json()["id"]))
    for pid in ids:
        stack.control.confirm(pid, "succeed")
    return ids


def provider_reads(stack: Any) -> int:
    return int(stack.control.stats()["requests"].get("payments.get", 0))


async def webhook_burst(stack: Any, ids: list[str], per_object: int, rate: float) -> Phase:
    import aiohttp

    notes = [pid for pid in ids for _ in range(per_object)]
    random.Random(14).shuffle(notes)
    ph = Phase(
        f"webhook burst: {len(notes)} notifications for {len(ids)} payments",
        "webhook",
        rate,
        len(notes),
    )
    url = f"{stack.api_url}/api/v1/webhooks/yookassa"
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=1.0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> int:
            body = {"type": "notification", "event": "payment.succeeded"}
            async with http.post(url, json={**body, "object": {"id": notes[i]}}) as r:
                await r.read()
                return r.status

        ph.samples, ph.wall = await open_loop(rate, len(notes), one)
    return ph


# ------------------------------------------------------------------------------ servers
@contextlib.contextmanager
def bare_server(root: Path, dsn: str, workers: int) -> Iterator[str]:
    """bench/bare_intake.py under uvicorn on its own port: the baseline's server."""
    from billing.kafka_local import free_port
    from billing.processes import ManagedProcess, http_ok

    port = free_port()
    env = dict(os.environ, BENCH_BARE_DSN=dsn)
    args = ["uvicorn", "bench.bare_intake:app", "--port", str(port), "--no-access-log"]
    args += ["--workers", str(workers), "--log-level", "warning"]
    proc = ManagedProcess.python("bare", args, log_path=root / "bare.log", env=env)
    proc.start()
    try:
        url = f"http://127.0.0.1:{port}"
        proc.wait_ready(http_ok(f"{url}/docs"))
        yield url
    finally:
        proc.stop()


def restart_api(stack: Any, workers: int) -> None:
    """The stack's API again, now as ``workers`` processes (same port, database, broker)."""
    from billing.processes import ManagedProcess, http_ok

    stack.api.stop()
    env = dict(stack.env, BILLING_API_WORKERS=str(workers))
    stack.api = ManagedProcess.python("api", ["api"], log_path=stack.api.log_path, env=env)
    stack.api.start()
    stack.api.wait_ready(http_ok(f"{stack.api_url}/healthz"))


def outbox_counts(stack: Any, wait_s: float = 20) -> tuple[int, int]:
    """(outbox rows, rows marked published), once all are published or after ``wait_s``:
    every 202 must have its command row, published by the API right after."""
    deadline = time.monotonic() + wait_s
    while True:
        rows = stack.query(
            "SELECT count(*), count(published_at) FROM command_outbox WHERE user_id LIKE %s",
            "intake-%",
        )
        total, published = int(rows[0][0]), int(rows[0][1])
        if published >= total or time.monotonic() > deadline:
            return total, published
        time.sleep(0.5)


# ------------------------------------------------------------------------------ figures
def add_phase_rows(
    result: Result, ph: Phase, bare: Phase, healthz: Phase, tag: str
) -> dict[str, float]:
    stats = summary(ph.samples, ph.ok.__eq__)
    bstats = summary(bare.samples, bare.ok.__eq__)
    hstats = summary(healthz.samples, healthz.ok.__eq__)
    label = f"{tag} {ph.label}"
    for q in ("p50", "p99"):
        v = stats[f"{q}_ms"]
        note = (
            f"p95 {stats['p95_ms']:.1f} ms, max {stats['max_ms']:.0f} ms; "
            f"healthz {hstats['p50_ms']:.1f} ms; load {ph.load}"
            if q == "p50"
            else f"client lag p99 {stats['lag_p99_ms']:.1f} ms; healthz {hstats['p99_ms']:.1f} ms"
        )
        if ph.kind == "post" and q == "p99":
            note += f"; goal <= {GOAL_P99_MS:g} ms"
        result.add(
            f"{label} {q}",
            v,
            "ms",
            ratio=ratio(v, bstats[f"{q}_ms"]),
            baseline=f"bare {q}",
            note=note,
        )
    result.add(
        f"{label} achieved",
        stats["achieved_rps"],
        "req/s",
        ratio=ratio(stats["achieved_rps"], ph.rate),
        baseline="offered",
        note=f"{stats['ok']} x {ph.ok} of {stats['sent']}; {ph.statuses()}",
    )
    if ph.kind in ("post", "healthz"):
        cpu = ph.cpu / max(1, stats["sent"])
        base_cpu = healthz.cpu / max(1, len(healthz.samples))
        result.add(
            f"{label} API CPU/request",
            cpu * 1000,
            "ms",
            ratio=ratio(cpu, base_cpu),
            baseline="healthz",
            note=f"PostgreSQL {ph.pg_cpu / max(1, stats['sent']) * 1000:.2f} ms/request",
        )
    return stats


def run(
    rates: list[float],
    seconds: float = 10.0,
    workers: int = 2,
    capacity: float | None = None,
    *,
    single: bool = True,
    bound_s: float = 1.0,
    burst: int = 1000,
    burst_objects: int = 100,
) -> Result:
    """``capacity`` None: the best 202 rate measured with ``workers`` processes; 0: no
    overload phase. ``single``: the same phases with one API process first."""
    result = Result("api_intake")
    started = time.monotonic()
    load0 = loadavg()
    top = max(rates)
    counts = [1, workers] if single and workers != 1 else [workers]
    refusals = Refusals()
    best: dict[int, float] = {}
    with running_stack(
        "intake",
        workers=0,
        extra_env={"BILLING_RELAY_DELAY_S": "3600", "BILLING_API_WORKERS": str(counts[0])},
    ) as stack:
        for n in counts:
            if n != counts[0]:
                restart_api(stack, n)
            tag = f"[{n} proc]"
            # The bare baseline at each rate, right before the POSTs at that rate: the two
            # see the same machine (the ratio is the intake's cost over a bare insert).
            healthz = Phase(f"GET /healthz @{top:g}/s", "healthz", top, int(top * seconds))
            phases = [healthz]
            pairs = []
            for r in rates:
                bare = Phase(f"POST /bare @{r:g}/s", "bare", r, int(r * seconds))
                post = Phase(f"POST /payments @{r:g}/s", "post", r, int(r * seconds))
                phases += [bare, post]
                pairs.append((bare, post))
            with bare_server(stack.root, stack.dsn, n) as bare_url:
                asyncio.run(run_phases(stack, phases, refusals, bare_url=bare_url))
            add_phase_rows(result, healthz, pairs[-1][0], healthz, tag)
            for bare, post in pairs:
                add_phase_rows(result, bare, bare, healthz, tag)
                stats = add_phase_rows(result, post, bare, healthz, tag)
                best[n] = max(best.get(n, 0.0), stats["achieved_rps"])
        if capacity is None or capacity > 0:
            cap = capacity or best[workers]
            overload_phases(result, stack, cap, seconds, bound_s, refusals, workers)
        if burst:
            burst_rows(result, stack, burst, burst_objects, workers)
        outbox, published = outbox_counts(stack)
        rss = process_rss(stack)
    for n in counts:
        result.add(
            f"[{n} proc] capacity (best POST achieved)",
            best[n],
            "req/s",
            ratio=ratio(best[n], GOAL_RATE),
            baseline="goal 500/s",
            note="stretch goal 1,000/s",
        )
    result.add(
        "refusals not in the promised form",
        refusals.bad_form,
        "count",
        note=f"no Retry-After or not the error shape; refusals by code {refusals.codes}",
    )
    result.add(
        "outbox rows marked published",
        published,
        "count",
        note=f"of {outbox} outbox rows (every 202, warm-ups included)",
    )
    result.add("peak RSS api (supervisor)", rss["api"], "MiB")
    result.notes.append(
        f"intake only (no Faust worker; relay delay 1 h, so only the API's immediate batched "
        f"publish runs); API processes {counts}; latency from the scheduled start (open loop); "
        "the load generator shares the 2 cores; 'load a→b' is the 1-min load average "
        "before and after a phase"
    )
    finish(result, load0, started)
    return result


def overload_phases(
    result: Result,
    stack: Any,
    cap: float,
    seconds: float,
    bound_s: float,
    refusals: Refusals,
    workers: int,
) -> None:
    """3x ``cap`` offered, then at once half of ``cap``: goodput, refusal latency, the bound,
    recovery."""
    over = Phase(
        f"POST /payments @{3 * cap:.0f}/s (3x capacity)",
        "post",
        3 * cap,
        int(3 * cap * seconds),
        pause_s=0.0,
    )
    after = Phase(f"POST /payments @{cap / 2:.0f}/s right after", "post", cap / 2, int(cap / 2 * 5))
    asyncio.run(run_phases(stack, [over, after], refusals, warm=0))
    tag = f"[{workers} proc]"
    stats = summary(over.samples, lambda s: s == 202)
    result.add(
        "overload goodput",
        stats["achieved_rps"],
        "req/s",
        ratio=ratio(stats["achieved_rps"], cap),
        baseline="capacity",
        note=f"{tag} capacity {cap:.0f}/s, offered {3 * cap:.0f}/s; goal >= 0.9x; "
        f"{over.statuses()}; load {over.load}",
    )
    refused = [s.latency * 1000 for s in over.samples if s.status in (429, 503)]
    result.add(
        "overload refusal p99",
        percentile(refused, 99),
        "ms",
        note=f"{len(refused)} refusals, p50 {percentile(refused, 50):.1f} ms, "
        f"max {max(refused, default=float('nan')):.0f} ms; admitted p50 {stats['p50_ms']:.0f} "
        f"ms, p99 {stats['p99_ms']:.0f} ms",
    )
    slow = [s for s in over.samples if s.latency > bound_s]
    worst = max((s.latency for s in over.samples), default=float("nan"))
    result.add(
        f"overload answers slower than {bound_s:g} s",
        len(slow),
        "count",
        ratio=ratio(len(slow), len(over.samples)),
        baseline="all",
        note=f"goal 0; slowest {worst * 1000:.0f} ms; no answer (client error) "
        f"{sum(1 for s in over.samples if not s.status)}",
    )
    rec = summary(after.samples, lambda s: s == 202)
    first = (
        [s for s in after.samples if s.due - after.samples[0].due < 1.0] if after.samples else []
    )
    first_stats = summary(first, lambda s: s == 202) if first else rec
    result.add(
        "recovery p99 (load dropped to capacity/2)",
        rec["p99_ms"],
        "ms",
        note=f"{rec['ok']} x 202 of {rec['sent']}; first second p99 "
        f"{first_stats['p99_ms']:.0f} ms ({first_stats['ok']} of {first_stats['sent']} 202); "
        f"p50 {rec['p50_ms']:.1f} ms; {after.statuses()}",
    )


def burst_rows(result: Result, stack: Any, n: int, objects: int, workers: int) -> None:
    ids = seed_provider_payments(stack, objects)
    reads0 = provider_reads(stack)
    ph = asyncio.run(webhook_burst(stack, ids, max(1, n // objects), rate=1000.0))
    reads = provider_reads(stack) - reads0
    stats = summary(ph.samples, lambda s: s == 200)
    result.add(
        "webhook burst provider re-reads per object",
        reads / objects,
        "reads",
        ratio=ratio(reads, len(ph.samples)),
        baseline="notifications",
        note=f"{reads} reads for {len(ph.samples)} notifications of {objects} payments "
        f"(at 1,000/s); goal 1 per object per API process ({workers}); {ph.statuses()}; "
        f"p99 {stats['p99_ms']:.0f} ms",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="100,500,1000", help="POST rates offered, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2, help="API processes (BILLING_API_WORKERS)")
    ap.add_argument("--no-single", action="store_true", help="skip the 1-process phases")
    ap.add_argument(
        "--capacity",
        type=float,
        default=None,
        help="3x is offered; default: the best rate measured; 0: no overload phase",
    )
    ap.add_argument("--bound-s", type=float, default=1.0, help="no answer may take longer")
    ap.add_argument("--burst", type=int, default=1000, help="webhook notifications (0: none)")
    ap.add_argument("--burst-objects", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    res = run(
        rates,
        args.seconds,
        args.workers,
        args.capacity,
        single=not args.no_single,
        bound_s=args.bound_s,
        burst=args.burst,
        burst_objects=args.burst_objects,
    )
    report(res, args.json)


if __name__ == "__main__":
    main()
