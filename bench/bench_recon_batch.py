"""Reconciliation batch path benchmark (reconciler/batch.py on embedded chdb).

    .venv/bin/python -m bench.bench_recon_batch [--lines 1000000] [--json]

Setup (not timed): a history of about ``--lines``/1.04 payments (two per subscription; the
``payments``/``refunds`` rows the sink would write, one per event, built directly in
COLUMNS order, inserted in big blocks, then merged as a long-lived history is) and a report
of exactly ``--lines`` lines against it: mostly matched, with about 1 % each of amount,
currency and status differences, missed outcomes, duplicate charges (a sibling succeeded
charge), unknown payments, redelivered lines, lines without our payment id (matched by
provider id), in-flight and held payments, and refunds (matched, amount differences,
unreported); the end of the report finds the payments and refunds the provider never
reported. The summary is checked against the counts the generator planted, so a wrong answer
fails the run rather than giving a figure.

Timed: ``load_report`` (1 M ``ReportLine`` objects -> ``recon_report_lines``), ``classify``
with ``include_agreeing=False`` (what a batch run asks: the discrepancies and the summary),
and their total, as lines/s. Baselines of the same run: a plain INSERT of the same lines,
already built as the same Arrow blocks, into a plain MergeTree copy (so load_report's ratio
is the cost of turning ``ReportLine`` objects into columns), and a plain aggregate over the
loaded lines (``SELECT object, status, count() ... GROUP BY``); a plain join of the lines to the
payments history is shown for scale. Peak RSS is the process's (chdb runs inside it): the
high-water mark over the whole run, and the rise of the mark over the resident size just
before ``load_report`` (the mark is reset there where Linux allows it, else it includes the
setup). Each figure also has its CPU time (this process, the engine's threads included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from bench.common import Result, loadavg, log, print_result, ratio, workdir
from billing.clickhouse import ClickHouseClient, connect
from reconciler import batch
from schemas.clickhouse import COLUMNS
from schemas.money import Money
from schemas.recon import PaymentLine, RefundLine, ReportLine
from schemas.recon_match import MatchConfig

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
W0 = 1_772_323_200_000  # 2026-03-01T00:00Z
CFG = MatchConfig(window_start=W0, window_end=W0 + DAY, now=W0 + DAY + 30 * MINUTE)
PRICE = 29_900
RUN = "bench-run"
CHUNK = 100_000  # payments per history block
INSERT = {"async_insert": 0, "insert_deduplicate": 0}

# What payment i is, by i % 100 (the rest: succeeded on both sides, matched). "lines": the
# report lines it gets; "expect": the items it yields.
PLAN: dict[int, tuple[str, str]] = {
    80: ("canceled", "status_mismatch: we canceled, the provider charged"),
    81: ("pending", "missing_internal: the provider's success never reached us"),
    82: ("pending", "in_flight: pending on both sides within the SLA"),
    83: ("succeeded", "missing_at_provider: not in the report"),
    84: ("succeeded", "amount_mismatch"),
    85: ("succeeded", "currency_mismatch"),
    86: ("succeeded", "matched + duplicate_charge (a sibling succeeded charge)"),
    87: ("succeeded", "matched, the line delivered twice"),
    88: ("canceled", "matched: canceled before the provider created it, not in the report"),
    89: ("waiting_for_capture", "in_flight: held, within the hold SLA"),
    90: ("requested", "missing_at_provider: never answered, not in the report"),
    91: ("succeeded", "matched by provider id (no payment id in the line)"),
    92: ("succeeded", "matched, plus a line for a payment the ledger never made"),
    93: ("succeeded", "matched, refunded: refund matched"),
    94: ("succeeded", "matched, refunded: refund matched"),
    95: ("succeeded", "matched, refunded: refund matched"),
    96: ("succeeded", "matched, refunded: refund amount differs"),
    97: ("succeeded", "matched, refunded: refund not in the report"),
}
LINES_PER_100 = 100 - 3 + 3 + 4  # none for 83, 88, 90; a second for 86, 87, 92; refunds 93-96


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    cpu, wall = cpu_now(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - wall, cpu_now() - cpu


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return float(line.split()[1])
    return float("nan")


def reset_peak() -> bool:
    """Reset this process's high-water mark (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------- the books
def requested_at(i: int, payments: int) -> int:
    if i % 100 == 82:  # recent: within the pending SLA at CFG.now
        return CFG.window_end - 10 * MINUTE
    return W0 + (i * (DAY - 3 * HOUR)) // payments


def amount(i: int) -> int:
    return PRICE + (i % 3) * 10_000


