"""Child processes of the local stack and of the end-to-end tests: start, wait until ready,
stop gracefully (SIGTERM) or kill (SIGKILL, for crash tests). Output goes to a log file.

Also the stack's settings file (``<state dir>/stack.env``): the local stack writes the
settings it gave its children there, and the operator CLI (``billing …``) reads it for every
``BILLING_*`` variable its own environment leaves unset, so the README's commands work as
written against the running stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        # Where this run's output starts in the (appended) log: readiness is read after it.
        self.log_offset = 0

    @classmethod
    def python(
        cls, name: str, module_args: Sequence[str], *, log_path: Path, env: Mapping[str, str]
    ) -> ManagedProcess:
        return cls(name, [sys.executable, "-m", *module_args], log_path=log_path, env=env)

    def start(self) -> None:
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.log_offset = log.tell()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # Ctrl-C in the launcher's terminal is ours to forward
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def wait_ready(self, probe: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}\n{self.tail()}")
            if probe():
                return
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.name} not ready in {timeout}s; see {self.log_path}\n{self.tail()}"
        )

    def stop(self, timeout: float = 30.0) -> int | None:
        """Graceful stop: SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def output_contains(self, needle: str) -> Callable[[], bool]:
        """A probe for ``needle`` in this run's output only (not an earlier run's lines)."""
        return log_contains(self.log_path, needle, offset=self.log_offset)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return 200 <= int(resp.status) < 300
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    return probe


def log_contains(path: Path, needle: str, *, offset: int = 0) -> Callable[[], bool]:
    """A probe for ``needle`` in ``path`` from byte ``offset`` on."""

    def probe() -> bool:
        try:
            with path.open("rb") as f:
                f.seek(offset)
                return needle.encode() in f.read()
        except FileNotFoundError:
            return False

    return probe


STACK_ENV = "stack.env"
# Never written to stack.env: a secret the operator set stays in the operator's environment.
_UNSHARED = {
    "BILLING_JWT_SECRET",
    "BILLING_YOOKASSA_SECRET_KEY",
    "BILLING_DASHBOARD_ADMIN_PASSWORD_HASH",
    "BILLING_CLICKHOUSE_URL",
}


def write_stack_env(state_dir: Path, env: Mapping[str, str]) -> Path:
    """Write the stack's ``BILLING_*`` settings (secrets aside) to ``state_dir/stack.env``,
    mode 0600 (it holds the database DSN)."""
    path = state_dir / STACK_ENV
    tmp = path.with_suffix(".tmp")
    lines = [
        f"{k}={v}"
        for k, v in sorted(env.items())
        if k.startswith("BILLING_") and k not in _UNSHARED and "\n" not in v
    ]
    tmp.touch(mode=0o600)
    tmp.write_text(
        "# written by the local stack (python -m billing.stack run)\n" + "\n".join(lines) + "\n"
    )
    tmp.replace(path)
    return path


def read_stack_env(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value
    return out


def load_stack_env(environ: MutableMapping[str, str] | None = None) -> Path | None:
    """Fill the ``BILLING_*`` variables ``environ`` (os.environ) leaves unset from the running
    local stack's ``stack.env`` (under ``BILLING_STATE_DIR``, default ``.state``); a variable
    already set always wins. Returns the file read, or None when there is none."""
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    path = Path(env.get("BILLING_STATE_DIR") or ".state") / STACK_ENV
    if not path.is_file():
        return None
    for key, value in read_stack_env(path).items():
        env.setdefault(key, value)
    return path
