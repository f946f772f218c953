"""Pure ledger logic in-process, no Kafka, no Faust: ``python -m bench.machine``.

Figures (calls/s, best of 3 rounds of ~0.5 s each):
  decide: pay, fresh subscription                 [baseline]
  decide: provider observation pending / succeeded (the rest of a payment's life)
  decide: replayed command (duplicate, re-emits its events)
  agent hot path, fresh subscription: what the ledger agent does per input minus Faust:
      decode_ledger_input(bytes) → dict get → decode_state → decide → encode_state →
      encode(each event)
  agent hot path, subscription after 60 renewals (5 years, driven by the timer): since
      issue 13 the state keeps closed records only for the retention window, so this should
      match the fresh figure rather than grow with the subscription's age
  renewals driven by the real timer (``due_commands`` at ``next_wakeup``, each charge
      answered by the provider) after the first payment and 1, 12, 60, 120 renewals: state
      bytes, and µs per input (state decode + decide + state encode + event encode) over one
      renewal cycle's inputs (reminder, charge, provider's success), with the figures measured
      before issue 13 beside them and the goal (after 120 <= 1.2x after 12)

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
from schemas.ids import observation_id_for
from schemas.messages import (
    PaymentObserved,
    PaymentRequested,
    PaySubscription,
    decode_ledger_input,
    encode,
)
from schemas.state import SubscriptionState, decode_state, encode_state
from streams.ledger.machine import LedgerInput, Policy, decide, due_commands, next_wakeup

POLICY = Policy()
ROUND_S = 0.5
# Measured before issue 13 (the figures, same driver): state bytes and µs per input
# after the first payment and after 12, 60 and 120 renewals.
BEFORE_BYTES = {0: 3_700, 12: 24_000, 60: 74_000, 120: 137_000}
BEFORE_US = {0: 30.0, 120: 268.0}
CHECKPOINTS = (0, 1, 12, 60, 120)
BEFORE_HOT_PATH_US = {
    "agent hot path (no Faust), fresh subscription": 12.8,
    "agent hot path (no Faust), after 60 renewals": 158.0,  # then: 60 past payments
}


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


def _answer(state: SubscriptionState, event: PaymentRequested, at: int) -> PaymentObserved:
    """The provider charges the saved card at once (what the gateway would report)."""
    provider_id = f"pp-{event.request.payment_id}"
    return PaymentObserved(
        observation_id=observation_id_for(provider_id, "succeeded"),
        subscription_id=state.subscription_id,
        observed_at=at,
        source="gateway",
        payment_id=event.request.payment_id,
        provider_payment_id=provider_id,
        status="succeeded",
        amount=event.request.amount,
        paid=True,
    )


def renewal_cycle(state: SubscriptionState) -> tuple[SubscriptionState, list[LedgerInput]]:
    """One renewal through the real timer: every input it takes (reminder, charge, the
    provider's success) until the period is paid again, and the state after."""
    inputs: list[LedgerInput] = []
    renewed = False
    while not renewed:
        at = next_wakeup(state, POLICY)
        assert at is not None, "the subscription stopped renewing"
        for cmd in due_commands(state, at, POLICY):
            d = decide(state, cmd, POLICY)
            assert d.state is not None
            state = d.state
            inputs.append(cmd)
            for e in d.events:
                if isinstance(e, PaymentRequested) and e.request.kind == "renewal":
                    seen = _answer(state, e, at + 5)
                    d2 = decide(state, seen, POLICY)
                    assert d2.state is not None
                    state, renewed = d2.state, True
                    inputs.append(seen)
    return state, inputs


def renewals(
    user: str, checkpoints: tuple[int, ...]
) -> dict[int, tuple[SubscriptionState, list[LedgerInput]]]:
    """A subscription paid once with a saved card, then renewed by the timer: at each
    checkpoint (renewals done), the state and the inputs of the next renewal cycle."""
    t = int(time.time() * 1000)
    cmd = pay_command(user, "first", t)
    state: SubscriptionState | None = None
    for msg in (cmd, observed(cmd, "pending", t + 1), observed(cmd, "succeeded", t + 2)):
        state = decide(state, msg, POLICY).state
    assert state is not None and state.payment_method_id is not None
    out: dict[int, tuple[SubscriptionState, list[LedgerInput]]] = {}
    for done in range(max(checkpoints) + 1):
        after, inputs = renewal_cycle(state)
        if done in checkpoints:
            out[done] = (state, inputs)
        state = after
    return out


def per_input_us(state: SubscriptionState, inputs: list[LedgerInput], rounds: int = 400) -> float:
    """µs per input of a renewal cycle: state decode, decide, state encode, event encode
    (the ledger agent's work minus Faust), best of 3."""
    raw0 = encode_state(state)
    best = float("inf")
    for _ in range(3):
        gc.collect()
        t = time.perf_counter()
        for _ in range(rounds):
            raw = raw0
            for msg in inputs:
                d = decide(decode_state(raw), msg, POLICY)
                if d.state is not None:
                    raw = encode_state(d.state)
                for e in d.events:
                    encode(e)
        best = min(best, (time.perf_counter() - t) / (rounds * len(inputs)))
    return best * 1e6


def aged_state(renewed: int) -> tuple[SubscriptionState, int]:
    """A subscription after ``renewed`` renewals by the timer (and the time after them)."""
    state, _ = renewals("bench-aged-user", (renewed,))[renewed]
    return state, (state.period_end or 0) - POLICY.renew_lead_ms


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

    old, t_old = aged_state(60)  # 60 renewals: 5 years of monthly periods
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
        ("agent hot path (no Faust), after 60 renewals", hot_path_aged),
    ]
    base = float("nan")
    for name, fn in figures:
        r = rate(fn, n)
        if name.startswith("decide: pay"):
            base = r
        before = BEFORE_HOT_PATH_US.get(name)
        result.add(
            name,
            r,
            "calls/s",
            ratio=ratio(r, base),
            baseline="decide pay",
            note=f"{1e6 / r:.1f} us/call"
            + (f" (before issue 13: {before:g} us)" if before else ""),
        )
    # Decoding every state (what a full scan of the table costs, per 10,000 subscriptions).
    fresh_raw = [encode_state(st) for st in after_pay if st is not None]
    aged_raws = [old_raw] * min(n, 2_000)
    for label, raws in (("fresh", fresh_raw), ("after 60 renewals", aged_raws)):
        t = time.perf_counter()
        for raw in raws:
            decode_state(raw)
        per_10k = (time.perf_counter() - t) / len(raws) * 10_000 * 1000
        result.add(f"decode every state, per 10k subscriptions, {label}", per_10k, "ms")
    first = after_pay[0]
    assert first is not None
    result.add("state size, fresh subscription after pay", len(encode_state(first)), "bytes")
    add_renewals(result)
    finish(result, load0, started, note="one core, in-process; ")
    return result


