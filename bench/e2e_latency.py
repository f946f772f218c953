"""End-to-end latency on the whole stack: ``python -m bench.e2e_latency``.

Real processes (broker, PostgreSQL, emulator, API, one Faust worker with the ledger, gateway
and projection agents), production timings. The emulator confirms every payment at once
(auto_confirm="succeed", delay 0), so a payment goes: POST 202 → outbox → billing.commands →
ledger → PaymentRequested → gateway → emulator create (pending) → PaymentObserved → ledger →
projection; emulator confirms → webhook → API re-reads → provider event → ledger →
PaymentSucceeded → projection → ``payments.status = 'succeeded'`` in PostgreSQL.

Latency = from the 202 answer to the payment's row showing ``succeeded`` (the table is polled
every 20 ms for all payments in flight, so figures carry up to ~20 ms of polling error).

  baseline: payments one at a time on the idle stack (p50)
  load:     ``--count`` payments at a steady ``--rate`` (open loop), distinct users and keys;
            p50/p95/p99 accept → succeeded, and accept → pending (provider object created)
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
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
from bench.load import open_loop
from bench.stack_env import mint_tokens, process_pids, process_rss, running_stack

BODY = {"plan_id": "monthly", "return_url": "https://cinema.example/return"}
POLL_S = 0.02
TERMINAL = ("succeeded", "canceled")


class Tracker:
    """Accept times of payments, and when each was first seen pending and terminal."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.accepted: dict[str, float] = {}
        self.pending: dict[str, float] = {}
        self.terminal: dict[str, tuple[float, str]] = {}
        self.terminal_wall: dict[str, float] = {}
        self.stop = asyncio.Event()

    def open(self) -> list[str]:
        return [p for p in self.accepted if p not in self.terminal]

    async def poll(self) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                ids = self.open()
                if ids:
                    cur = await conn.execute(
                        "SELECT payment_id::text, status FROM payments"
                        " WHERE payment_id = ANY(%s::uuid[])"
                        " AND status IN ('pending', 'waiting_for_capture', 'succeeded',"
                        " 'canceled')",
                        (ids,),
                    )
                    seen, seen_wall = time.monotonic(), time.time()
                    for pid, status in await cur.fetchall():
                        self.pending.setdefault(pid, seen)
                        if status in TERMINAL:
                            self.terminal[pid] = (seen, status)
                            self.terminal_wall[pid] = seen_wall
                await asyncio.sleep(POLL_S)

    async def wait_all(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while self.open() and time.monotonic() < deadline:  # noqa: ASYNC110 (polls the DB)
            await asyncio.sleep(0.1)

    def latencies(self, ids: list[str] | None = None) -> dict[str, list[float]]:
        ids = ids if ids is not None else list(self.accepted)
        done = [p for p in ids if p in self.terminal and self.terminal[p][1] == "succeeded"]
        return {
            "succeeded": [(self.terminal[p][0] - self.accepted[p]) * 1000 for p in done],
            "pending": [
                (self.pending[p] - self.accepted[p]) * 1000 for p in ids if p in self.pending
            ],
        }


async def scenario(stack: Any, rate: float, count: int, idle_n: int) -> dict[str, Any]:
    import aiohttp

    tag = uuid.uuid4().hex[:6]
    n_total = idle_n + count + 10
    tokens = mint_tokens(f"e2e-{tag}", n_total)
    tracker = Tracker(stack.dsn)
    poller = asyncio.create_task(tracker.poll())
    url = f"{stack.api_url}/api/v1/payments"
    statuses: dict[int, int] = {}
    owner: dict[str, int] = {}

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    ) as http:

        async def pay(i: int) -> int:
            headers = {"Authorization": f"Bearer {tokens[i]}", "Idempotency-Key": str(uuid.uuid4())}
            async with http.post(url, json=BODY, headers=headers) as resp:
                body = await resp.json()
                if resp.status == 202:
                    tracker.accepted[body["payment_id"]] = time.monotonic()
                    owner[body["payment_id"]] = i
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                return resp.status

        # Warm-up: every process's first requests pay for imports, JIT and connections.
        for i in range(5):
            await pay(n_total - 1 - i)
        await tracker.wait_all(60)

        idle_ids: list[str] = []
        for i in range(idle_n):
            before = set(tracker.accepted)
            await pay(i)
            (pid,) = set(tracker.accepted) - before
            idle_ids.append(pid)
            await tracker.wait_all(30)

        before = set(tracker.accepted)
        pids = process_pids(stack, with_postgres=True)
        cpu0 = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
        t_load = time.monotonic()
        samples, wall = await open_loop(rate, count, lambda i: pay(idle_n + i))
        load_ids = [p for p in tracker.accepted if p not in before]
        await tracker.wait_all(120)
        busy_s = time.monotonic() - t_load
        cpu = {name: tree_cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        tracker.stop.set()
        await poller

        # Cross-check through the API: a sample of payments reads back as succeeded.
        checked = 0
        for pid in load_ids[:: max(1, len(load_ids) // 20)]:
            headers = {"Authorization": f"Bearer {tokens[owner[pid]]}"}
            async with http.get(f"{url}/{pid}", headers=headers) as resp:
                if resp.status == 200 and (await resp.json())["status"] == "succeeded":
                    checked += 1

    post_ms = [s.service * 1000 for s in samples if s.status == 202]
    return {
        "idle": tracker.latencies(idle_ids),
        "load": tracker.latencies(load_ids),
        "accepted": len(load_ids),
        "not_terminal": len([p for p in load_ids if p not in tracker.terminal]),
        "canceled": len(
            [p for p in load_ids if p in tracker.terminal and tracker.terminal[p][1] != "succeeded"]
        ),
        "post_p50": percentile(post_ms, 50),
        "post_p99": percentile(post_ms, 99),
        "statuses": statuses,
        "wall": wall,
        "checked": checked,
        "check_of": len(load_ids[:: max(1, len(load_ids) // 20)]),
        "cpu": cpu,
        "busy_s": busy_s,
        "stages": stages(stack, load_ids, tracker.terminal_wall),
    }


STAGES = (
    "accept → command published (API)",
    "PaymentRequested → provider answer at gateway",
    "provider pending → succeeded observed (emulator, webhook, API re-read)",
    "PaymentSucceeded observed → visible in PostgreSQL",
)


def stages(stack: Any, ids: list[str], visible_wall: dict[str, float]) -> dict[str, list[float]]:
    """Where the time goes, per payment (ms), from timestamps the system records itself:
    the outbox row (created_at, published_at: database clock) and the events' occurred_at
    (PaymentRequested: the command's issue time at intake; PaymentPending: when the gateway
    got the provider's answer; PaymentSucceeded: when the webhook's re-read observed it)."""
    out: dict[str, list[float]] = {name: [] for name in STAGES}
    if not ids:
        return out
    rows = stack.query(
        "SELECT payment_id::text, extract(epoch FROM published_at - created_at) * 1000"
        " FROM command_outbox WHERE payment_id = ANY(%s::uuid[]) AND published_at IS NOT NULL",
        ids,
    )
    out[STAGES[0]] = [float(ms) for _, ms in rows]
    rows = stack.query(
        "SELECT coalesce(body->>'payment_id', body->'request'->>'payment_id'), event_type,"
        " extract(epoch FROM occurred_at) FROM subscription_events"
        " WHERE event_type IN ('PaymentRequested', 'PaymentPending', 'PaymentSucceeded')"
        " AND coalesce(body->>'payment_id', body->'request'->>'payment_id') = ANY(%s)",
        ids,
    )
    at: dict[str, dict[str, float]] = {}
    for pid, kind, epoch in rows:
        at.setdefault(pid, {})[kind] = float(epoch)
    for pid, t in at.items():
        req, pend = t.get("PaymentRequested"), t.get("PaymentPending")
        ok = t.get("PaymentSucceeded")
        if req is not None and pend is not None:
            out[STAGES[1]].append((pend - req) * 1000)
        if pend is not None and ok is not None:
            out[STAGES[2]].append((ok - pend) * 1000)
        if ok is not None and pid in visible_wall:
            out[STAGES[3]].append((visible_wall[pid] - ok) * 1000)
    return out


def _idle_cpu(stack: Any, seconds: float) -> dict[str, float]:
    """CPU seconds per second of each process on the idle stack (timers, heartbeats, polls):
    the fixed cost that a higher rate spreads over more payments."""
    pids = process_pids(stack, with_postgres=True)
    cpu0 = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: (tree_cpu_seconds(pid) - cpu0[name]) / seconds for name, pid in pids.items()}


def run(
    rate: float = 20.0, count: int = 400, idle_n: int = 20, rates: tuple[float, ...] = ()
) -> Result:
    """One load phase at ``rate``, or one per ``rates`` on the same stack (the idle baseline
    before the first); CPU per payment per process at each rate, and the idle stack's CPU."""
    result = Result("e2e_latency")
    started = time.monotonic()
    load0 = loadavg()
    phases = rates or (rate,)
    outs: list[tuple[float, dict[str, Any]]] = []
    with running_stack("e2e") as stack:
        stack.control.configure(auto_confirm="succeed", auto_confirm_delay_s=0)
        idle_cpu = _idle_cpu(stack, 10.0) if rates else {}
        for i, r in enumerate(phases):
            n = count if not rates else max(count, int(r * 20))
            outs.append((r, asyncio.run(scenario(stack, r, n, idle_n if i == 0 else 0))))
        rss = process_rss(stack)
        stats = stack.control.stats()
        provider_payments = sum(stats.get("by_payment_id", {}).values())
    idle = outs[0][1]["idle"]["succeeded"]
    base = percentile(idle, 50)
    result.add(
        "idle, one at a time: accept → succeeded p50",
        base,
        "ms",
        ratio=1.0,
        baseline="idle p50",
        note=f"n={len(idle)}, p95 {percentile(idle, 95):.0f} ms",
    )
    for name, per_s in idle_cpu.items():
        result.add(f"idle stack CPU, {name}", per_s * 1000, "ms/s", note="fixed cost per second")
    accepted = 0
    for rate, out in outs:
        accepted += out["accepted"]
        _rows(result, rate, out, base, idle_cpu)
    for name, mb in rss.items():
        result.add(f"peak RSS {name}", mb, "MiB")
    result.notes.append(
        f"provider payments created {provider_payments} for "
        f"{accepted + len(idle) + 5 * len(outs)} accepted (warm-up 5 per phase + idle "
        f"{len(idle)} + load)"
    )
    for rate, out in outs:
        result.notes.append(
            f"{rate:g}/s: GET /api/v1/payments/{{id}} says succeeded for {out['checked']} of "
            f"{out['check_of']} sampled payments"
        )
    finish(result, load0, started)
    log(f"e2e done in {result.seconds:.0f} s")
    return result


def _rows(
    result: Result, rate: float, out: dict[str, Any], base: float, idle_cpu: dict[str, float]
) -> None:
    lat = out["load"]["succeeded"]
    for p in (50, 95, 99):
        v = percentile(lat, p)
        result.add(
            f"{rate:g}/s steady: accept → succeeded p{p}",
            v,
            "ms",
            ratio=ratio(v, base),
            baseline="idle p50",
            note=f"n={len(lat)}" if p == 50 else "",
        )
    pend = out["load"]["pending"]
    result.add(
        f"{rate:g}/s steady: accept → pending-or-later p50",
        percentile(pend, 50),
        "ms",
        ratio=ratio(percentile(pend, 50), base),
        baseline="idle p50",
        note=f"p99 {percentile(pend, 99):.0f} ms (provider payment created)",
    )
    result.add(
        f"{rate:g}/s steady: POST 202 p50",
        out["post_p50"],
        "ms",
        ratio=ratio(out["post_p50"], base),
        baseline="idle p50",
        note=f"p99 {out['post_p99']:.0f} ms",
    )
    result.add(
        f"{rate:g}/s: payments not succeeded within 120 s",
        out["not_terminal"] + out["canceled"],
        "count",
        note=f"of {out['accepted']} accepted; HTTP {out['statuses']}",
    )
    for name in STAGES:
        vals = out["stages"][name]
        result.add(
            f"{rate:g}/s stage p50: {name}",
            percentile(vals, 50),
            "ms",
            note=f"p95 {percentile(vals, 95):.0f} ms, n={len(vals)}",
        )
    n_load = max(1, out["accepted"])
    total = 0.0
    for name, used in out["cpu"].items():
        per = used / n_load * 1000
        if name != "emulator":
            total += per
        fixed = idle_cpu.get(name)
        note = f"{used / out['busy_s'] * 100:.0f}% of a core over the load window"
        if fixed is not None:
            marginal = (used - fixed * out["busy_s"]) / n_load * 1000
            note += f"; {marginal:.1f} ms over the idle stack's CPU"
        result.add(f"{rate:g}/s: CPU per payment, {name}", per, "ms", note=note)
    result.add(
        f"{rate:g}/s: CPU per payment, our processes (emulator apart)",
        total,
        "ms",
        note="goal <= 10 ms",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=20.0, help="payments per second")
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument(
        "--rates", default="", help="e.g. 10,20,50: one load phase per rate on the same stack"
    )
    ap.add_argument("--idle", type=int, default=20, help="sequential payments for the baseline")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rates = tuple(float(r) for r in args.rates.split(",") if r.strip())
    res = run(args.rate, args.count, args.idle, rates)
    report(res, args.json)


if __name__ == "__main__":
    main()
