"""A midnight renewal peak (issue 13): ``python -m bench.peak [--subs 100000] [--due 5000]``.

The whole stack (tests/e2e/harness.py: broker, emulator, API, one Faust worker, a private
PostgreSQL) with ``--subs`` subscriptions in the ledger's table, generated as its changelog
(``bench.scale.seed_changelog``), of which ``--due`` renew at the same moment: all paid
once with a card saved at the emulator, so their renewal is a real autopayment. Once the
worker is ready the stack's clock jumps to 50 minutes before their period ends (every
jittered renewal time is past, none has lapsed) and the sweeper finds them all due at once.

Printed, for this run and a baseline run of the same cohort with the settings before issue
13 (15 s payment deadline, a sweeper that sends whatever its tick budget allows however far
the ledger lags, a relay without the lag):
- renewals due and the drain rate (renewals succeeded in PostgreSQL per second, first due
  to last succeeded);
- CPU per renewal of each process (worker, broker, API, PostgreSQL with its backends; the
  emulator apart);
- provider create calls per payment (the emulator's own count) and payments it created;
- re-drives emitted (PaymentRedriven on billing.events) and requests re-emitted flagged for
  the gateway to skip.

Goal: <= 1.2 create calls per payment and no growing backlog of re-drives. ``--subs 1000000
--due 100000`` is the issue's size: about 3 GB of changelog and, on a shared 2-core box, an
hour or more of draining; run what fits and say what you ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec

from bench.common import (
    Result,
    finish,
    loadavg,
    log,
    postgres,
    report,
    tree_cpu_seconds,
    workdir,
)
from bench.scale import seed_changelog

PARTITIONS = 4
BEFORE_MS = 50 * 60 * 1000  # the stack's clock lands this long before the periods end
# The settings before issue 13, for the baseline run of the same cohort.
OLD_SETTINGS = {
    "BILLING_PAYMENT_DEADLINE_S": "15",
    "BILLING_SWEEP_MAX_LAG_S": "1000000",
    "BILLING_RELAY_LAG_GROUP": "no-such-group",
}


def stack_env(worker_id: str, extra: dict[str, str]) -> dict[str, str]:
    """The stack's settings: production timings, no reminders (the cohort's next step is
    the charge), the relay reading the worker's group."""
    from bench.stack_env import PRODUCTION_TIMINGS

    return {
        **PRODUCTION_TIMINGS,
        "BILLING_PAYMENT_DEADLINE_S": "60",
        "BILLING_RENEWAL_REMINDER_S": "0",
        "BILLING_RELAY_LAG_GROUP": worker_id,
        "BILLING_KAFKA_PARTITIONS": str(PARTITIONS),
        **extra,
    }


def saved_method(emulator_url: str, control: Any) -> str:
    """A card saved at the emulator: a first payment with save_payment_method, confirmed."""
    from billing.config import Settings

    settings = Settings(env="test")
    body = {
        "amount": {"value": "299.00", "currency": "RUB"},
        "capture": True,
        "confirmation": {"type": "redirect", "return_url": "https://cinema.example/return"},
        "save_payment_method": True,
        "description": "peak bench card",
    }
    resp = httpx.post(
        f"{emulator_url}/v3/payments",
        json=body,
        auth=(settings.yookassa_shop_id, settings.yookassa_secret_key.get_secret_value()),
        headers={"Idempotence-Key": str(uuid.uuid4())},
        timeout=10,
    )
    resp.raise_for_status()
    pid = str(resp.json()["id"])
    control.confirm(pid, "succeed")
    return pid


