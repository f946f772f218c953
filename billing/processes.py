"""Child processes of the local stack and of the end-to-end tests: start, wait until ready,
stop gracefully (SIGTERM) or kill (SIGKILL, for crash tests). Output goes to a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
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


def log_contains(path: Path, needle: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return needle in path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    return probe
