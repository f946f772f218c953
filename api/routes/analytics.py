"""Admin analytics (admin role): the series behind the console's overview and analytics
pages, answered from the ClickHouse history by the queries of ``analytics/queries.py``.

Where the answers come from:
- a ClickHouse server (``BILLING_CLICKHOUSE_URL`` = ``http(s)://…``): asked directly, from a
  thread (the client is synchronous);
- otherwise (embedded chdb, the local stack): the history worker owns the store, one process
  per data directory (STACK-NOTES), so the API never opens it and asks the worker's loopback
  web page ``BILLING_HISTORY_URL``/analytics/<query>/ instead.
When neither answers, 503 ``analytics_unavailable``: the console says so and the rest of it
keeps working.

Which query answers which route, and how its parameters are checked and defaulted, is the
table of ``analytics/dispatch.py``, the one the history worker answers from too: the routes
only turn their typed parameters into its wire form (epoch ms, ISO months).

Conventions are the queries': days and months UTC, amounts in integer minor units per
currency (never summed across currencies), windows ``[from, to)``; ``from``/``to``/``at`` are
ISO 8601 instants with a zone, defaulting to the last 30 days up to now (the engine's clock).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Annotated, Any

import httpx
import msgspec
from fastapi import APIRouter, Depends, Query, Request
from pydantic import TypeAdapter, ValidationError

from analytics import dispatch
from api.deps import SettingsDep, get_admin_user
from api.errors import ApiError, InvalidRange, Unprocessable, ValidationFailed
from billing.clock import now_ms
from billing.config import ApiSettings
from schemas.http import (
    ActiveSubscribersOut,
    DeclineReasonOut,
    DiscrepancyDayOut,
    DunningMonth,
    Instant,
    MrrMonth,
    OverviewOut,
    RefundRateOut,
    RevenueDay,
    SuccessDay,
    TrialsDay,
    error_responses,
)
from schemas.periods import dt_to_ms

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/api/v1/admin/analytics",
    tags=["analytics"],
    dependencies=[Depends(get_admin_user)],
)

QUERY_TIMEOUT_S = 30.0  # an analytical query over years of history takes seconds
MAX_WINDOW_DAYS = dispatch.MAX_WINDOW_DAYS
ERRORS = error_responses(401, 403, 422, 503)
# A date in the history's range (analytics.dispatch.FIRST_MONTH..LAST_MONTH: ClickHouse's
# and epoch milliseconds' dates start in 1970), on a day every month has: the document then
# says exactly what the dispatcher accepts (0001-01-01 was a 503, 1969-06-01 a traceback).
FIRST_MONTH_PATTERN = r"^(19[7-9][0-9]|20[0-9]{2}|2100)-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])$"


class AnalyticsUnavailable(ApiError):
    status_code = 503
    code = "analytics_unavailable"
    message = "the analytics history cannot be asked now; the rest of the API works"

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        super().__init__(message, details=details, headers={"Retry-After": "30"})


class WindowTooLong(Unprocessable):
    code = "window_too_long"
    message = f"a window is at most {MAX_WINDOW_DAYS} days"


# -------------------------------------------------------------------------------- backends
def _server_url(settings: ApiSettings) -> str | None:
    secret = settings.clickhouse_url
    url = secret.get_secret_value() if secret is not None else ""
    return url if url.startswith(("http://", "https://")) else None


async def _ask_worker(request: Request, settings: ApiSettings, call: dispatch.Call) -> Any:
    base = settings.history_url.rstrip("/")
    name = call.name
    if not base:
        raise AnalyticsUnavailable("no history worker is configured (BILLING_HISTORY_URL)")
    # Tests put a fake worker here; otherwise the network.
    transport: httpx.AsyncBaseTransport | None = getattr(
        request.app.state, "analytics_transport", None
    )
    try:
        async with httpx.AsyncClient(timeout=QUERY_TIMEOUT_S, transport=transport) as client:
            resp = await client.get(
                f"{base}/analytics/{name}/", params=call.params, headers=settings.history_headers()
            )
    except httpx.HTTPError as exc:
        log.warning("analytics: the history worker at %s did not answer: %r", base, exc)
        raise AnalyticsUnavailable(
            "the history worker does not answer (is it running?)",
            details={"query": name, "reason": type(exc).__name__},
        ) from exc
    if resp.status_code != 200:
        log.warning("analytics: %s/%s answered %s: %s", base, name, resp.status_code, resp.text)
        raise AnalyticsUnavailable(
            f"the history worker answered {resp.status_code} to {name}",
            details={"query": name, "status": resp.status_code},
        )
    try:
        return resp.json()
    except ValueError as exc:
        raise AnalyticsUnavailable("the history worker answered something other than JSON") from exc


async def _server_client(request: Request, url: str) -> Any:
    client = getattr(request.app.state, "analytics_clickhouse", None)
    if client is not None:
        return client
    lock: asyncio.Lock = request.app.state.__dict__.setdefault(
        "_analytics_clickhouse_lock", asyncio.Lock()
    )
    async with lock:
        client = getattr(request.app.state, "analytics_clickhouse", None)
        if client is None:
            from billing.clickhouse import connect

            client = await asyncio.to_thread(connect, url, migrate=False)
            request.app.state.analytics_clickhouse = client
    return client


async def _ask_server(request: Request, url: str, call: dispatch.Call) -> Any:
    try:
        client = await _server_client(request, url)
        result = await asyncio.to_thread(call.run, client)
    except Exception as exc:
        log.warning("analytics: ClickHouse query %s failed: %r", call.name, exc)
        raise AnalyticsUnavailable(
            "ClickHouse did not answer", details={"query": call.name, "reason": type(exc).__name__}
        ) from exc
    return msgspec.to_builtins(result)


def prepare(name: str, params: Mapping[str, str]) -> dispatch.Call:
    """The dispatcher's checks, answered as the API's errors."""
    try:
        return dispatch.prepare(name, params, now=now_ms())
    except dispatch.BadQuery as exc:
        if exc.code == "invalid_range":
            raise InvalidRange() from exc
        if exc.code == "window_too_long":
            raise WindowTooLong() from exc
        raise ValidationFailed(str(exc)) from exc


async def ask(
    request: Request, settings: ApiSettings, name: str, params: Mapping[str, str], shape: Any
) -> Any:
    """One named query, from the server or the history worker, validated into ``shape``
    (the same JSON either way: the worker answers ``msgspec.to_builtins`` of the same
    dataclasses)."""
    call = prepare(name, params)
    url = _server_url(settings)
    try:
        async with asyncio.timeout(QUERY_TIMEOUT_S + 5):
            if url is not None:
                raw = await _ask_server(request, url, call)
            else:
                raw = await _ask_worker(request, settings, call)
    except TimeoutError as exc:
        raise AnalyticsUnavailable(
            "the analytics query timed out", details={"query": name}
        ) from exc
    try:
        return TypeAdapter(shape).validate_python(raw)
    except ValidationError as exc:
        log.warning("analytics: %s answered an unexpected shape: %s", name, exc)
        raise AnalyticsUnavailable(
            f"the history answered {name} in an unexpected shape (version skew?)"
        ) from exc


Ask = Callable[[str, Mapping[str, str], Any], Awaitable[Any]]


def _asker(request: Request, settings: SettingsDep) -> Ask:
    async def bound(name: str, params: Mapping[str, str], shape: Any) -> Any:
        return await ask(request, settings, name, params, shape)

    return bound


AskDep = Annotated[Ask, Depends(_asker)]


# ---------------------------------------------------------------------------- parameters
def _ms(name: str, value: datetime | None) -> dict[str, str]:
    return {name: str(dt_to_ms(value))} if value is not None else {}


def _window(
    from_: Annotated[
        Instant | None,
        Query(alias="from", description="window start, RFC 3339 (default: to - 30 d)"),
    ] = None,
    to: Annotated[
        Instant | None,
        Query(
            description="window end, excluded, RFC 3339 (default: now); after from (422"
            f" invalid_range) and at most {MAX_WINDOW_DAYS} days after it (422 window_too_long)"
        ),
    ] = None,
) -> dict[str, str]:
    return _ms("from", from_) | _ms("to", to)


def _instant(
    at: Annotated[Instant | None, Query(description="the instant (default: now)")] = None,
) -> dict[str, str]:
    return _ms("at", at)


Window = Annotated[dict[str, str], Depends(_window)]
At = Annotated[dict[str, str], Depends(_instant)]


# -------------------------------------------------------------------------------- routes
@router.get("/overview", response_model=OverviewOut, responses=ERRORS)
async def overview(ask: AskDep, at: At) -> Any:
    """The overview page: revenue, payment success, declines, refund rate and dunning of the
    30 days before ``at``, active subscribers at ``at``, MRR movements of 12 months."""
    return await ask("overview", at, OverviewOut)


@router.get("/revenue", response_model=list[RevenueDay], responses=ERRORS)
async def revenue(ask: AskDep, window: Window) -> Any:
    """Gross, refunds and net per day, currency and plan (revenue per plan)."""
    return await ask("revenue_by_day", window, list[RevenueDay])


@router.get("/payment-success", response_model=list[SuccessDay], responses=ERRORS)
async def payment_success(ask: AskDep, window: Window) -> Any:
    """Payments that reached a terminal state per day: succeeded, canceled, the rate."""
    return await ask("payment_success", window, list[SuccessDay])


@router.get("/trials", response_model=list[TrialsDay], responses=ERRORS)
async def trials(ask: AskDep, window: Window) -> Any:
    """Free trials started per day in the window and how many converted (issue 16)."""
    return await ask("trials", window, list[TrialsDay])


@router.get("/decline-reasons", response_model=list[DeclineReasonOut], responses=ERRORS)
async def decline_reasons(ask: AskDep, window: Window) -> Any:
    """Canceled payments by the provider's reason and party, with their share."""
    return await ask("decline_reasons", window, list[DeclineReasonOut])


