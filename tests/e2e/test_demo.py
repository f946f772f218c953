"""``billing demo`` against the local stack as ``make run`` starts it (issue 15): run as
written from an operator's shell (no BILLING_* set: the CLI finds the stack's settings and
clock in ``.state/stack.env``), it fills the stack through the real path, and then every data
source of the console has something to show: payments and renewals, refunds, declines,
revenue and MRR in the history, and a reconciliation run whose planted differences were
found and repaired. Small size (4 users, one month) to stay bounded.

The same full run then serves three checks of the issue's "logs for people" and "trust
boundaries": the history worker's pages answer 401 without its credential and 200 with it
(over HTTP, the API sending it for the console); no log of any process of the stack (broker
aside) holds a secret value (the JWT secret, the shop key, the database password and DSN,
the console password, the history token, the tokens used); and an ordinary start plus the
demo's traffic logs no ERROR."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fixtures.postgres import FreshDatabase
from tests.secret_scan import secrets_in

pytestmark = pytest.mark.e2e

BANNER_END = "Ctrl-C stops everything."
SEED = int(os.environ.get("BILLING_E2E_SEED", random.randrange(10**6)))
HISTORY_TOKEN = "demo-history-" + "h" * 32


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(n: int) -> list[int]:
    """n free ports below the ephemeral range, the first two consecutive (Kafka's pair)."""
    for _ in range(500):
        base = random.randint(20000, 31000)
        if _free(base) and _free(base + 1):
            rest = [p for p in random.sample(range(31001, 32700), 50) if _free(p)]
            return [base, base + 1, *rest[: n - 2]]
    raise RuntimeError("no free ports")


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, fresh_database: FreshDatabase
) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """``make run`` in a project directory of its own: (the directory, the API's address,
    the stack's environment)."""
    cwd = tmp_path_factory.mktemp("project")
    (cwd / ".venv").symlink_to(Path(sys.executable).parents[1])
    kafka, _controller, api, emulator, history, console, web = _ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update(
        BILLING_POSTGRES_DSN=fresh_database("demo"),
        BILLING_KAFKA_BOOTSTRAP=f"127.0.0.1:{kafka}",
        BILLING_API_PORT=str(api),
        BILLING_EMULATOR_PORT=str(emulator),
        BILLING_HISTORY_PORT=str(history),
        BILLING_HISTORY_URL=f"http://127.0.0.1:{history}",
        BILLING_DASHBOARD_PORT=str(console),
        BILLING_WORKER_WEB_PORT=str(web),
        BILLING_RECON_NIGHTLY="false",
        BILLING_SWEEP_INTERVAL_S="0.5",  # the demo waits a sweeper tick after each clock jump
        BILLING_HISTORY_TOKEN=HISTORY_TOKEN,
    )
    out = cwd / "stack.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "billing.stack", "run"],
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while BANNER_END not in out.read_text(errors="replace"):
            assert proc.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.5)
        yield cwd, f"http://127.0.0.1:{api}", env
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _operator(cwd: Path, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """A command from the operator's shell: no BILLING_* at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    return subprocess.run(
        [".venv/bin/billing", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wait(fetch: Any, ok: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if ok(got):
            return got
        assert time.monotonic() < deadline, f"{what}: {str(got)[:2000]}"
        time.sleep(1)


def test_billing_demo_fills_every_console_source(
    project: tuple[Path, str, dict[str, str]],
) -> None:
    cwd, api, _env = project
    print(f"demo e2e seed={SEED} (BILLING_E2E_SEED to replay)")
    started = time.monotonic()
    demo = _operator(cwd, "demo", "--users", "4", "--months", "1", "--seed", str(SEED), timeout=300)
    took = time.monotonic() - started
    print(demo.stdout)
    assert demo.returncode == 0, (demo.stdout[-3000:], demo.stderr[-3000:])
    # bounded output: a summary on stdout, the progress bar on stderr
    assert len(demo.stdout.splitlines()) <= 12, demo.stdout
    assert len(demo.stderr) < 5000, demo.stderr[-2000:]
    assert "reconciliation run" in demo.stdout

    token = _operator(cwd, "token", "--user", "ops-demo", "--admin", timeout=60).stdout.strip()
    http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    # Subscriptions page: the demo's users, their payments (renewals among them) and refunds.
    subs = http.get("/api/v1/admin/subscriptions", params={"limit": 100}).json()["items"]
    demo_subs = [s for s in subs if s["user_id"].startswith("demo-")]
    assert len(demo_subs) >= 4, subs
    kinds: set[str] = set()
    refunds = 0
    for sub in demo_subs:
        detail = http.get(f"/api/v1/admin/subscriptions/{sub['subscription_id']}").json()
        kinds |= {p["kind"] for p in detail["payments"]}
        refunds += sum(r["status"] == "succeeded" for r in detail["refunds"])
    assert {"purchase", "renewal", "retry", "upgrade"} <= kinds, kinds
    assert refunds >= 2, refunds  # a partial and a full refund (and the duplicate's)

    # Reconciliation page: the run found every planted class and repaired the repairable.
    run = http.get("/api/v1/admin/reconciliation/runs", params={"limit": 1}).json()["items"][0]
    assert run["status"] == "finished", run
    counts = run["counts"]
    for kind in ("missing_internal", "duplicate_charge", "status_mismatch", "amount_mismatch"):
        assert counts[kind] >= 1, counts
    items = http.get(
        "/api/v1/admin/reconciliation/discrepancies",
        params={"run_id": run["run_id"], "open_only": "false", "limit": 100},
    ).json()["items"]
    repaired = {i["kind"] for i in items if i["resolution"] == "repaired"}
    assert {"missing_internal", "duplicate_charge", "status_mismatch"} <= repaired, items
    assert any(i["kind"] == "amount_mismatch" and i["resolution"] is None for i in items), items

    # Overview and analytics pages (ClickHouse, fed by the history worker as it catches up).
    def overview() -> dict[str, Any]:
        body: dict[str, Any] = http.get("/api/v1/admin/analytics/overview").json()
        return body

    got = _wait(
        overview,
        lambda o: (
            o.get("revenue")
            and o.get("success")
            and o.get("declines")
            and o.get("mrr")
            and any(r["refunds"] > 0 for r in o.get("refund_rate", []))
            and o.get("active", {}).get("total", 0) >= 1
        ),
        "overview series",
    )
    assert sum(d["payments"] for d in got["revenue"]) >= 4
    chart = _wait(  # the last 30 days of the stack's clock
        lambda: http.get("/api/v1/admin/analytics/discrepancies").json(),
        lambda rows: isinstance(rows, list) and rows,
        "discrepancies per day (copied to ClickHouse every 10 s)",
    )
    assert {r["kind"] for r in chart} >= {"duplicate_charge"}, chart
    print(f"demo e2e: billing demo --users 4 --months 1 took {took:.0f}s; run counts {counts}")


def test_history_worker_pages_need_the_credential(
    project: tuple[Path, str, dict[str, str]],
) -> None:
    _cwd, _api, env = project
    page = f"{env['BILLING_HISTORY_URL']}/analytics/overview/"
    assert httpx.get(page, timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer " + "x" * len(HISTORY_TOKEN)}
    assert httpx.get(page, headers=wrong, timeout=30).status_code == 401
    right = {"Authorization": f"Bearer {HISTORY_TOKEN}"}
    assert httpx.get(page, headers=right, timeout=60).status_code == 200


def test_logs_of_the_run_hold_no_secret_and_no_error(
    project: tuple[Path, str, dict[str, str]],
) -> None:
    """After the stack's start and the demo (the test above): every process's log."""
    from billing.config import Settings

    cwd, _api, env = project
    defaults = Settings()
    dsn = env["BILLING_POSTGRES_DSN"]
    secrets = {
        defaults.jwt_secret.get_secret_value(),  # the stack's (the default dev secret)
        defaults.yookassa_secret_key.get_secret_value(),
        dsn,
        HISTORY_TOKEN,
        (cwd / ".state" / "console-password").read_text().strip(),
        _operator(cwd, "token", "--user", "ops-demo", "--admin", timeout=60).stdout.strip(),
    }
    if password := urlsplit(dsn).password:
        secrets.add(password)
    logs = sorted((cwd / ".state" / "logs").glob("*.log"))
    names = {p.stem for p in logs}
    assert {"api", "worker", "history", "emulator", "maintenance", "console"} <= names, names
    # as written, JSON-escaped or percent-encoded (tests/unit/test_secret_scan.py plants some)
    assert secrets_in(logs, secrets) == []
    errors: list[str] = []
    for path in logs:
        text = path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record["level"] in ("ERROR", "CRITICAL"):
                    errors.append(f"{path.name}: {record['msg'][:300]}")
            elif "Traceback" in line or " ERROR " in line:
                errors.append(f"{path.name}: {line[:300]}")
    assert not errors, errors[:10]
