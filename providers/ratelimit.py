"""How fast we call one shop at YooKassa: a token bucket per shop, a bound on calls in flight,
and a pause for everyone after a 429.

YooKassa publishes no numeric limit (YOOKASSA-API.md §6): it answers 429 when we go too fast.
At a midnight renewal peak every gateway task wants the provider at once; without a limit the
429s come back as unknown outcomes, the retries and re-drives multiply the calls (issue 13
measured 7.8 creates per payment) and the peak is amplified instead of drained. So calls
start at a steady rate (``provider_rate_per_s``, bursts up to ``provider_burst``), at most
``provider_max_in_flight`` run at once (the SDK is synchronous: each holds a thread), and a
429 stops every call to the shop for its Retry-After (capped), not only the one that got it.

The arithmetic is pure (``Bucket``, ``retry_after_s``, ``pause_after_429_s``) and tested on
its own (tests/unit/test_provider_policy.py); ``Gate`` only sleeps as they say.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any


@dataclass
class Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved. ``reserve`` takes a
    token now or in the future and says how long to wait for it, so callers queue in order
    without polling (the level may go negative: those tokens are promised)."""

    rate: float
    burst: float
    level: float
    at: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> Bucket:
        return cls(rate=rate, burst=burst, level=burst, at=now)

    def reserve(self, now: float) -> float:
        """Take one token; seconds until it is due (0: at once)."""
        if now > self.at:
            self.level = min(self.burst, self.level + (now - self.at) * self.rate)
            self.at = now
        self.level -= 1.0
        return 0.0 if self.level >= 0 else -self.level / self.rate


def retry_after_s(header: str | None, body: Mapping[str, Any] | None, now: float) -> float | None:
    """The wait a 429 (or 202) asks for: the ``Retry-After`` header (seconds, or an HTTP date
    against ``now``, epoch seconds), else the body's ``retry_after`` (milliseconds, as the
    SDK reads it); None when neither says."""
    if header:
        value = header.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    raw = (body or {}).get("retry_after")
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return max(0.0, float(raw) / 1000.0)
    return None


def pause_after_429_s(asked: float | None, backoff: float, cap: float) -> float:
    """How long every call to the shop waits after a 429: what it asked for, else our own
    backoff, never beyond ``cap`` (a provider asking for an hour must not stop billing for an
    hour; the retry budget counts on the cap)."""
    return min(cap, asked if asked is not None else backoff)


class Gate:
    """The limits of one shop, shared by every call of one provider instance."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._bucket = Bucket.full(rate_per_s, float(burst), clock())
        self._slots = asyncio.Semaphore(max_in_flight)
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Stop every call that has not started for ``seconds`` from now (a 429)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a token, a pause to end and a free slot; hold the slot for one call."""
        wait = self._bucket.reserve(self._clock())
        if wait > 0:
            await asyncio.sleep(wait)
        async with self._slots:
            # A later 429 may extend the pause while we sleep: look again after each wait.
            while (left := self._paused_until - self._clock()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(left)
            yield
