"""Run the emulator: in a background thread (tests, the local-stack launcher) or in the
foreground (``python -m providers.emulator``)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from billing.config import EmulatorSettings
from providers.emulator.app import Emulator, create_app
from providers.emulator.store import EmulatorConfig

log = logging.getLogger(__name__)


def config_from_settings(settings: EmulatorSettings) -> EmulatorConfig:
    return EmulatorConfig(
        shop_id=settings.yookassa_shop_id,
        secret_key=settings.yookassa_secret_key.get_secret_value(),
        webhook_url=settings.webhook_url,
        require_receipts=settings.receipts_enabled,
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class EmulatorServer:
    """uvicorn in a daemon thread. ``emulator`` gives direct access to state for tests."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.emulator = Emulator(config or EmulatorConfig())
        self.host = host
        self.port = port or free_port(host)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """What ``Configuration.configure(api_url=...)`` and BILLING_YOOKASSA_API_URL take."""
        return f"{self.url}/v3"

    def start(self, timeout_s: float = 10.0) -> None:
        self.emulator.stopping.clear()
        cfg = uvicorn.Config(
            create_app(self.emulator),
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(
            target=self._server.run, name="yookassa-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start on {self.url}")
            time.sleep(0.02)
        log.info("YooKassa emulator on %s", self.api_url)

    def stop(self) -> None:
        self.emulator.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