def cohort(subs: int, due: int, method_id: str, env: dict[str, str]) -> tuple[list[Any], int]:
    """(key, table value) for ``subs`` subscriptions paid once with ``method_id``: the first
    ``due`` now (indexed as due at their renewal), the rest 20 days later. Also the period
    end the due ones share."""
    from bench.workload import observed, pay_command
    from billing.config import WorkerSettings
    from schemas.state import encode_state
    from streams.app import policy_from
    from streams.ledger.due import fingerprint, pack, request_days
    from streams.ledger.machine import decide, next_wakeup

    with _environ(env):
        policy = policy_from(WorkerSettings(env="test"))
    fp = fingerprint(policy)

    def template(t: int) -> tuple[bytes, bytes, bytes, int, int, Any]:
        cmd = pay_command("peak-template-user", "first", t)
        state = None
        for msg in (cmd, observed(cmd, "pending", t + 1), observed(cmd, "succeeded", t + 2)):
            state = decide(state, msg, policy).state
        assert state is not None and state.period_end is not None
        end: int = state.period_end
        state = msgspec.structs.replace(state, payment_method_id=method_id)
        wake = next_wakeup(state, policy)
        assert wake is not None
        sub, user = state.subscription_id.encode(), state.user_id.encode()
        return encode_state(state), sub, user, end, wake, request_days(state)

    t = int(time.time() * 1000)
    # The due ones paid now; the others 20 days later (their renewal is weeks after the peak).
    due_raw, sub0, user0, end, _, due_days = template(t)
    later_raw, _, _, _, later_wake, later_days = template(t + 20 * 86_400_000)
    out = []
    for i in range(subs):
        sub = str(uuid.UUID(int=(7 << 120) + i + 1)).encode()
        raw, wake, days = (
            (due_raw, end - policy.renew_lead_ms, due_days)
            if i < due
            else (later_raw, later_wake, later_days)
        )
        body = raw.replace(sub0, sub).replace(user0, b"peak-user-%08d" % i)
        out.append((sub, pack(body, fp, wake, days)))
    return out, end


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def succeeded(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM payments WHERE status = 'succeeded'").fetchone()
    return int(row[0]) if row else 0


async def event_counts(bootstrap: str) -> Counter[str]:
    """Event types on billing.events; requests re-emitted with the skip header apart."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from schemas.topics import EVENTS
    from streams.ledger.resend import OUTCOME_KNOWN

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    counts: Counter[str] = Counter()
    try:
        tps = [TopicPartition(EVENTS, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)

        async def behind() -> bool:
            return any([(await consumer.position(tp)) < ends[tp] for tp in tps])

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                for r in records:
                    kind = r.value[9 : r.value.index(b'"', 9)].decode() if r.value else "?"
                    if any(k == OUTCOME_KNOWN for k, _ in r.headers or ()):
                        kind += " (flagged: gateway skips)"
                    counts[kind] += 1
    finally:
        await consumer.stop()
    return counts


def one_run(name: str, subs: int, due: int, extra: dict[str, str], timeout_s: float) -> Any:
    """One stack, one cohort, one peak: the figures as a dict."""
    from billing.kafka_local import ensure_topics
    from streams.ledger.agent import TABLE_NAME
    from tests.e2e.harness import Stack
    from tests.fixtures.emulator import EmulatorControl

    with workdir(f"peak-{name}") as root, postgres(root) as dsn:
        (root / "stack").mkdir()
        worker_id = f"peak-{uuid.uuid4().hex[:6]}"
        env = stack_env(worker_id, extra) | {"BILLING_WORKER_ID": worker_id}
        stack = Stack(root / "stack", dsn, workers=1, partitions=PARTITIONS, extra_env=env)
        stack.worker_id = worker_id
        stack.bench_pg_dir = root / "pg"  # type: ignore[attr-defined]
        try:
            stack.control = EmulatorControl(stack.emulator_url)
            stack.broker.start()
            asyncio.run(ensure_topics(stack.broker.bootstrap, PARTITIONS))
            stack.emulator.start()
            stack.emulator.wait_ready(lambda: _ok(f"{stack.emulator_url}/__emulator/health"))
            method = saved_method(stack.emulator_url, stack.control)
            t = time.monotonic()
            values, end = cohort(subs, due, method, env)
            topic = f"{worker_id}-{TABLE_NAME}-changelog"
            seeded = asyncio.run(seed_changelog(stack.broker.bootstrap, topic, values))
            log(f"{name}: {subs:,} states built and seeded in {time.monotonic() - t:.0f} s")
            del values
            stack.api.start()
            stack.api.wait_ready(lambda: _ok(f"{stack.api_url}/healthz"))
            t = time.monotonic()
            for w in stack.workers:
                stack.start_worker(w, timeout=3600)
            log(f"{name}: worker ready in {time.monotonic() - t:.0f} s")
            return _peak(stack, dsn, due, end, timeout_s) | {"seed_s": seeded}
        finally:
            stack.stop()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _peak(stack: Any, dsn: str, due: int, end: int, timeout_s: float) -> dict[str, Any]:
    from bench.stack_env import process_pids

    pids = process_pids(stack, with_postgres=True)
    emulator_pid = pids.pop("emulator")
    stats0 = stack.control.stats()
    cpu0 = {n: tree_cpu_seconds(p) for n, p in pids.items()}
    emu0 = tree_cpu_seconds(emulator_pid)
    base = succeeded(dsn)
    t0 = time.monotonic()
    stack.advance_clock(end - BEFORE_MS - stack.now_ms())
    done, last, progress = 0, t0, []
    while done < due and time.monotonic() - t0 < timeout_s:
        time.sleep(2)
        done = succeeded(dsn) - base
        progress.append((round(time.monotonic() - t0), done))
        if done and progress[-1][1] != (progress[-2][1] if len(progress) > 1 else 0):
            last = time.monotonic()
        if len(progress) % 15 == 0:
            log(f"  {progress[-1][0]} s: {done:,} of {due:,} renewed")
    wall = max(last - t0, 1e-3)
    cpu = {n: tree_cpu_seconds(p) - cpu0[n] for n, p in pids.items()}
    emu = tree_cpu_seconds(emulator_pid) - emu0
    stats = stack.control.stats()
    events = asyncio.run(event_counts(stack.broker.bootstrap))
    return {
        "due": due,
        "done": done,
        "wall_s": wall,
        "cpu": cpu,
        "emulator_cpu": emu,
        "create_calls": stats["create_calls"] - stats0["create_calls"],
        "created": stats["payments_created"] - stats0["payments_created"],
        "events": events,
        "progress": progress,
    }


def run(subs: int, due: int, baseline: bool, timeout_s: float) -> Result:
    result = Result("peak")
    started, load0 = time.monotonic(), loadavg()
    runs = {"issue 13 settings": one_run("new", subs, due, {}, timeout_s)}
    if baseline:
        runs["before (15 s deadline, no lag limits)"] = one_run(
            "old", subs, due, OLD_SETTINGS, timeout_s
        )
    new = runs["issue 13 settings"]
    for label, r in runs.items():
        done = max(r["done"], 1)
        base = "" if r is new else " [baseline]"
        result.add(
            f"{label}: renewals drained",
            r["done"],
            "count",
            note=f"of {r['due']:,} due among {subs:,} in {r['wall_s']:.0f} s{base}",
        )
        result.add(f"{label}: drain rate", r["done"] / r["wall_s"], "renewals/s")
        total = sum(r["cpu"].values())
        for proc, used in r["cpu"].items():
            result.add(f"{label}: CPU per renewal, {proc}", used / done * 1000, "ms")
        result.add(
            f"{label}: CPU per renewal, our processes",
            total / done * 1000,
            "ms",
            note=f"emulator apart: {r['emulator_cpu'] / done * 1000:.1f} ms",
        )
        result.add(
            f"{label}: provider create calls per payment",
            r["create_calls"] / max(r["created"], 1),
            "calls",
            note=f"{r['create_calls']:,} creates, {r['created']:,} payments; goal <= 1.2",
        )
        ev = r["events"]
        result.add(
            f"{label}: re-drives emitted",
            ev.get("PaymentRedriven", 0) + ev.get("PaymentRedriven (flagged: gateway skips)", 0),
            "count",
            note=f"requests re-emitted flagged: "
            f"{sum(v for k, v in ev.items() if 'flagged' in k):,}",
        )
        result.notes.append(f"{label}: progress (s, renewed) {r['progress'][::5]}")
        result.notes.append(f"{label}: events {dict(ev.most_common(12))}")
    return finish(result, load0, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--subs", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=5_000)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report(run(args.subs, args.due, not args.no_baseline, args.timeout), args.json)


if __name__ == "__main__":
    main()