def add_renewals(result: Result) -> None:
    """State bytes and µs per input along 120 renewals driven by the timer, beside the
    figures before issue 13; the goal is flat: after 120 <= 1.2x after 12."""
    points = renewals("bench-renewals-user", CHECKPOINTS)
    sizes = {k: len(encode_state(st)) for k, (st, _) in points.items()}
    costs = {k: per_input_us(st, inputs) for k, (st, inputs) in points.items()}
    for k in CHECKPOINTS:
        label = "the first payment" if k == 0 else f"{k} renewals"
        before = BEFORE_BYTES.get(k)
        result.add(
            f"state size after {label}",
            sizes[k],
            "bytes",
            ratio=ratio(sizes[k], sizes[12]),
            baseline="after 12",
            note=f"before issue 13: {before / 1000:.1f} KB" if before else "",
        )
    for k in CHECKPOINTS:
        label = "the first payment" if k == 0 else f"{k} renewals"
        before_us = BEFORE_US.get(k)
        result.add(
            f"us per input after {label}",
            costs[k],
            "us",
            ratio=ratio(costs[k], costs[12]),
            baseline="after 12",
            note=f"before issue 13: {before_us:.0f} us" if before_us else "",
        )
    size_ratio, cpu_ratio = sizes[120] / sizes[12], costs[120] / costs[12]
    result.notes.append(
        f"goal: after 120 renewals <= 1.2x after 12: size {size_ratio:.2f}x"
        f" ({'met' if size_ratio <= 1.2 else 'NOT met'}), CPU per input {cpu_ratio:.2f}x"
        f" ({'met' if cpu_ratio <= 1.2 else 'NOT met'}); before issue 13 the size was"
        f" {BEFORE_BYTES[120] / BEFORE_BYTES[12]:.1f}x after 12 and the CPU"
        f" {BEFORE_US[120] / BEFORE_US[0]:.1f}x the first payment's"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="distinct inputs per figure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.n)
    report(res, args.json)


if __name__ == "__main__":
    main()
