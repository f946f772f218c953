"""The whole stack for end-to-end and chaos tests: its own broker (so restarts and offsets
are this test's own), a database of its own on the session's PostgreSQL, the emulator, the API
and N Faust workers as real processes, all on loopback free ports."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from billing.clock import set_clock_offset
from billing.kafka_local import KafkaBroker, ensure_topics, fetch_kafka_jars, free_port
from billing.processes import ManagedProcess, http_ok, log_contains
from tests.fixtures.emulator import EmulatorControl


class Stack:
    def __init__(
        self,
        root: Path,
        dsn: str,
        *,
        workers: int = 1,
        partitions: int = 4,
        extra_env: dict[str, str] | None = None,
        history: bool = False,
    ) -> None:
        self.root = root
        self.partitions = partitions
        self.kafka_port = free_port()
        self.broker = KafkaBroker(root / "kafka", self.kafka_port, free_port(), fetch_kafka_jars())
        self.dsn = dsn  # a migrated database of this stack's own
        self.api_port = free_port()
        self.emulator_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.emulator_url = f"http://127.0.0.1:{self.emulator_port}"
        self.worker_id = f"billing-{uuid.uuid4().hex[:6]}"
        self.env = dict(os.environ)
        self.clock_file = root / "clock"
        self.clock_offset_ms = 0
        set_clock_offset(self.clock_file, 0)
        self.env.update(
            BILLING_CLOCK_FILE=str(self.clock_file),
            BILLING_ENV="test",
            BILLING_STATE_DIR=str(root / "state"),
            BILLING_KAFKA_BOOTSTRAP=self.broker.bootstrap,
            BILLING_KAFKA_PARTITIONS=str(partitions),
            BILLING_POSTGRES_DSN=self.dsn,
            BILLING_API_PORT=str(self.api_port),
            BILLING_PUBLIC_BASE_URL=self.api_url,
            BILLING_EMULATOR_PORT=str(self.emulator_port),
            BILLING_EMULATOR_WEBHOOK_URL=f"{self.api_url}/api/v1/webhooks/yookassa",
            BILLING_YOOKASSA_API_URL=f"{self.emulator_url}/v3",
            BILLING_WORKER_ID=self.worker_id,
            BILLING_RELAY_DELAY_S="3",
            BILLING_RELAY_INTERVAL_S="0.5",
            BILLING_PAYMENT_DEADLINE_S="4",
            BILLING_SWEEP_INTERVAL_S="1",
            BILLING_PROVIDER_TIMEOUT_S="2",
            BILLING_BROKER_SESSION_TIMEOUT_S="6",
            BILLING_RECON_NIGHTLY="false",  # tests start their runs themselves
            PYTHONUNBUFFERED="1",
        )
        self.env.update(extra_env or {})
        self.history: ManagedProcess | None = None
        self.history_url = ""
        if history:
            port = free_port()
            self.history_url = f"http://127.0.0.1:{port}"
            self.env["BILLING_HISTORY_URL"] = self.history_url
            self.history = ManagedProcess.python(
                "history",
                ["streams.history", "worker", "-l", "info"],
                log_path=root / "logs" / "history.log",
                env=dict(
                    self.env,
                    BILLING_HISTORY_PORT=str(port),
                    BILLING_STATE_DIR=str(root / "state-history"),
                    BILLING_HISTORY_BATCH="500",
                ),
            )
        logs = root / "logs"
        self.emulator = ManagedProcess.python(
            "emulator", ["providers.emulator"], log_path=logs / "emulator.log", env=self.env
        )
        self.api = ManagedProcess.python("api", ["api"], log_path=logs / "api.log", env=self.env)
        self.workers = [self._worker(i) for i in range(workers)]

    def _worker(self, i: int) -> ManagedProcess:
        env = dict(
            self.env,
            BILLING_WORKER_WEB_PORT=str(free_port()),
            BILLING_STATE_DIR=str(self.root / f"state-worker-{i}"),
        )
        return ManagedProcess.python(
            f"worker-{i}",
            ["streams", "worker", "-l", "info"],
            log_path=self.root / "logs" / f"worker-{i}.log",
            env=env,
        )

    # ----------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.control = EmulatorControl(self.emulator_url)
        self.broker.start()
        asyncio.run(ensure_topics(self.broker.bootstrap, self.partitions))
        self.emulator.start()
        self.emulator.wait_ready(http_ok(f"{self.emulator_url}/__emulator/health"))
        self.api.start()
        self.api.wait_ready(http_ok(f"{self.api_url}/healthz"))
        for w in self.workers:
            self.start_worker(w)
        if self.history is not None:
            self.start_worker(self.history)

    def start_worker(self, w: ManagedProcess, timeout: float = 90) -> None:
        ready_marks = self._ready_count(w)
        w.start()
        w.wait_ready(lambda: self._ready_count(w) > ready_marks, timeout=timeout)

    @staticmethod
    def _ready_count(w: ManagedProcess) -> int:
        try:
            return w.log_path.read_text(errors="replace").count("[^Worker]: Ready")
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        if self.history is not None:
            self.history.stop()
        if hasattr(self, "control"):
            self.control.close()
        self.api.stop()
        self.emulator.stop()
        self.broker.stop()

    # ---------------------------------------------------------------------------- clock
    def now_ms(self) -> int:
        """The stack's clock (wall clock plus the offset every process reads)."""
        return int(time.time() * 1000) + self.clock_offset_ms

    def advance_clock(self, ms: int) -> None:
        """Move every process's clock forward (the emulator's too)."""
        self.clock_offset_ms += int(ms)
        set_clock_offset(self.clock_file, self.clock_offset_ms)
        self.control.advance_clock(ms / 1000)

    # -------------------------------------------------------------------------- helpers
    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.api_url, timeout=30)

    def emulator_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.emulator_url, timeout=30)

    def token(self, user: str, *, admin: bool = False) -> str:
        from api.auth import mint_token
        from billing.config import Settings

        roles = ("admin",) if admin else ()
        return mint_token(Settings(), user, roles=roles, ttl_s=3600)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 60,
    interval: float = 0.2,
    message: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


__all__ = ["Stack", "log_contains", "wait_until"]
