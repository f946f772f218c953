"""Request metrics for the API: every answer counted and timed by route template.

The outermost middleware, so refusals made by the layers inside it (a 413, an overload 503)
are counted too. The label is the template the router matched (``scope["route"].path``, e.g.
``/api/v1/payments/{payment_id}``), ``unmatched`` for a 404 without a route: a client sending
random paths cannot grow the series.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing import metrics

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Label children by their values: ``labels()`` takes a lock and builds a key on each
        # call; the set of (route, method, status) is bounded (templates, not raw paths).
        self._latency: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]  # an exception with no answer sent is what the server answers

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            latency = self._latency.get((route, method))
            if latency is None:
                latency = self._latency[(route, method)] = metrics.HTTP_LATENCY.labels(
                    route, method
                )
            latency.observe(elapsed)
            counter = self._requests.get((route, method, status[0]))
            if counter is None:
                counter = self._requests[(route, method, status[0])] = metrics.HTTP_REQUESTS.labels(
                    route, method, str(status[0])
                )
            counter.inc()
