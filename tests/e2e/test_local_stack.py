"""The local stack as ``make run`` starts it (``python -m billing.stack run``), and the
README's commands run as written against it (issue 15): the walk-through (bash, no
``uuidgen``), ``billing token``, ``billing reconcile … --wait`` and ``--show``, which find the
stack's settings in ``.state/stack.env``. Then the stack is restarted: readiness comes from
the new run's output, and the emulator still knows the payment made before."""

from __future__ import annotations

import base64
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.fixtures.postgres import FreshDatabase

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BANNER_END = "Ctrl-C stops everything."
START_TIMEOUT_S = 240


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


@dataclass
class LocalStack:
    cwd: Path
    env: dict[str, str]
    api: str
    emulator: str
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def out(self) -> Path:
        return self.cwd / f"stack-{self.runs}.out"

    def start(self) -> str:
        self.runs += 1
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "billing.stack", "run"],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.out.read_text(errors="replace")
            if BANNER_END in text:
                return text
            assert self.proc.poll() is None, f"the stack exited:\n{text[-3000:]}"
            time.sleep(0.5)
        raise TimeoutError(f"the stack is not ready:\n{self.out.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def sh(self, script: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """A README block run by bash in the project layout (``.venv`` beside ``.state``)."""
        script = script.replace("localhost:8000", self.api).replace("localhost:8081", self.emulator)
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.cwd,
            env=self.cli_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @property
    def cli_env(self) -> dict[str, str]:
        """The operator's shell: no BILLING_* at all (the CLI must find the stack's)."""
        return {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}


@pytest.fixture(scope="module")
def local_stack(
    tmp_path_factory: pytest.TempPathFactory, fresh_database: FreshDatabase
) -> Iterator[LocalStack]:
    cwd = tmp_path_factory.mktemp("project")
    (cwd / ".venv").symlink_to(Path(sys.executable).parents[1])
    kafka, _controller, api, emulator, history, console, web = _ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update(
        BILLING_POSTGRES_DSN=fresh_database("stack"),
        BILLING_KAFKA_BOOTSTRAP=f"127.0.0.1:{kafka}",
        BILLING_API_PORT=str(api),
        BILLING_EMULATOR_PORT=str(emulator),
        BILLING_HISTORY_PORT=str(history),
        BILLING_HISTORY_URL=f"http://127.0.0.1:{history}",
        BILLING_DASHBOARD_PORT=str(console),
        BILLING_WORKER_WEB_PORT=str(web),
        BILLING_RECON_NIGHTLY="false",
    )
    stack = LocalStack(cwd, env, f"127.0.0.1:{api}", f"127.0.0.1:{emulator}")
    try:
        yield stack
    finally:
        stack.stop()


def _readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block under {heading}"
    return match.group(1)


def _readme_commands(prefix: str) -> list[str]:
    """README lines that run ``prefix`` (comments cut off), in order."""
    lines = []
    for line in (ROOT / "README.md").read_text().splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith(prefix):
            lines.append(line)
    return lines


def test_make_run_then_the_readme_commands_as_written(local_stack: LocalStack) -> None:
    banner = local_stack.start()
    heads = [line.split()[0] for line in banner.splitlines()[-10:] if line.strip()]
    assert heads[-10:] == [
        "kafka", "postgres", "emulator", "history", "console",
        "api", "logs", "settings", "dev", "Ctrl-C",
    ]  # fmt: skip
    assert "logs       .state/logs  (kafka: .state/kafka/broker.log)" in banner
    assert (local_stack.cwd / ".state" / "logs" / "api.log").is_file()
    assert (local_stack.cwd / ".state" / "stack.env").is_file()

    walk = local_stack.sh(
        _readme_block("Paying for a plan (local stack)") + "echo PAID=$PROVIDER_PAYMENT_ID"
    )
    assert walk.returncode == 0, walk.stderr[-3000:]
    assert '"status":"active"' in walk.stdout.replace(" ", "")
    provider_id = walk.stdout.rsplit("PAID=", 1)[1].strip()
    assert provider_id

    token = local_stack.sh(".venv/bin/billing token --user ops-1 --admin")
    assert token.returncode == 0 and token.stdout.count(".") == 2, token.stderr

    # The README's reconciliation commands (a fixed past window: nothing to report), then
    # today's window, which holds the payment above; --show prints a run.
    fixed = [c for c in _readme_commands(".venv/bin/billing reconcile") if "--registry" not in c]
    assert fixed, "no reconcile command in the README"
    for command in fixed:
        if "--show" in command:
            continue
        done = local_stack.sh(command)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    today = datetime.now(ZoneInfo("Europe/Moscow")).date()
    run = local_stack.sh(
        f".venv/bin/billing reconcile --from {today} --to {today + timedelta(days=1)} --wait"
    )
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-2000:])
    assert re.search(r"matched\s+│?\s*1\b", run.stdout), run.stdout[-3000:]
    run_id = re.search(r"run (\S{36})", run.stdout)
    assert run_id
    shown = local_stack.sh(f".venv/bin/billing reconcile --show {run_id.group(1)}")
    assert shown.returncode == 0 and "finished" in shown.stdout, shown.stdout[-2000:]

    # Restart: this run's readiness (the old logs say Ready already), and the emulator
    # still has the payment.
    local_stack.stop()
    assert not (local_stack.cwd / ".state" / "stack.env").exists()
    local_stack.start()
    auth = base64.b64encode(b"100500:emulator-secret").decode()
    resp = httpx.get(
        f"http://{local_stack.emulator}/v3/payments/{provider_id}",
        headers={"Authorization": f"Basic {auth}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "succeeded"
