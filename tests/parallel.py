"""Run the test tiers as concurrent pytest processes (``make test``; CI).

Most of the suite's wall time is spent waiting (stacks starting, clocks advancing, brokers
electing), not computing, so two pytest processes share the 2-core box well. Each process
starts its own broker, database and servers (session fixtures), in its own ``--basetemp``;
nothing is shared between them but the machine. Each group's output goes to a log file and
is printed whole when the group ends (no interleaving); the exit status is the worst one.

``python -m tests.parallel [pytest args]``; ``BILLING_TEST_GROUPS`` overrides the groups
(``;`` between groups, spaces between paths). ``make test-serial`` runs one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Balanced by the CI's --durations (one process: e2e+browser ~14 min, chaos+cluster ~7,
# integration ~9, unit ~2).
DEFAULT_GROUPS = "tests/e2e tests/browser tests/unit;tests/chaos tests/cluster tests/integration"


def groups() -> list[list[str]]:
    spec = os.environ.get("BILLING_TEST_GROUPS", DEFAULT_GROUPS)
    out = [g.split() for g in spec.split(";") if g.strip()]
    return [[p for p in g if (REPO / p).exists()] for g in out]


def _names_tests(arg: str) -> bool:
    return not arg.startswith("-") and ("::" in arg or (REPO / arg).exists())


def main(argv: list[str]) -> int:
    if any(map(_names_tests, argv)):
        # A subset named on the command line (``make test PYTEST_ARGS="-q tests/unit"``):
        # one process, as asked.
        return subprocess.call([sys.executable, "-m", "pytest", *argv], cwd=REPO)
    base = Path(tempfile.mkdtemp(prefix="billing-tests-"))
    procs: list[tuple[list[str], Path, subprocess.Popen[bytes], float]] = []
    for i, paths in enumerate(groups()):
        if not paths:
            continue
        log = base / f"group-{i}.log"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            *paths,
            *argv,
            f"--basetemp={base / f'tmp-{i}'}",
            "-p",
            "no:cacheprovider",
        ]
        print(f"[tests] group {i}: {' '.join(paths)} (log {log})", flush=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        procs.append((paths, log, proc, time.monotonic()))
    worst = 0
    pending = list(procs)
    while pending:
        for item in list(pending):
            paths, log, proc, started = item
            rc = proc.poll()
            if rc is None:
                continue
            pending.remove(item)
            took = time.monotonic() - started
            print(f"\n[tests] ===== {' '.join(paths)}: exit {rc} in {took:.0f} s =====", flush=True)
            sys.stdout.write(log.read_text(errors="replace"))
            sys.stdout.flush()
            # pytest: 5 = nothing collected (a group of absent paths) is not a failure.
            worst = max(worst, 0 if rc == 5 else rc)
        time.sleep(1.0)
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
