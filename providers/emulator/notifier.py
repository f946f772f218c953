"""Notification delivery, YooKassa-style: POST the event to the webhook URL, redeliver on
anything but 200 with backoff for a bounded time, and misbehave on request (duplicate, late,
lost, out of order) so the receiving side's deduplication and monotonicity are exercised.

Notices of one object go through one worker, so without faults they arrive in order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

import httpx

from providers.emulator.faults import FaultBook
from providers.emulator.store import EmulatorConfig, Notice

log = logging.getLogger(__name__)

WORKERS = 4
OUT_OF_ORDER_GAP_S = 0.05


@dataclass
class Delivery:
    """One delivery attempt, kept for tests (``GET /__emulator/notifications``)."""

    event: str
    object_id: str
    object_status: str
    attempt: int
    outcome: str  # "200", another HTTP status, "error: ...", "lost", "held"
    at: float


class Notifier:
    def __init__(self, config: EmulatorConfig, faults: FaultBook) -> None:
        self.config = config
        self.faults = faults
        self.log: collections.deque[Delivery] = collections.deque(maxlen=20_000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: list[asyncio.Queue[Notice]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: dict[str, tuple[Notice, asyncio.TimerHandle]] = {}
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient()
        self._queues = [asyncio.Queue() for _ in range(WORKERS)]
        for i, q in enumerate(self._queues):
            self._spawn(self._worker(q), f"notify-worker-{i}")

    async def stop(self) -> None:
        for _, handle in self._held.values():
            handle.cancel()
        self._held.clear()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        self._loop = None

    def reset(self, config: EmulatorConfig) -> None:
        """New config, empty log, and nothing of the previous test still on its way."""
        self.config = config
        self.log.clear()
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._drop_pending)

    def _drop_pending(self) -> None:
        for _, handle in self._held.values():
            handle.cancel()
        self._held.clear()
        for q in self._queues:
            while not q.empty():
                q.get_nowait()
        for t in list(self._tasks):
            if not t.get_name().startswith("notify-worker"):
                t.cancel()

    def submit(self, notice: Notice) -> None:
        """Called from the store (any thread) on every status change."""
        loop = self._loop
        if loop is None or not self.config.webhook_url:
            return
        queue = self._queues[zlib.crc32(notice.object_id.encode()) % WORKERS]
        loop.call_soon_threadsafe(queue.put_nowait, notice)

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(self, notice: Notice, attempt: int, outcome: str) -> None:
        status = str(notice.body.get("object", {}).get("status", ""))
        self.log.append(
            Delivery(notice.event, notice.object_id, status, attempt, outcome, time.time())
        )

    async def _worker(self, queue: asyncio.Queue[Notice]) -> None:
        while True:
            notice = await queue.get()
            try:
                await self._dispatch(notice)
            except Exception:
                log.exception("notification %s for %s failed", notice.event, notice.object_id)

    async def _dispatch(self, notice: Notice) -> None:
        held = self._held.pop(notice.object_id, None)
        fault = self.faults.pick("notifications")
        kind = fault.kind if fault is not None else None
        if kind == "lost":
            self._record(notice, 0, "lost")
        elif kind == "late":
            assert fault is not None
            self._spawn(self._later(notice, fault.delay_s), "notify-late")
        elif kind == "out_of_order":
            assert fault is not None and self._loop is not None
            # Held until the next notice of the same object has gone (or delay_s passes).
            handle = self._loop.call_later(fault.delay_s, self._release, notice.object_id)
            self._held[notice.object_id] = (notice, handle)
            self._record(notice, 0, "held")
        else:
            await self._deliver(notice)
            if kind == "duplicate":
                await self._deliver(notice)
        if held is not None:
            held[1].cancel()
            self._spawn(self._later(held[0], OUT_OF_ORDER_GAP_S), "notify-reordered")

    def _release(self, object_id: str) -> None:
        held = self._held.pop(object_id, None)
        if held is not None:
            self._spawn(self._deliver(held[0]), "notify-released")

    async def _later(self, notice: Notice, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self._deliver(notice)

    async def _deliver(self, notice: Notice) -> None:
        """First attempt inline; redelivery (on failure) continues in the background."""
        if await self._attempt(notice, 1):
            return
        self._spawn(self._redeliver(notice), "notify-retry")

    async def _redeliver(self, notice: Notice) -> None:
        deadline = time.monotonic() + self.config.notify_retry_for_s
        backoff = self.config.notify_backoff_s
        attempt = 1
        while time.monotonic() + backoff < deadline:
            await asyncio.sleep(backoff)
            attempt += 1
            if await self._attempt(notice, attempt):
                return
            backoff = min(backoff * 2, self.config.notify_max_backoff_s)
        log.warning("notification %s for %s given up", notice.event, notice.object_id)

    async def _attempt(self, notice: Notice, attempt: int) -> bool:
        url = self.config.webhook_url
        if not url or self._client is None:
            return True
        try:
            resp = await self._client.post(
                url, json=notice.body, timeout=self.config.notify_timeout_s
            )
        except httpx.HTTPError as exc:
            self._record(notice, attempt, f"error: {type(exc).__name__}")
            return False
        self._record(notice, attempt, str(resp.status_code))
        return resp.status_code == 200
