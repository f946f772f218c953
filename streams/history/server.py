"""The analytics queries over HTTP, in the history worker (streams/history/).

``GET /analytics/<name>/?<params>``: the query ``name`` of analytics/dispatch.py, which checks
the parameters (the same checks the admin API applies before it asks here), answered as
``msgspec.to_builtins`` of the query's result. The API reaches the embedded store only through
this loopback page, never by opening the store (one process per data directory). 404
``unknown_query``, 400 ``bad_query``; 401 without ``Bearer BILLING_HISTORY_TOKEN`` when that
is set (prod requires it; otherwise the page binds to loopback by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from analytics import dispatch
from billing.clickhouse import ClickHouse
from billing.config import HistoryTokenFields

UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "BILLING_HISTORY_TOKEN expected"}}


def register_queries(
    app: Any, client: Callable[[], Awaitable[ClickHouse]], auth: HistoryTokenFields
) -> None:
    @app.page("/analytics/{name}/")
    async def analytics(self: Any, request: Any, name: str) -> Any:
        if not auth.history_authorized(request.headers.get("Authorization")):
            return self.json(UNAUTHORIZED, status=401)
        try:
            call = dispatch.prepare(name, request.query)
        except dispatch.UnknownQuery:
            return self.json({"error": {"code": "unknown_query", "message": name}}, status=404)
        except dispatch.BadQuery as exc:
            return self.json({"error": {"code": "bad_query", "message": str(exc)}}, status=400)
        result = await asyncio.to_thread(call.run, await client())
        return self.json(msgspec.to_builtins(result))