def payment_rows(i: int, payments: int) -> list[tuple[Any, ...]]:
    """Payment i's ``payments`` rows (COLUMNS order): requested, then per PLAN pending or
    held, then succeeded or canceled. Two payments per subscription, versions apart."""
    r = i % 100
    status = PLAN.get(r, ("succeeded", ""))[0]
    pid, sub, user, prov = f"pay-{i}", f"sub-{i // 2}", f"user-{i // 2}", f"prov-{i}"
    at, base, amt = requested_at(i, payments), (i % 2) * 10, amount(i)

    def row(n: int, st: str, ppid: str = "", minor: int = 0, cur: str = "") -> tuple[Any, ...]:
        first = n == 1
        return (
            f"ev-{i}-{n}", pid, sub, user, st, at + (n - 1) * MINUTE, base + n, f"cmd-{i}",
            "purchase" if first else "", "monthly" if first else "", minor, cur,
            1 if first else 0, minor, ppid, 0, "", "",
        )  # fmt: skip

    rows = [row(1, "requested", "", amt, "RUB")]
    if status == "requested":
        return rows
    if r == 88:  # declined before the provider created it
        return [*rows, row(2, "canceled")]
    rows.append(
        row(2, "waiting_for_capture" if status == "waiting_for_capture" else "pending", prov)
    )
    if status in ("succeeded", "canceled"):
        rows.append(row(3, status, prov, amt if status == "succeeded" else 0, "RUB"))
    return rows


def refund_rows(i: int, payments: int) -> list[tuple[Any, ...]]:
    """Payment i's refund (PLAN 93..97) as ``refunds`` rows: requested, succeeded."""
    if not 93 <= i % 100 <= 97:
        return []
    rid, at, base = f"ref-{i}", requested_at(i, payments), (i % 2) * 10
    return [
        (
            f"ev-{i}-{n}",
            rid,
            f"pay-{i}",
            f"sub-{i // 2}",
            f"user-{i // 2}",
            st,
            at + n * MINUTE,
            base + n,
            f"cmd-{rid}",
            amount(i),
            "RUB",
            f"prov-ref-{i}" if st == "succeeded" else "",
            0,
            "",
            "user",
            0,
        )
        for n, st in ((4, "requested"), (5, "succeeded"))
    ]


def write_history(ch: ClickHouseClient, payments: int) -> tuple[int, int]:
    """The ledger's payments and refunds as the sink would write them, in big blocks."""
    n_pay = n_ref = 0
    for start in range(0, payments, CHUNK):
        span = range(start, min(start + CHUNK, payments))
        pays = [row for i in span for row in payment_rows(i, payments)]
        refs = [row for i in span for row in refund_rows(i, payments)]
        for table, rows in (("payments", pays), ("refunds", refs)):
            if rows:
                ch.raw.insert(
                    table,
                    list(zip(*rows, strict=True)),
                    column_names=list(COLUMNS[table]),
                    column_oriented=True,
                    settings=INSERT,
                )
        n_pay, n_ref = n_pay + len(pays), n_ref + len(refs)
    return n_pay, n_ref


def merge_history(ch: ClickHouseClient) -> None:
    for table in ("payments", "refunds"):
        ch.command(f"OPTIMIZE TABLE {table} FINAL")


def payment_line(i: int, payments: int, status: str = "succeeded", **fields: Any) -> PaymentLine:
    """The provider's line for payment i (``fields`` override)."""
    line: dict[str, Any] = {
        "provider_payment_id": f"prov-{i}",
        "status": status,
        "amount": Money(amount(i), "RUB"),
        "paid": status in ("succeeded", "waiting_for_capture"),
        "created_at": requested_at(i, payments) + 30_000,
        "subscription_id": f"sub-{i // 2}",
        "payment_id": f"pay-{i}",
    }
    line.update(fields)
    return PaymentLine(**line)


