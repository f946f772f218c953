"""Admission control and rate limits: the API refuses what it cannot serve in time, at once,
rather than queueing it until every answer is late (issue 14).

- :class:`Admission` bounds the requests one process works on at once; a few more may wait a
  bounded time for a place, anything beyond is refused at once (503 ``overloaded``). Under
  three times its capacity the process keeps serving what it admitted at full speed.
- :class:`RateLimiter` is a token bucket per key (a user's writes, a client address's logins,
  the webhook endpoint): beyond its rate a key is refused (429 ``rate_limited``).

Both answer with ``Retry-After`` in the API's one error shape, and both count per process:
with ``api_workers`` processes (or replicas) a key may get up to that many times its rate.
The pure parts (the bucket arithmetic, the admission queue) take their clock as a parameter so
unit tests drive them without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Annotated

from fastapi import Depends, Request

from api.errors import ApiError
from billing.config import ApiSettings

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_KEYS = 100_000  # buckets kept per limiter; the least recently used are forgotten first


# ------------------------------------------------------------------------------- errors
def retry_after_s(wait_s: float) -> int:
    """Whole seconds for ``Retry-After`` (RFC 9110: delay-seconds), at least 1."""
    return max(1, math.ceil(wait_s))


class RateLimited(ApiError):
    status_code = 429
    code = "rate_limited"
    message = "too many requests; retry after the time in Retry-After"

    def __init__(self, wait_s: float, *, scope: str) -> None:
        wait = retry_after_s(wait_s)
        super().__init__(
            details={"scope": scope, "retry_after_s": wait}, headers={"Retry-After": str(wait)}
        )


class Overloaded(ApiError):
    status_code = 503
    code = "overloaded"
    message = "the API is at capacity; retry after the time in Retry-After"

    def __init__(self, wait_s: float = 1.0) -> None:
        wait = retry_after_s(wait_s)
        super().__init__(details={"retry_after_s": wait}, headers={"Retry-After": str(wait)})


# ---------------------------------------------------------------------------- the bucket
class RateLimiter:
    """Token buckets per key: ``rate`` tokens a second up to ``burst``; a request takes one.
    A rate of 0 or less turns the limiter off."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, cost: float = 1.0) -> float | None:
        """Take ``cost`` tokens from ``key``'s bucket: None when allowed, else the seconds
        until it would be (nothing is taken then)."""
        if not self.enabled:
            return None
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return None
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        return (cost - tokens) / self.rate


# ------------------------------------------------------------------------------ admission
class Admission:
    """At most ``max_in_flight`` requests at once; up to ``max_waiting`` more wait for a place
    (first come, first served) at most ``max_wait_s``; the rest are refused at once.

    A place is handed straight from the request that leaves to the oldest waiter, so a waiter
    cannot be overtaken by a newcomer."""

    def __init__(self, max_in_flight: int, max_waiting: int, max_wait_s: float) -> None:
        self.max_in_flight = max(1, max_in_flight)
        self.max_waiting = max(0, max_waiting)
        self.max_wait_s = max(0.0, max_wait_s)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.refused = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_enter(self) -> bool:
        """Take a place now if one is free and nobody waits for one."""
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def enter(self) -> bool:
        """True: admitted (call :meth:`leave` when done). False: refused, at once when the
        queue is full, else after ``max_wait_s``."""
        if self.try_enter():
            return True
        if len(self._waiters) >= self.max_waiting or self.max_wait_s <= 0:
            self.refused += 1
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.max_wait_s)
            return True
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self.leave()  # handed a place just as the wait ended: pass it on
            else:
                fut.cancel()
                self._remove(fut)
            if isinstance(exc, TimeoutError):
                self.refused += 1
                return False
            raise

    def _remove(self, fut: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(fut)

    def leave(self) -> None:
        """Give the place back: to the oldest waiter still waiting, else free it."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.in_flight -= 1


# ------------------------------------------------------------------------ client address
def parse_networks(cidrs: Sequence[str]) -> list[IpNetwork]:
    """Parsed once at start-up: a bad CIDR in the settings fails the start, not a request."""
    return [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]


def _ip(raw: str | None) -> IpAddress | None:
    if not raw:
        return None
    try:
        ip = ipaddress.ip_address(raw.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _in(ip: IpAddress, networks: Sequence[IpNetwork]) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IpNetwork]
) -> str:
    """The real client's address. The peer itself, unless it is one of our trusted proxies:
    then the X-Forwarded-For hops are read from the right (each proxy appends the address it
    saw) and the first one that is not a trusted proxy is the client; what lies left of it
    is whatever the client claimed. ``"-"`` when nothing usable is known."""
    ip = _ip(peer)
    if ip is None:
        return peer or "-"
    if not trusted or not _in(ip, trusted) or not forwarded_for:
        return str(ip)
    for hop in reversed(forwarded_for.split(",")):
        hop_ip = _ip(hop)
        if hop_ip is None:
            return str(ip)  # a hop we cannot read: trust nothing left of it
        if not _in(hop_ip, trusted):
            return str(hop_ip)
        ip = hop_ip
    return str(ip)


# --------------------------------------------------------------------- the app's limits
class Limits:
    """The limiters of one API process, built from its settings (``app.state.limits``)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.trusted_proxies = parse_networks(settings.api_trusted_proxies)
        self.writes = RateLimiter(
            settings.rate_limit_writes_per_s, settings.rate_limit_writes_burst
        )
        self.logins = RateLimiter(
            settings.rate_limit_logins_per_min / 60.0, settings.rate_limit_logins_burst
        )
        self.webhooks = RateLimiter(
            settings.rate_limit_webhooks_per_s, settings.rate_limit_webhooks_burst
        )

    def client(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.get("x-forwarded-for"), self.trusted_proxies)


async def get_limits(request: Request) -> Limits:
    limits: Limits | None = getattr(request.app.state, "limits", None)
    if limits is None:
        limits = Limits(request.app.state.settings)
        request.app.state.limits = limits
    return limits


LimitsDep = Annotated[Limits, Depends(get_limits)]


def check(limiter: RateLimiter, key: str, scope: str) -> None:
    """Raise 429 ``rate_limited`` when ``key`` is over ``limiter``'s rate."""
    wait = limiter.take(key)
    if wait is not None:
        raise RateLimited(wait, scope=scope)


async def limit_logins(request: Request, limits: LimitsDep) -> None:
    """Login attempts per real client address (failures are throttled apart, per username)."""
    check(limits.logins, limits.client(request), "login")


async def limit_webhooks(limits: LimitsDep) -> None:
    """The webhook endpoint as a whole (YooKassa redelivers what it is refused)."""
    check(limits.webhooks, "webhook", "webhook")
