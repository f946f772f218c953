"""A typed client of the admin API: the console's only way to read or change anything.

Synchronous (Streamlit scripts are), over httpx, with the API's own pydantic models as the
shapes of what it sends and reads.

Every write carries the caller's Idempotency-Key: one per user action, made by the page
(:class:`dashboard.state.ActionKeys`) before the first attempt and kept for every retry of
the same action, so a retry can only ever name the same refund or command. Retries follow
stripe-python's discipline (STYLE.md): only a connection failure or timeout, a 409
``idempotency_key_in_flight``, a 502/504 or a 503 that is transient; at most
``max_retries`` times, backoff from 0.5 s capped at 5 s with jitter.
"""

from __future__ import annotations

import functools
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.http import (
    ActiveSubscribersOut,
    AdminActionAccepted,
    AdminAutoRenew,
    AdminExtend,
    AdminGrant,
    AdminPlanOut,
    AdminReason,
    AdminRefundAccepted,
    AdminRefundCreate,
    AdminSubscriptionDetail,
    AdminSubscriptionPage,
    CommandOut,
    DeclineReasonOut,
    DiscrepancyDayOut,
    DiscrepancyPage,
    DunningMonth,
    MrrMonth,
    OverviewOut,
    PaymentMethodList,
    PlanCreate,
    PlanUpdate,
    PriceCreate,
    ReconciliationSummary,
    RefundRateOut,
    ResolutionCreate,
    ResolutionOut,
    RevenueDay,
    RunPage,
    SessionOut,
    SuccessDay,
    TrialsDay,
)
from schemas.http_promo import DiscountOut, PromoCreate, PromoOut, PromoRedemptionOut
from schemas.promo import PROMO_CODE_PATTERN

T = TypeVar("T")
R = TypeVar("R")

ANALYTICS_TIMEOUT_S = 45.0  # the API gives an analytical query 30 s
COMMAND_DONE = frozenset({"done", "rejected"})
# 503s that another attempt in a few seconds will not cure.
NOT_TRANSIENT_503 = frozenset(
    {"analytics_unavailable", "admin_login_disabled", "provider_unavailable"}
)