def report(payments: int, limit: int) -> tuple[list[ReportLine], Counter[str]]:
    """The provider's report (exactly ``limit`` lines) and the classes it must yield."""
    lines: list[ReportLine] = []
    expect: Counter[str] = Counter()
    for i in range(payments):
        r = i % 100
        at, amt = requested_at(i, payments), amount(i)
        if r in (83, 90):
            expect["missing_at_provider"] += 1
        elif r == 88:
            expect["matched"] += 1
        elif r == 80:
            lines.append(payment_line(i, payments))
            expect["status_mismatch"] += 1
        elif r == 81:
            lines.append(payment_line(i, payments))
            expect["missing_internal"] += 1
        elif r == 82:
            lines.append(payment_line(i, payments, "pending"))
            expect["in_flight"] += 1
        elif r == 84:
            lines.append(payment_line(i, payments, amount=Money(amt + 100, "RUB")))
            expect["amount_mismatch"] += 1
        elif r == 85:
            lines.append(payment_line(i, payments, amount=Money(amt, "EUR")))
            expect["currency_mismatch"] += 1
        elif r == 86:
            lines.append(payment_line(i, payments))
            dup = payment_line(i, payments, provider_payment_id=f"prov-{i}-dup", created_at=at)
            lines.append(dup)
            expect.update(["matched", "duplicate_charge"])
        elif r == 87:
            lines += [payment_line(i, payments), payment_line(i, payments)]
            expect["matched"] += 1
        elif r == 89:
            lines.append(payment_line(i, payments, "waiting_for_capture"))
            expect["in_flight"] += 1
        elif r == 91:
            lines.append(payment_line(i, payments, payment_id=None))
            expect["matched"] += 1
        elif r == 92:
            lines.append(payment_line(i, payments))
            lines.append(payment_line(i, payments, provider_payment_id=f"x-{i}", payment_id=None))
            expect.update(["matched", "missing_internal"])
        else:
            lines.append(payment_line(i, payments))
            expect["matched"] += 1
        if 93 <= r <= 96:
            lines.append(
                RefundLine(
                    provider_refund_id=f"prov-ref-{i}",
                    provider_payment_id=f"prov-{i}",
                    status="succeeded",
                    amount=Money(amt + (1 if r == 96 else 0), "RUB"),
                    created_at=at + 5 * MINUTE,
                    subscription_id=f"sub-{i // 2}",
                    payment_id=f"pay-{i}",
                    refund_id=f"ref-{i}",
                )
            )
        if 93 <= r <= 97:
            expect["refund_mismatch" if r >= 96 else "matched"] += 1
    if len(lines) > limit:
        raise ValueError(f"{payments:,} payments give {len(lines):,} lines, over {limit:,}")
    # Exactly ``limit`` lines: the rest are provider payments without our metadata.
    for j in range(limit - len(lines)):
        pad = PaymentLine(
            provider_payment_id=f"prov-pad-{j}",
            status="succeeded",
            amount=Money(PRICE, "RUB"),
            paid=True,
            created_at=W0 + j,
        )
        lines.append(pad)
        expect["missing_internal"] += 1
    return lines, expect


