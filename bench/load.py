"""Open-loop HTTP load: requests start on a fixed schedule whatever the answers do, so a slow
server cannot slow the offered rate down (no coordinated omission). Latency is measured from
the *scheduled* start; ``lag`` (actual start - scheduled start) shows when the client itself
fell behind.

The client is aiohttp (installed with faust-streaming): on 2 cores the load generator shares
the CPU with the server, and aiohttp costs several times less CPU per request than httpx.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.common import percentile


@dataclass
class Sample:
    i: int
    due: float  # scheduled start (loop clock)
    start: float
    end: float
    status: int  # HTTP status, 0 for a client-side error (timeout, connection)
    error: str = ""

    @property
    def latency(self) -> float:
        return self.end - self.due

    @property
    def service(self) -> float:
        return self.end - self.start

    @property
    def lag(self) -> float:
        return self.start - self.due


Request = Callable[[int], Awaitable[int]]


async def open_loop(rate: float, count: int, request: Request) -> tuple[list[Sample], float]:
    """Start ``request(i)`` for i in range(count) at ``rate`` per second; returns the samples
    and the wall time from the first scheduled start to the last answer."""
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []

    async def one(i: int, due: float) -> None:
        start = loop.time()
        try:
            status = await request(i)
            err = ""
        except Exception as exc:
            status, err = 0, type(exc).__name__
        samples.append(Sample(i, due, start, loop.time(), status, err))

    t0 = loop.time() + 0.05
    tasks = []
    for i in range(count):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    wall = max(s.end for s in samples) - t0
    return samples, wall


def summary(samples: list[Sample], ok: Callable[[int], bool]) -> dict[str, float]:
    good = [s for s in samples if ok(s.status)]
    lat = [s.latency * 1000 for s in good]
    span = (max(s.end for s in samples) - min(s.due for s in samples)) if samples else 0
    return {
        "sent": len(samples),
        "ok": len(good),
        "errors": len(samples) - len(good),
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else float("nan"),
        "lag_p99_ms": percentile([s.lag * 1000 for s in samples], 99),
        "achieved_rps": len(good) / span if span > 0 else float("nan"),
    }


def now() -> float:
    return time.monotonic()
