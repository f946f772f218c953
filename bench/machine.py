"""Pure ledger logic in-process, no Kafka, no Faust: ``python -m bench.machine``.

Figures (calls/s, best of 3 rounds of ~0.5 s each):
  decide: pay, fresh subscription                 [baseline]
  decide: provider observation pending / succeeded (the rest of a payment's life)
  decide: replayed command (duplicate, re-emits its events)
  agent hot path, fresh subscription: what the ledger agent does per input minus Faust:
      decode_ledger_input(bytes) → dict get → decode_state → decide → encode_state →
      encode(each event)
  agent hot path, subscription with 60 past payments (5 years of monthly renewals: the state
      keeps every payment record, so its encode/decode grows with the subscription's age)

The transport benchmark's ledger agent rate divided by the hot path rate is what Faust and
Kafka cost over the pure logic (``bench.run_all`` prints it).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

from bench.common import Result, finish, loadavg, ratio, report
from bench.workload import observed, pay_command, pay_commands
from schemas.messages import PaySubscription, decode_ledger_input, encode
from schemas.state import SubscriptionState, decode_state, encode_state
from streams.ledger.machine import Policy, decide

POLICY = Policy()
ROUND_S = 0.5


def rate(fn: Callable[[int], None], n: int) -> float:
    """Best of 3: calls/s of ``fn(i)`` for i in range(n), n scaled to ~ROUND_S per round."""
    fn(0)
    t = time.perf_counter()
    probe = max(1, n // 20)
    for i in range(probe):
        fn(i % n)
    per_call = (time.perf_counter() - t) / probe
    calls = max(100, min(n, int(ROUND_S / max(per_call, 1e-9))))
    best = 0.0
    for _ in range(3):
        gc.collect()
        t = time.perf_counter()
        for i in range(calls):
            fn(i)
        best = max(best, calls / (time.perf_counter() - t))
    return best


def aged_state(payments: int) -> tuple[SubscriptionState, int]:
    """A subscription after ``payments`` paid periods (each pay → pending → succeeded)."""
    state: SubscriptionState | None = None
    t = int(time.time() * 1000)
    for k in range(payments):
        cmd = pay_command("bench-aged-user", f"renewal-{k}", t)
        for msg in (cmd, observed(cmd, "pending", t + 1), observed(cmd, "succeeded", t + 2)):
            state = decide(state, msg, POLICY).state
        t += 10
    assert state is not None
    return state, t


def run(n: int = 20_000) -> Result:
    result = Result("machine")
    started = time.monotonic()
    load0 = loadavg()
    cmds = pay_commands(n)
    raw_cmds = [encode(c) for c in cmds]
    now = int(time.time() * 1000)
    pending = [observed(c, "pending", now + 1) for c in cmds]
    succeeded = [observed(c, "succeeded", now + 2) for c in cmds]
    after_pay = [decide(None, c, POLICY).state for c in cmds]
    after_pending = [decide(s, o, POLICY).state for s, o in zip(after_pay, pending, strict=True)]

    def pay(i: int) -> None:
        decide(None, cmds[i], POLICY)

    def obs_pending(i: int) -> None:
        decide(after_pay[i], pending[i], POLICY)

    def obs_succeeded(i: int) -> None:
        decide(after_pending[i], succeeded[i], POLICY)

    def replay(i: int) -> None:
        decide(after_pay[i], cmds[i], POLICY)

    table: dict[bytes, bytes] = {}

    def hot_path(i: int) -> None:
        msg = decode_ledger_input(raw_cmds[i])
        key = msg.subscription_id.encode()
        raw = table.get(key)
        state = decode_state(raw) if raw is not None else None
        d = decide(state, msg, POLICY)
        if d.state is not None:
            encode_state(d.state)  # not stored: every call sees a fresh subscription
        for e in d.events:
            encode(e)

    old, t_old = aged_state(60)
    old_raw = encode_state(old)
    old_cmds = [encode(pay_command("bench-aged-user", f"next-{i}", t_old + i)) for i in range(n)]
    old_key = old.subscription_id.encode()
    aged_table = {old_key: old_raw}

    def hot_path_aged(i: int) -> None:
        msg = decode_ledger_input(old_cmds[i])
        raw = aged_table.get(msg.subscription_id.encode())
        state = decode_state(raw) if raw is not None else None
        d = decide(state, msg, POLICY)
        if d.state is not None:
            encode_state(d.state)
        for e in d.events:
            encode(e)

    assert isinstance(decode_ledger_input(raw_cmds[0]), PaySubscription)
    assert decide(after_pay[0], cmds[0], POLICY).duplicate
    assert len(decide(after_pending[0], succeeded[0], POLICY).events) == 2

    figures = [
        ("decide: pay, fresh subscription", pay),
        ("decide: observed pending", obs_pending),
        ("decide: observed succeeded (2 events)", obs_succeeded),
        ("decide: replayed command", replay),
        ("agent hot path (no Faust), fresh subscription", hot_path),
        ("agent hot path (no Faust), 60 past payments", hot_path_aged),
    ]
    base = float("nan")
    for name, fn in figures:
        r = rate(fn, n)
        if name.startswith("decide: pay"):
            base = r
        result.add(
            name,
            r,
            "calls/s",
            ratio=ratio(r, base),
            baseline="decide pay",
            note=f"{1e6 / r:.1f} us/call",
        )
    # The ledger's sweeper decodes every state of the table on the event loop every
    # FULL_SCAN_EVERY ticks (streams/ledger/agent.py); its cost per 10,000 subscriptions:
    from streams.ledger.agent import FULL_SCAN_EVERY

    fresh_raw = [encode_state(st) for st in after_pay if st is not None]
    aged_raws = [old_raw] * min(n, 2_000)
    for label, raws in (("fresh", fresh_raw), ("60 past payments", aged_raws)):
        t = time.perf_counter()
        for raw in raws:
            decode_state(raw)
        per_10k = (time.perf_counter() - t) / len(raws) * 10_000 * 1000
        result.add(
            f"sweeper full scan per 10k subscriptions, {label}",
            per_10k,
            "ms",
            note=f"blocks the worker's loop every {FULL_SCAN_EVERY} sweep ticks",
        )
    result.add("state size, fresh subscription after pay", len(encode_state(after_pay[0])), "bytes")
    result.add("state size, 60 past payments", len(old_raw), "bytes")
    finish(result, load0, started, note="one core, in-process; ")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="distinct inputs per figure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.n)
    report(res, args.json)


if __name__ == "__main__":
    main()