# ----------------------------------------------------------------------------- the run
def run(n_lines: int) -> Result:
    result = Result("recon_batch")
    started = time.perf_counter()
    # A block of payments less than the lines allow: the report is padded to exactly n_lines.
    payments = max(1, n_lines * 100 // LINES_PER_100 - 100)
    with workdir("recon-batch") as root:
        ch = connect(root / "clickhouse", database="recon")
        try:
            log(f"history: {payments:,} payments")
            (n_pay, n_ref), hist_s, _ = timed(lambda: write_history(ch, payments))
            log(f"history: {n_pay:,} payment rows, {n_ref:,} refund rows in {hist_s:.1f} s")
            # A long-lived history is merged; fresh parts would be merging in the background
            # (on the same 2 cores) while the run is timed.
            _, merge_s, _ = timed(lambda: merge_history(ch))
            log(f"history: merged in {merge_s:.1f} s")
            lines, expect = report(payments, n_lines)
            log(f"report: {len(lines):,} lines built")
            run_figures(ch, result, lines, expect, payments)
            result.notes.append(
                f"history {n_pay:,} payment rows + {n_ref:,} refund rows ({payments:,}"
                f" payments) written in {hist_s:.1f} s and merged in {merge_s:.1f} s (setup)"
            )
        finally:
            ch.close()
    result.seconds = time.perf_counter() - started
    return result


def plain_insert(ch: ClickHouseClient, blocks: list[pa.RecordBatch]) -> tuple[float, float]:
    """The baseline of load_report: the same blocks, already built, into a plain MergeTree."""

    def insert() -> None:
        for block in blocks:
            ch.insert_arrow("plain_lines", block)

    _, wall, cpu = timed(insert)
    return wall, cpu


def run_figures(
    ch: ClickHouseClient,
    result: Result,
    lines: Sequence[ReportLine],
    expect: Counter[str],
    payments: int,
) -> None:
    n = len(lines)
    rss_before = maxrss_mb()
    reset = reset_peak()
    resident = _status_kb("VmRSS:") / 1024
    log(f"load_report: {n:,} lines")
    loaded, load_s, load_cpu = timed(lambda: batch.load_report(ch, RUN, lines))
    assert loaded == n
    log(f"classify (include_agreeing=False) after a {load_s:.1f} s load")
    res, cls_s, cls_cpu = timed(lambda: batch.classify(ch, RUN, CFG, include_agreeing=False))
    run_hwm = _status_kb("VmHWM:") / 1024 if reset else maxrss_mb()
    peak = maxrss_mb()
    counts = {k: v for k, v in res.summary.counts.items() if v}
    if counts != dict(expect):
        raise AssertionError(f"wrong answer: got {counts}, planted {dict(expect)}")
    total_s, total_cpu = load_s + cls_s, load_cpu + cls_cpu

    # Baselines, same run, same lines.
    ch.command("CREATE TABLE plain_lines AS recon_report_lines ENGINE = MergeTree ORDER BY tuple()")
    blocks = [
        batch.arrow_block(RUN, i, lines[i : i + batch.DEFAULT_CHUNK])
        for i in range(0, n, batch.DEFAULT_CHUNK)
    ]
    plain_s, plain_cpu = plain_insert(ch, blocks)
    agg_sql = (
        "SELECT object, status, count() FROM recon_report_lines WHERE run_id = {run:String}"
        " GROUP BY object, status"
    )
    _, agg_s, agg_cpu = timed(lambda: ch.query(agg_sql, {"run": RUN}))
    join_sql = (
        "SELECT count() FROM (SELECT subscription_id, payment_id FROM recon_report_lines"
        " WHERE run_id = {run:String}) AS l INNER JOIN (SELECT DISTINCT subscription_id,"
        " payment_id FROM payments) AS p USING (subscription_id, payment_id)"
    )
    _, join_s, join_cpu = timed(lambda: ch.query(join_sql, {"run": RUN}))

    def cpu(s: float) -> str:
        return f"cpu {s:.2f} s"

    discrepancies = res.summary.discrepancies
    result.add(
        "load_report",
        load_s,
        "s",
        ratio=ratio(load_s, plain_s),
        baseline="plain INSERT",
        note=f"{n / load_s:,.0f} lines/s, {cpu(load_cpu)}",
    )
    result.add(
        "classify (discrepancies only)",
        cls_s,
        "s",
        ratio=ratio(cls_s, agg_s),
        baseline="plain aggregate",
        note=f"{len(res.items):,} items returned ({discrepancies:,} discrepancies), {cpu(cls_cpu)}",
    )
    result.add(
        "batch total (load + classify)",
        total_s,
        "s",
        ratio=ratio(total_s, plain_s + agg_s),
        baseline="insert + aggregate",
        note=f"{cpu(total_cpu)}; goal <= 30 s for 1 M lines",
    )
    result.add("batch rate", n / total_s, "lines/s", note=f"{n:,} lines, {payments:,} payments")
    result.add(
        "peak RSS (process)",
        peak,
        "MiB",
        note=f"high-water mark since start (chdb in-process); {rss_before:,.0f} MiB before load",
    )
    result.add(
        "peak RSS rise during the run",
        run_hwm - resident,
        "MiB",
        note=(
            f"over {resident:,.0f} MiB resident before load_report"
            if reset
            else "peak not resettable here: includes the setup"
        ),
    )
    result.add(
        "plain INSERT (baseline)",
        plain_s,
        "s",
        ratio=1.0,
        baseline="plain INSERT",
        note=f"{n / plain_s:,.0f} lines/s, the same Arrow blocks prebuilt, {cpu(plain_cpu)}",
    )
    result.add(
        "plain aggregate (baseline)",
        agg_s,
        "s",
        ratio=1.0,
        baseline="plain aggregate",
        note=f"GROUP BY object, status over the loaded lines, {cpu(agg_cpu)}",
    )
    result.add(
        "plain join lines x payments",
        join_s,
        "s",
        ratio=ratio(join_s, agg_s),
        baseline="plain aggregate",
        note=f"for scale, {cpu(join_cpu)}",
    )
    result.notes.append("classes: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="report lines")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.lines < 100:
        parser.error("--lines must be at least 100")
    load = os.getloadavg()[0]
    result = run(args.lines)
    result.notes.append(
        f"{os.cpu_count()} cores, load average {load:.2f} at start, {loadavg()} at the end"
        " (wall times swing with other work on the machine; CPU times much less)"
    )
    if args.json:
        # The shape bench.run_all reads from bench.bench_clickhouse.
        rows = [
            {
                "name": r.name,
                "value": r.value,
                "unit": r.unit,
                "ratio": r.ratio,
                "vs": r.baseline,
                "cpu_s": None,
                "note": r.note,
            }
            for r in result.rows
        ]
        print(
            json.dumps(
                {
                    "bench": "recon_batch",
                    "seconds": round(result.seconds, 1),
                    "load": load,
                    "notes": result.notes,
                    "rows": rows,
                },
                indent=1,
            )
        )
    else:
        with contextlib.suppress(BrokenPipeError):
            print_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