# --------------------------------------------------------------------------------- errors
class ApiError(Exception):
    """An answer of the API that is not a success, with its ``code`` (branch on that)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        """Another attempt of the same request (same key) may succeed."""
        if self.status == 409:
            return self.code == "idempotency_key_in_flight"
        if self.status == 503:
            return self.code not in NOT_TRANSIENT_503
        return self.status in (502, 504)


class ApiUnreachable(ApiError):
    """No answer at all (connection refused, timeout): the request may or may not have been
    done; retrying it with the same key is safe."""

    def __init__(self, reason: str) -> None:
        super().__init__(0, "unreachable", reason)

    @property
    def retryable(self) -> bool:
        return True


class SessionExpired(ApiError):
    """401: the token expired or is not accepted any more; log in again."""


class BadResponse(ApiError):
    """A 2xx whose body is not what this console expects (an API of another version)."""

    def __init__(self, message: str) -> None:
        super().__init__(200, "bad_response", message)


def error_of(resp: httpx.Response) -> ApiError:
    code, message, details = f"http_{resp.status_code}", resp.reason_phrase or "error", None
    try:
        body = resp.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
            details = err.get("details")
    except ValueError:
        pass
    retry_after: float | None = None
    header = resp.headers.get("retry-after")
    if header is not None:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    cls = SessionExpired if resp.status_code == 401 else ApiError
    return cls(resp.status_code, code, message, details, retry_after_s=retry_after)


# --------------------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    base_s: float = 0.5
    cap_s: float = 5.0

    def delay_s(
        self, attempt: int, retry_after_s: float | None = None, jitter: float = 1.0
    ) -> float:
        """Wait before retry number ``attempt`` (1-based): exponential from ``base_s``,
        capped, times a jitter in [0.5, 1]; never less than a Retry-After within the cap."""
        backoff = min(self.cap_s, self.base_s * float(2 ** (attempt - 1))) * (0.5 + 0.5 * jitter)
        if retry_after_s is not None:
            backoff = max(backoff, min(retry_after_s, self.cap_s))
        return backoff


NO_RETRY = RetryPolicy(max_retries=0)


# ---------------------------------------------------------------------------------- client
@dataclass
class AdminClient:
    """The admin API at ``base_url`` with an admin ``token`` (None: only ``login``)."""

    base_url: str
    token: str | None = None
    timeout_s: float = 15.0
    transport: httpx.BaseTransport | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random
    last_replayed: bool = False  # the last answer was a replay of a key's first answer

    def _client(self, timeout_s: float) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url.rstrip("/"),
            timeout=timeout_s,
            transport=self.transport,
            headers={"Accept": "application/json", "User-Agent": "cinema-billing-console"},
        )

    def _headers(self, idempotency_key: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> httpx.Response:
        """One request, retried per the policy with the same headers (the same key)."""
        if method != "GET" and idempotency_key is None and path != "/api/v1/admin/session":
            raise ValueError(f"{method} {path} needs an Idempotency-Key")
        policy = self.retry if retry is None else retry
        headers = self._headers(idempotency_key)
        clean = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        attempt = 0
        with self._client(timeout_s or self.timeout_s) as client:
            while True:
                try:
                    resp = client.request(method, path, params=clean, json=json, headers=headers)
                    if 200 <= resp.status_code < 300:
                        self.last_replayed = resp.headers.get("idempotent-replayed") == "true"
                        return resp
                    error = error_of(resp)
                except httpx.TransportError as exc:
                    error = ApiUnreachable(f"{type(exc).__name__}: {exc}")
                if not error.retryable or attempt >= policy.max_retries:
                    raise error
                attempt += 1
                self.sleep(policy.delay_s(attempt, error.retry_after_s, self.jitter()))

    def _get(
        self,
        path: str,
        shape: type[T] | Any,
        params: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        return _parse(self.request("GET", path, params=params, timeout_s=timeout_s), shape)

    def _post(self, path: str, body: BaseModel, key: str, shape: type[T] | Any) -> Any:
        payload = body.model_dump(mode="json", exclude_none=True)
        return _parse(self.request("POST", path, json=payload, idempotency_key=key), shape)

    # --------------------------------------------------------------------------- session
    def login(self, username: str, password: str) -> SessionOut:
        """POST /admin/session: retried only when the API did not answer."""
        resp = self.request(
            "POST",
            "/api/v1/admin/session",
            json={"username": username, "password": password},
            retry=RetryPolicy(max_retries=1) if self.retry.max_retries else NO_RETRY,
        )
        session: SessionOut = _parse(resp, SessionOut)
        return session

    # --------------------------------------------------------------------------- catalogue
    def plans(self) -> list[AdminPlanOut]:
        plans: list[AdminPlanOut] = self._get("/api/v1/admin/plans", list[AdminPlanOut])
        return plans

    def create_plan(self, body: PlanCreate, key: str) -> AdminPlanOut:
        plan: AdminPlanOut = self._post("/api/v1/admin/plans", body, key, AdminPlanOut)
        return plan

    def update_plan(self, plan_id: str, body: PlanUpdate, key: str) -> AdminPlanOut:
        resp = self.request(
            "PATCH",
            f"/api/v1/admin/plans/{_seg(plan_id)}",
            json=body.model_dump(mode="json", exclude_none=True),
            idempotency_key=key,
        )
        plan: AdminPlanOut = _parse(resp, AdminPlanOut)
        return plan

    def archive_plan(self, plan_id: str, reason: str, key: str) -> AdminPlanOut:
        plan: AdminPlanOut = self._post(
            f"/api/v1/admin/plans/{_seg(plan_id)}/archive",
            AdminReason(reason=reason),
            key,
            AdminPlanOut,
        )
        return plan

    def add_price(self, plan_id: str, body: PriceCreate, key: str) -> AdminPlanOut:
        plan: AdminPlanOut = self._post(
            f"/api/v1/admin/plans/{_seg(plan_id)}/prices", body, key, AdminPlanOut
        )
        return plan

    # ------------------------------------------------------------------ promo codes (16)
    def promo_codes(self, *, archived: bool = True) -> list[PromoOut]:
        codes: list[PromoOut] = self._get(
            "/api/v1/admin/promo-codes", list[PromoOut], {"archived": archived}
        )
        return codes

    def create_promo(self, body: PromoCreate, key: str) -> PromoOut:
        code: PromoOut = self._post("/api/v1/admin/promo-codes", body, key, PromoOut)
        return code

    def archive_promo(self, code: str, reason: str, key: str) -> PromoOut:
        out: PromoOut = self._post(
            f"/api/v1/admin/promo-codes/{_code(code)}/archive",
            AdminReason(reason=reason),
            key,
            PromoOut,
        )
        return out

    def promo_redemptions(self, code: str, *, limit: int = 500) -> list[PromoRedemptionOut]:
        rows: list[PromoRedemptionOut] = self._get(
            f"/api/v1/admin/promo-codes/{_code(code)}/redemptions",
            list[PromoRedemptionOut],
            {"limit": limit},
        )
        return rows

    def discounts(self, start: datetime, end: datetime) -> list[DiscountOut]:
        return self._window_series("discounts", DiscountOut, start, end)

    # ----------------------------------------------------------------------- subscriptions
    def subscriptions(
        self,
        *,
        user_id: str | None = None,
        status: str | None = None,
        plan_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> AdminSubscriptionPage:
        page: AdminSubscriptionPage = self._get(
            "/api/v1/admin/subscriptions",
            AdminSubscriptionPage,
            {
                "user_id": user_id or None,
                "status": status or None,
                "plan_id": plan_id or None,
                "cursor": cursor,
                "limit": limit,
            },
        )
        return page

    def subscription(
        self, subscription_id: str, *, events_after: int = 0, events_limit: int = 200
    ) -> AdminSubscriptionDetail:
        detail: AdminSubscriptionDetail = self._get(
            f"/api/v1/admin/subscriptions/{_uuid(subscription_id)}",
            AdminSubscriptionDetail,
            {"events_after": events_after, "events_limit": events_limit},
        )
        return detail

    def open_commands(self, *, status: str | None = None, limit: int = 100) -> list[CommandOut]:
        commands: list[CommandOut] = self._get(
            "/api/v1/admin/commands", list[CommandOut], {"status": status, "limit": limit}
        )
        return commands

    def command(self, command_id: str) -> CommandOut:
        command: CommandOut = self._get(f"/api/v1/admin/commands/{_uuid(command_id)}", CommandOut)
        return command

    def wait_command(
        self, command_id: str, *, timeout_s: float = 20.0, interval_s: float = 0.5
    ) -> CommandOut:
        """Poll an accepted command until the ledger is done with it (or rejected it), or
        until ``timeout_s``: then its status as it stands."""
        deadline = time.monotonic() + timeout_s
        while True:
            command = self.command(command_id)
            if command.status in COMMAND_DONE or time.monotonic() >= deadline:
                return command
            self.sleep(interval_s)

    # ----------------------------------------------------------------------------- actions
    def refund(self, payment_id: str, body: AdminRefundCreate, key: str) -> AdminRefundAccepted:
        accepted: AdminRefundAccepted = self._post(
            f"/api/v1/admin/payments/{_uuid(payment_id)}/refunds", body, key, AdminRefundAccepted
        )
        return accepted

    def cancel(self, subscription_id: str, reason: str, key: str) -> AdminActionAccepted:
        return self._action(subscription_id, "cancel", AdminReason(reason=reason), key)

    def extend(self, subscription_id: str, days: int, reason: str, key: str) -> AdminActionAccepted:
        return self._action(subscription_id, "extend", AdminExtend(days=days, reason=reason), key)

    def grant(
        self, subscription_id: str, plan_id: str, reason: str, key: str
    ) -> AdminActionAccepted:
        body = AdminGrant(plan_id=plan_id, reason=reason)
        return self._action(subscription_id, "grant", body, key)

    def set_auto_renew(
        self, subscription_id: str, enabled: bool, reason: str, key: str
    ) -> AdminActionAccepted:
        body = AdminAutoRenew(enabled=enabled, reason=reason)
        return self._action(subscription_id, "auto-renew", body, key)

    def payment_methods(self, subscription_id: str) -> PaymentMethodList:
        """A subscriber's saved payment methods (displayable details only)."""
        out: PaymentMethodList = self._get(
            f"/api/v1/admin/subscriptions/{_uuid(subscription_id)}/payment-methods",
            PaymentMethodList,
        )
        return out

    def _action(
        self, subscription_id: str, action: str, body: BaseModel, key: str
    ) -> AdminActionAccepted:
        accepted: AdminActionAccepted = self._post(
            f"/api/v1/admin/subscriptions/{_uuid(subscription_id)}/{action}",
            body,
            key,
            AdminActionAccepted,
        )
        return accepted

    # --------------------------------------------------------------------------- analytics
    def _analytics(self, name: str, shape: Any, params: Mapping[str, Any]) -> Any:
        return self._get(
            f"/api/v1/admin/analytics/{name}", shape, params, timeout_s=ANALYTICS_TIMEOUT_S
        )

    def _window_series(self, name: str, row: type[R], start: datetime, end: datetime) -> list[R]:
        """A per-day (per-month) series of ``row`` for the window [``start``, ``end``)."""
        shape = list[row]  # type: ignore[valid-type]  # built at run time from ``row``
        rows: list[R] = self._analytics(name, shape, {"from": start, "to": end})
        return rows

    def overview(self, *, at: datetime | None = None) -> OverviewOut:
        out: OverviewOut = self._analytics("overview", OverviewOut, {"at": at})
        return out

    def revenue(self, start: datetime, end: datetime) -> list[RevenueDay]:
        return self._window_series("revenue", RevenueDay, start, end)

    def payment_success(self, start: datetime, end: datetime) -> list[SuccessDay]:
        return self._window_series("payment-success", SuccessDay, start, end)

    def trials(self, start: datetime, end: datetime) -> list[TrialsDay]:
        return self._window_series("trials", TrialsDay, start, end)

    def decline_reasons(self, start: datetime, end: datetime) -> list[DeclineReasonOut]:
        return self._window_series("decline-reasons", DeclineReasonOut, start, end)

    def refund_rate(self, start: datetime, end: datetime) -> list[RefundRateOut]:
        return self._window_series("refund-rate", RefundRateOut, start, end)

    def dunning(self, start: datetime, end: datetime) -> list[DunningMonth]:
        return self._window_series("dunning", DunningMonth, start, end)

    def mrr(self, *, months: int = 12, from_month: date | None = None) -> list[MrrMonth]:
        rows: list[MrrMonth] = self._analytics(
            "mrr", list[MrrMonth], {"months": months, "from_month": from_month}
        )
        return rows

    def active_subscribers(self, *, at: datetime | None = None) -> ActiveSubscribersOut:
        out: ActiveSubscribersOut = self._analytics(
            "active-subscribers", ActiveSubscribersOut, {"at": at}
        )
        return out

    def discrepancy_history(self, start: datetime, end: datetime) -> list[DiscrepancyDayOut]:
        rows: list[DiscrepancyDayOut] = self._analytics(
            "discrepancies", list[DiscrepancyDayOut], {"from": start, "to": end}
        )
        return rows

    # ---------------------------------------------------------------------- reconciliation
    def recon_summary(self) -> ReconciliationSummary:
        out: ReconciliationSummary = self._get(
            "/api/v1/admin/reconciliation/summary", ReconciliationSummary
        )
        return out

    def recon_runs(self, *, limit: int = 20, offset: int = 0) -> RunPage:
        page: RunPage = self._get(
            "/api/v1/admin/reconciliation/runs", RunPage, {"limit": limit, "offset": offset}
        )
        return page

    def discrepancies(
        self,
        *,
        run_id: str | None = None,
        open_only: bool = True,
        kinds: list[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> DiscrepancyPage:
        page: DiscrepancyPage = self._get(
            "/api/v1/admin/reconciliation/discrepancies",
            DiscrepancyPage,
            {
                "run_id": run_id,
                "open_only": open_only,
                "kind": kinds or None,
                "limit": limit,
                "offset": offset,
            },
        )
        return page

    def resolve(self, body: ResolutionCreate, key: str) -> ResolutionOut:
        out: ResolutionOut = self._post(
            "/api/v1/admin/reconciliation/resolutions", body, key, ResolutionOut
        )
        return out


# --------------------------------------------------------------------------------- helpers
def _param(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_param(v) for v in value]
    return value


def _uuid(value: str) -> str:
    """Ids in paths are UUIDs: anything else is refused here rather than sent."""
    return str(uuid.UUID(str(value).strip()))


_PLAN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _seg(value: str) -> str:
    """A plan id in a path: the API's own pattern, so nothing can escape the segment."""
    if not _PLAN_ID.match(value):
        raise ValueError(f"not a plan id: {value!r}")
    return value


_PROMO_CODE = re.compile(PROMO_CODE_PATTERN)


def _code(value: str) -> str:
    """A promo code in a path: the API's own pattern, so nothing can escape the segment."""
    if not _PROMO_CODE.match(value):
        raise ValueError(f"not a promo code: {value!r}")
    return value


@functools.cache
def _adapter(shape: Any) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def _parse(resp: httpx.Response, shape: Any) -> Any:
    try:
        return _adapter(shape).validate_json(resp.content)
    except ValidationError as exc:
        raise BadResponse(
            f"{resp.request.method} {resp.request.url.path} answered an unexpected body"
            f" ({exc.error_count()} problems); is the API another version?"
        ) from exc
