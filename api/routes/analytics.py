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

Conventions are the queries': days and months UTC, amounts in integer minor units per
currency (never summed across currencies), windows ``[from, to)``; ``from``/``to``/``at`` are
ISO 8601 instants with a zone, defaulting to the last 30 days up to now (the engine's clock).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Annotated, Any

import httpx
import msgspec
from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from analytics import queries, recon
from api.deps import SettingsDep, get_admin_user
from api.errors import ApiError, InvalidRange, Unprocessable
from billing.clock import now_ms
from billing.config import Settings
from schemas.http import (
    ActiveSubscribersOut,
    DeclineReasonOut,
    DiscrepancyDayOut,
    DunningMonth,
    MrrMonth,
    OverviewOut,
    RefundRateOut,
    RevenueDay,
    SuccessDay,
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
DEFAULT_DAYS = 30
MAX_WINDOW_DAYS = 3 * 366
ERRORS = error_responses(401, 403, 422, 503)


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
Direct = Callable[[Any], Any]  # a call of analytics.queries on an open ClickHouse client


def _server_url(settings: Settings) -> str | None:
    secret = settings.clickhouse_url
    url = secret.get_secret_value() if secret is not None else ""
    return url if url.startswith(("http://", "https://")) else None


async def _ask_worker(
    request: Request, settings: Settings, name: str, params: Mapping[str, str]
) -> Any:
    base = settings.history_url.rstrip("/")
    if not base:
        raise AnalyticsUnavailable("no history worker is configured (BILLING_HISTORY_URL)")
    # Tests put a fake worker here; otherwise the network.
    transport: httpx.AsyncBaseTransport | None = getattr(
        request.app.state, "analytics_transport", None
    )
    try:
        async with httpx.AsyncClient(timeout=QUERY_TIMEOUT_S, transport=transport) as client:
            resp = await client.get(f"{base}/analytics/{name}/", params=dict(params))
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


async def _ask_server(request: Request, url: str, name: str, direct: Direct) -> Any:
    try:
        client = await _server_client(request, url)
        result = await asyncio.to_thread(direct, client)
    except Exception as exc:
        log.warning("analytics: ClickHouse query %s failed: %r", name, exc)
        raise AnalyticsUnavailable(
            "ClickHouse did not answer", details={"query": name, "reason": type(exc).__name__}
        ) from exc
    return msgspec.to_builtins(result)


async def ask(
    request: Request,
    settings: Settings,
    name: str,
    params: Mapping[str, str],
    direct: Direct,
    shape: Any,
) -> Any:
    """One named query, from the server or the history worker, validated into ``shape``
    (the same JSON either way: the worker answers ``msgspec.to_builtins`` of the same
    dataclasses)."""
    url = _server_url(settings)
    try:
        async with asyncio.timeout(QUERY_TIMEOUT_S + 5):
            if url is not None:
                raw = await _ask_server(request, url, name, direct)
            else:
                raw = await _ask_worker(request, settings, name, params)
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


# ---------------------------------------------------------------------------- parameters
FromQuery = Annotated[
    AwareDatetime | None, Query(alias="from", description="window start (default: to - 30 d)")
]
ToQuery = Annotated[AwareDatetime | None, Query(description="window end, excluded (default: now)")]
AtQuery = Annotated[AwareDatetime | None, Query(description="the instant (default: now)")]


def window(from_: datetime | None, to: datetime | None) -> tuple[int, int]:
    to_ms = dt_to_ms(to) if to is not None else now_ms()
    from_ms = dt_to_ms(from_) if from_ is not None else to_ms - DEFAULT_DAYS * 86_400_000
    if from_ms >= to_ms:
        raise InvalidRange()
    if to_ms - from_ms > MAX_WINDOW_DAYS * 86_400_000:
        raise WindowTooLong()
    return from_ms, to_ms


def _window_params(from_ms: int, to_ms: int) -> dict[str, str]:
    return {"from": str(from_ms), "to": str(to_ms)}


# -------------------------------------------------------------------------------- routes
@router.get("/overview", response_model=OverviewOut, responses=ERRORS)
async def overview(request: Request, settings: SettingsDep, at: AtQuery = None) -> Any:
    """The overview page: revenue, payment success, declines, refund rate and dunning of the
    30 days before ``at``, active subscribers at ``at``, MRR movements of 12 months."""
    at_ms = dt_to_ms(at) if at is not None else now_ms()
    result = await ask(
        request,
        settings,
        "overview",
        {"at": str(at_ms)},
        lambda ch: queries.overview(ch, at_ms),
        OverviewOut,
    )
    return result


@router.get("/revenue", response_model=list[RevenueDay], responses=ERRORS)
async def revenue(
    request: Request, settings: SettingsDep, from_: FromQuery = None, to: ToQuery = None
) -> Any:
    """Gross, refunds and net per day, currency and plan (revenue per plan)."""
    f, t = window(from_, to)
    return await ask(
        request,
        settings,
        "revenue_by_day",
        _window_params(f, t),
        lambda ch: queries.revenue_by_day(ch, f, t),
        list[RevenueDay],
    )


@router.get("/payment-success", response_model=list[SuccessDay], responses=ERRORS)
async def payment_success(
    request: Request, settings: SettingsDep, from_: FromQuery = None, to: ToQuery = None
) -> Any:
    """Payments that reached a terminal state per day: succeeded, canceled, the rate."""
    f, t = window(from_, to)
    return await ask(
        request,
        settings,
        "payment_success",
        _window_params(f, t),
        lambda ch: queries.payment_success(ch, f, t),
        list[SuccessDay],
    )


@router.get("/decline-reasons", response_model=list[DeclineReasonOut], responses=ERRORS)
async def decline_reasons(
    request: Request, settings: SettingsDep, from_: FromQuery = None, to: ToQuery = None
) -> Any:
    """Canceled payments by the provider's reason and party, with their share."""
    f, t = window(from_, to)
    return await ask(
        request,
        settings,
        "decline_reasons",
        _window_params(f, t),
        lambda ch: queries.decline_reasons(ch, f, t),
        list[DeclineReasonOut],
    )


@router.get("/refund-rate", response_model=list[RefundRateOut], responses=ERRORS)
async def refund_rate(
    request: Request, settings: SettingsDep, from_: FromQuery = None, to: ToQuery = None
) -> Any:
    """Refunds against gross per currency over the window."""
    f, t = window(from_, to)
    return await ask(
        request,
        settings,
        "refund_rate",
        _window_params(f, t),
        lambda ch: queries.refund_rate(ch, f, t),
        list[RefundRateOut],
    )


@router.get("/dunning", response_model=list[DunningMonth], responses=ERRORS)
async def dunning(
    request: Request, settings: SettingsDep, from_: FromQuery = None, to: ToQuery = None
) -> Any:
    """Dunning episodes started in the window per month: recovered, lost, still open."""
    f, t = window(from_, to)
    return await ask(
        request,
        settings,
        "dunning_recovery",
        _window_params(f, t),
        lambda ch: queries.dunning_recovery(ch, f, t),
        list[DunningMonth],
    )


@router.get("/mrr", response_model=list[MrrMonth], responses=ERRORS)
async def mrr(
    request: Request,
    settings: SettingsDep,
    months: Annotated[int, Query(ge=1, le=60)] = 12,
    from_month: Annotated[
        date | None, Query(description="the first month (default: months back from now)")
    ] = None,
) -> Any:
    """MRR at each month's close and its movements: new, expansion, contraction, churn, with
    subscriber counts and the churn rate."""
    first = (from_month or queries.month_start(now_ms(), months - 1)).replace(day=1)
    params = {"months": str(months), "from_month": first.isoformat()}
    return await ask(
        request,
        settings,
        "mrr_movements",
        params,
        lambda ch: queries.mrr_movements(ch, first, months),
        list[MrrMonth],
    )


@router.get("/active-subscribers", response_model=ActiveSubscribersOut, responses=ERRORS)
async def active_subscribers(request: Request, settings: SettingsDep, at: AtQuery = None) -> Any:
    """Subscriptions with access at ``at``, in total and per plan."""
    at_ms = dt_to_ms(at) if at is not None else now_ms()
    return await ask(
        request,
        settings,
        "active_subscribers",
        {"at": str(at_ms)},
        lambda ch: queries.active_subscribers(ch, at_ms),
        ActiveSubscribersOut,
    )


__all__ = ["AnalyticsUnavailable", "router"]


@router.get("/discrepancies", response_model=list[DiscrepancyDayOut], responses=ERRORS)
async def discrepancies(
    request: Request, settings: SettingsDep, from_: FromQuery = None, to: ToQuery = None
) -> Any:
    """Reconciliation discrepancies per day first found, class and current status."""
    f, t = window(from_, to)
    return await ask(
        request,
        settings,
        "discrepancies_by_day",
        _window_params(f, t),
        lambda ch: recon.discrepancies_by_day(ch, f, t),
        list[DiscrepancyDayOut],
    )
