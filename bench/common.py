"""Shared helpers of the benchmarks: a private broker, a private PostgreSQL, peak RSS, percentiles
and the result rows that ``bench.run_all`` prints as one table.

Every benchmark reports its figures as ratios against a baseline measured in the same run (the
machine and whatever else runs on it change between runs; the ratios move far less).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_STATE = REPO / ".state" / "bench"  # git-ignored; the embedded PostgreSQL must live here


@dataclass
class Row:
    """One figure. ``ratio`` is value / baseline value of the same benchmark and run."""

    bench: str
    name: str
    value: float
    unit: str
    ratio: float | None = None
    baseline: str = ""
    note: str = ""


@dataclass
class Result:
    bench: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        ratio: float | None = None,
        baseline: str = "",
        note: str = "",
    ) -> Row:
        row = Row(self.bench, name, value, unit, ratio, baseline, note)
        self.rows.append(row)
        return row

    def get(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    def to_json(self) -> str:
        return json.dumps(
            {
                "bench": self.bench,
                "seconds": self.seconds,
                "notes": self.notes,
                "rows": [asdict(r) for r in self.rows],
            },
            indent=1,
        )


def ratio(value: float, base: float) -> float | None:
    if not base or math.isnan(base) or math.isnan(value):
        return None
    return value / base


# ----------------------------------------------------------------------------- formatting
def fmt_value(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return ""
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.3g}x"


def table(rows: Sequence[Row], *, with_bench: bool = False) -> str:
    head = (["bench"] if with_bench else []) + ["figure", "value", "unit", "ratio", "vs", "note"]
    body = [
        ([r.bench] if with_bench else [])
        + [r.name, fmt_value(r.value), r.unit, fmt_ratio(r.ratio), r.baseline, r.note]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    numeric = {len(head) - 5, len(head) - 3}  # value and ratio: right-aligned

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (c, w) in enumerate(zip(cells, widths, strict=True)):
            out.append(str(c).rjust(w) if i in numeric else str(c).ljust(w))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), sep, *(line(b) for b in body)])


def print_result(result: Result) -> None:
    print(f"\n== {result.bench} ({result.seconds:.0f} s) ==")
    print(table(result.rows))
    for n in result.notes:
        print(f"  * {n}")
    sys.stdout.flush()


def finish(result: Result, load0: str, started: float, *, note: str = "") -> Result:
    """Close a run: the load average before and after (after ``note``), and the run's wall
    time since ``started`` (``time.monotonic()``)."""
    result.notes.append(f"{note}load average {load0} → {loadavg()}")
    result.seconds = time.monotonic() - started
    return result


def report(result: Result, as_json: bool) -> None:
    """The result as a table, and as JSON too when asked (``--json``)."""
    print_result(result)
    if as_json:
        print(result.to_json())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- statistics
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


# ----------------------------------------------------------------------------- memory
def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process, MiB; NaN when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def self_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a live process (from /proc/<pid>/stat), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, ValueError, IndexError):
        return float("nan")


def loadavg() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants (PostgreSQL's backends), seconds."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        cpu = cpu_seconds(p)
        if not math.isnan(cpu):
            total += cpu
        todo.extend(children.get(p, []))
    return total


def machine_line() -> str:
    cores = os.cpu_count() or 0
    try:
        load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = ""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cores} cores ({model}), {load}, python {sys.version.split()[0]}"


# ----------------------------------------------------------------------------- resources
@contextlib.contextmanager
def workdir(name: str, *, keep: bool = False) -> Iterator[Path]:
    """A fresh directory under .state/bench (removed afterwards unless ``keep``)."""
    BENCH_STATE.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=BENCH_STATE))
    try:
        yield path
    finally:
        if not keep and not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def kafka_broker(root: Path) -> Iterator[str]:
    """A private single-node broker for one benchmark; yields its bootstrap address."""
    from billing.kafka_local import KafkaBroker, fetch_kafka_jars, free_port

    broker = KafkaBroker(root / "kafka", free_port(), free_port(), fetch_kafka_jars())
    t = time.monotonic()
    broker.start()
    log(f"broker up on {broker.bootstrap} in {time.monotonic() - t:.1f} s")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@contextlib.contextmanager
def postgres(root: Path, database: str = "billing_bench") -> Iterator[str]:
    """A private embedded PostgreSQL (migrated); yields the DSN of its database."""
    from billing.pg_local import start_postgres

    t = time.monotonic()
    pg = start_postgres(root / "pg", database=database)
    log(f"postgres up on port {pg.port} in {time.monotonic() - t:.1f} s")
    try:
        yield pg.dsn
    finally:
        pg.stop()


def wait_log(path: Path, needle: str, timeout: float, *, alive: object = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if needle in path.read_text(errors="replace"):
                return
        if alive is not None and callable(alive) and not alive():
            raise RuntimeError(f"process exited before {needle!r}; see {path}")
        time.sleep(0.1)
    raise TimeoutError(f"{needle!r} not in {path} after {timeout}s")