@router.get("/refund-rate", response_model=list[RefundRateOut], responses=ERRORS)
async def refund_rate(ask: AskDep, window: Window) -> Any:
    """Refunds against gross per currency over the window."""
    return await ask("refund_rate", window, list[RefundRateOut])


@router.get("/dunning", response_model=list[DunningMonth], responses=ERRORS)
async def dunning(ask: AskDep, window: Window) -> Any:
    """Dunning episodes started in the window per month: recovered, lost, still open."""
    return await ask("dunning_recovery", window, list[DunningMonth])


@router.get("/mrr", response_model=list[MrrMonth], responses=ERRORS)
async def mrr(
    ask: AskDep,
    months: Annotated[int, Query(ge=1, le=60)] = 12,
    from_month: Annotated[
        str | None,
        Query(
            pattern=FIRST_MONTH_PATTERN,
            description="the first month: a date from 1970-01-01 to 2100-12-28 (day 01 to 28;"
            " the month it is in counts); default: months back from now",
            examples=["2026-01-01"],
        ),
    ] = None,
) -> Any:
    """MRR at each month's close and its movements: new, expansion, contraction, churn, with
    subscriber counts and the churn rate."""
    first = {"from_month": from_month} if from_month is not None else {}
    return await ask("mrr_movements", {"months": str(months)} | first, list[MrrMonth])


@router.get("/active-subscribers", response_model=ActiveSubscribersOut, responses=ERRORS)
async def active_subscribers(ask: AskDep, at: At) -> Any:
    """Subscriptions with access at ``at``, in total and per plan."""
    return await ask("active_subscribers", at, ActiveSubscribersOut)


@router.get("/discrepancies", response_model=list[DiscrepancyDayOut], responses=ERRORS)
async def discrepancies(ask: AskDep, window: Window) -> Any:
    """Reconciliation discrepancies per day first found, class and current status."""
    return await ask("discrepancies_by_day", window, list[DiscrepancyDayOut])


__all__ = ["AnalyticsUnavailable", "router"]
