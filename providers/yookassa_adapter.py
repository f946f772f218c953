"""YooKassa behind the PaymentProvider port, through the official ``yookassa`` SDK.

The SDK is synchronous, configured process-wide and sets no HTTP timeout (YOOKASSA-API.md
§8). So every call runs in this provider's own thread pool under our deadline, with a client
bound to this provider's credentials (several providers can live in one process), a socket
timeout (a hung call cannot pin a thread for ever) and the SDK's own 202 retries switched off
(they end in an AttributeError; ours use the same key and a known backoff). Callers are async
and many (the gateway holds hundreds of requests at a peak): each call first passes the
shop's ``providers.ratelimit.Gate`` (token bucket, calls in flight, a pause for everyone
after a 429 for its Retry-After, which the SDK drops and ``_BoundClient`` keeps).

Idempotence-Key = our payment id (refund id for refunds), fixed before the first attempt, so
a retry can only ever re-obtain the same payment. The retry policy is two pure functions,
``should_retry`` and ``backoff_s``, after stripe-python's. The key holds 24 h only: the
gateway stops creating well before (its safe window leaves hours for these seconds of
retries) and then finds our objects by the ids the create put in ``metadata``
(``find_payment``, ``find_refund``: list pages of 100 by ``created_at``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from yookassa import Configuration, Payment, Refund
from yookassa.client import ApiClient
from yookassa.domain.exceptions import ApiError

from billing import metrics
from billing.config import ProviderSettings
from providers.port import (
    PROVIDER_STATUSES,
    ProviderError,
    ProviderNotFound,
    ProviderPayment,
    ProviderRefund,
    ProviderRejected,
    ProviderThrottled,
    ProviderUnavailable,
    normalise,
)
from providers.ratelimit import Gate, pause_after_429_s, retry_after_s
from schemas.messages import MethodDetails, PaymentRequest
from schemas.money import Money
from schemas.receipts import Receipt

log = logging.getLogger(__name__)

__all__ = [
    "PROVIDER_STATUSES",
    "YooKassaProvider",
    "backoff_s",
    "normalise",
    "retry_wait_s",
    "should_retry",
]

T = TypeVar("T")

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 5.0
# HTTP statuses whose outcome is unknown: the operation may have happened.
_UNKNOWN_HTTP = {202, 429}


# ---------------------------------------------------------------------------- retry policy
def should_retry(error: BaseException, attempt: int, max_attempts: int = 3) -> bool:
    """Retry (same key) only an unknown outcome, and only while attempts remain.

    ``attempt`` is the number of attempts already made (1 after the first). A definite
    rejection is never retried: the same body would be refused again.
    """
    if attempt >= max_attempts:
        return False
    return isinstance(error, ProviderError) and error.unknown


def backoff_s(
    attempt: int,
    rng: random.Random,
    *,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
) -> float:
    """Sleep before attempt ``attempt + 1``: base doubling per attempt, capped, jittered to
    0.5-1.0 times, so that many gateways retrying one outage do not arrive together."""
    raw = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    return raw * rng.uniform(0.5, 1.0)


def retry_wait_s(error: ProviderError, backoff: float, retry_after_cap_s: float) -> float:
    """The wait before retrying ``error``: a 429 waits what it asked for (else the backoff),
    capped; anything else the backoff. The settings' retry budget
    (``ProviderSettings.provider_retry_budget_s``) is the sum of these at their largest."""
    if isinstance(error, ProviderThrottled):
        return pause_after_429_s(error.retry_after_s, backoff, retry_after_cap_s)
    return backoff


def classify(exc: BaseException) -> ProviderError:
    """Any failure of an SDK call as a port error; unknown unless certainly refused."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, TimeoutError):
        return ProviderUnavailable("no answer within the deadline", code="timeout")
    if isinstance(exc, ApiError):
        content = exc.content if isinstance(exc.content, dict) else {}
        http = int(getattr(exc, "HTTP_CODE", 0) or 0)
        code = str(content.get("code") or content.get("type") or f"http_{http}")
        detail = str(content.get("description") or type(exc).__name__)
        if content.get("parameter"):
            detail = f"{detail} (parameter {content['parameter']})"
        if http == 404:
            return ProviderNotFound(detail, code=code)
        if http == 400 and content.get("parameter") == "Idempotence-Key" and "duplicat" in detail:
            # Our key was used with another body (the receipt settings changed while the
            # request was in flight, say): an operation may exist under it, so this is never
            # "nothing was created". Unknown: re-driven, then found by reading.
            return ProviderUnavailable(detail, code="idempotence_key_reused")
        if http == 429:
            asked = retry_after_s(getattr(exc, "retry_after_header", None), content, time.time())
            return ProviderThrottled(detail, code=code, retry_after_s=asked)
        if 400 <= http < 500 and http not in _UNKNOWN_HTTP:
            return ProviderRejected(detail, code=code)
        # 5xx, 202 processing, 429, or a status the SDK does not name (HTTP_CODE 0).
        return ProviderUnavailable(detail, code=code)
    if isinstance(exc, AttributeError | requests.RequestException | OSError):
        # The SDK turns a connection failure into AttributeError (exc.response is None).
        return ProviderUnavailable(f"connection failed: {type(exc).__name__}", code="connection")
    # A 200 we could not parse also lands here: the operation may have happened.
    return ProviderUnavailable(f"unexpected {type(exc).__name__}: {exc}", code="unexpected")


# ------------------------------------------------------------------------------- parsing
def _as_dict(obj: Any) -> Mapping[str, Any]:
    """A raw dict stays; an SDK response object becomes its nested dict."""
    if isinstance(obj, Mapping):
        return obj
    return dict(obj)


def _money(raw: Any) -> Money:
    data = _as_dict(raw)
    return Money.from_decimal(str(data["value"]), str(data["currency"]))


def parse_payment(obj: Any) -> ProviderPayment:
    """An SDK ``PaymentResponse`` or a raw API/notification dict → ProviderPayment.

    Of the card only what YooKassa returns as displayable is kept, for the wallet (issue 16):
    type, title, first6/last4, expiry, card type, issuer; and only for a saved method.
    """
    data = _as_dict(obj)
    confirmation = data.get("confirmation") or {}
    cancellation = data.get("cancellation_details") or {}
    method = data.get("payment_method") or {}
    metadata = data.get("metadata") or {}
    return ProviderPayment(
        provider_payment_id=str(data["id"]),
        status=str(data["status"]),
        amount=_money(data["amount"]),
        paid=bool(data.get("paid", False)),
        metadata={str(k): str(v) for k, v in _as_dict(metadata).items()},
        confirmation_url=_as_dict(confirmation).get("confirmation_url"),
        cancellation_party=_as_dict(cancellation).get("party"),
        cancellation_reason=_as_dict(cancellation).get("reason"),
        payment_method_id=_as_dict(method).get("id"),
        payment_method_saved=bool(_as_dict(method).get("saved", False)),
        payment_method=_method_details(_as_dict(method)),
        created_at=data.get("created_at"),
        receipt_registration=_text(data.get("receipt_registration")),
    )


def _text(value: Any) -> str | None:
    return str(value)[:32] if value else None


def _method_details(method: Mapping[str, Any]) -> MethodDetails | None:
    """The displayable part of a saved ``payment_method`` (short strings only)."""
    if not method.get("saved"):
        return None
    card = _as_dict(method.get("card") or {})

    def text(value: Any) -> str | None:
        return value[:64] if isinstance(value, str) and value else None

    return MethodDetails(
        type=text(method.get("type")) or "bank_card",
        title=text(method.get("title")),
        first6=text(card.get("first6")),
        last4=text(card.get("last4")),
        expiry_month=text(card.get("expiry_month")),
        expiry_year=text(card.get("expiry_year")),
        card_type=text(card.get("card_type")),
        issuer_country=text(card.get("issuer_country")),
        issuer_name=text(card.get("issuer_name")),
    )


def parse_refund(obj: Any) -> ProviderRefund:
    data = _as_dict(obj)
    cancellation = _as_dict(data.get("cancellation_details") or {})
    metadata = _as_dict(data.get("metadata") or {})
    return ProviderRefund(
        provider_refund_id=str(data["id"]),
        provider_payment_id=str(data["payment_id"]),
        status=str(data["status"]),
        amount=_money(data["amount"]),
        created_at=data.get("created_at"),
        cancellation_reason=cancellation.get("reason"),
        metadata={str(k): str(v) for k, v in metadata.items()},
        receipt_registration=_text(data.get("receipt_registration")),
    )


def build_create_body(
    request: PaymentRequest, subscription_id: str, receipt: Receipt | None = None
) -> dict[str, Any]:
    """The create body. It depends only on the request (the receipt is built from it), so
    every retry sends the same one under the same key (a different body under a used key is a
    400)."""
    body: dict[str, Any] = {
        "amount": request.amount.to_provider(),
        "capture": request.capture,
        "metadata": {
            "payment_id": request.payment_id,
            "subscription_id": subscription_id,
            "user_id": request.user_id,
            "command_id": request.command_id,
            "plan_id": request.plan_id,
        },
    }
    if request.description:
        body["description"] = request.description[:128]
    if request.payment_method_id:
        # Autopayment: charge the saved method now, no user, no confirmation.
        body["payment_method_id"] = request.payment_method_id
    else:
        body["confirmation"] = {"type": "redirect", "return_url": request.return_url}
        body["save_payment_method"] = request.save_payment_method
    if receipt is not None:
        body["receipt"] = receipt.to_provider()
    return body


def _iso(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- SDK binding
class _TimeoutAdapter(HTTPAdapter):
    """requests with a socket timeout, which the SDK never passes."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(max_retries=0)
        self._timeout_s = timeout_s

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout_s
        return super().send(request, *args, **kwargs)


_last_response = threading.local()  # per SDK thread: the Retry-After of its last answer


class _KeptSession(requests.Session):
    """A session the SDK cannot close. The SDK opens a session for every call and closes it
    after, so every call paid a new TCP connection (and, against YooKassa itself, a TLS
    handshake: milliseconds of CPU and two round trips). One of these per SDK thread keeps its
    connections alive across calls; ``SessionPool.close`` really closes them."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        adapter = _TimeoutAdapter(timeout_s)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def close(self) -> None:  # the SDK's, after each call
        pass

    def shut(self) -> None:
        super().close()


class SessionPool:
    """One kept session per SDK thread (a ``requests.Session`` is not for sharing between
    threads), all closed with the provider."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[_KeptSession] = []

    def get(self) -> requests.Session:
        session: _KeptSession | None = getattr(self._local, "session", None)
        if session is None:
            session = _KeptSession(self._timeout_s)
            self._local.session = session
            with self._lock:
                self._all.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            sessions, self._all = self._all, []
        for session in sessions:
            session.shut()


class _BoundClient(ApiClient):  # type: ignore[misc]
    """The SDK client with this provider's endpoint and credentials, not the global ones, and
    the Retry-After header kept (the SDK raises from the body only)."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        _last_response.retry_after = None
        try:
            response = super().execute(*args, **kwargs)
        except Exception as exc:  # an error status comes as requests' HTTPError
            answer = getattr(exc, "response", None)
            if answer is not None:
                _last_response.retry_after = answer.headers.get("Retry-After")
            raise
        _last_response.retry_after = response.headers.get("Retry-After")
        return response

    def __init__(self, api_url: str, shop_id: str, secret: str, sessions: SessionPool) -> None:
        super().__init__()
        self.endpoint = api_url
        self.shop_id = shop_id
        self.shop_password = secret
        self.auth_token = None
        self._sessions = sessions

    def get_session(self) -> requests.Session:
        return self._sessions.get()


def _bound(sdk_class: type[Any], factory: Callable[[], ApiClient]) -> type[Any]:
    """A subclass of ``Payment``/``Refund`` whose instances use our client."""

    def __init__(self: Any) -> None:
        self.client = factory()

    return type(f"Bound{sdk_class.__name__}", (sdk_class,), {"__init__": __init__})


def _keeping_retry_after(fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` for the SDK thread: an ApiError it raises carries the Retry-After header seen
    by that thread's client (``classify`` reads it)."""

    def run() -> T:
        try:
            return fn()
        except ApiError as exc:
            exc.retry_after_header = getattr(_last_response, "retry_after", None)
            raise

    return run


# ------------------------------------------------------------------------------ provider
class YooKassaProvider:
    """``PaymentProvider`` over the official SDK. Build once per process from ProviderSettings."""

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        timeout_s: float | None = None,
        max_attempts: int | None = None,
        backoff_base_s: float | None = None,
        backoff_cap_s: float | None = None,
        rng: random.Random | None = None,
        max_workers: int | None = None,
    ) -> None:
        self.api_url = settings.provider_api_url.rstrip("/")
        self.timeout_s = settings.provider_timeout_s if timeout_s is None else timeout_s
        self.max_attempts = max(1, max_attempts or settings.provider_max_attempts)
        self._backoff = functools.partial(
            backoff_s,
            base_s=settings.provider_backoff_base_s if backoff_base_s is None else backoff_base_s,
            cap_s=settings.provider_backoff_cap_s if backoff_cap_s is None else backoff_cap_s,
        )
        self._retry_after_cap_s = settings.provider_retry_after_cap_s
        self._rng = rng or random.Random()
        in_flight = max_workers or settings.provider_max_in_flight
        self._gate = Gate(
            rate_per_s=settings.provider_rate_per_s,
            burst=settings.provider_burst,
            max_in_flight=in_flight,
        )
        shop_id = settings.yookassa_shop_id
        secret = settings.yookassa_secret_key.get_secret_value()
        # The SDK's ApiClient refuses to build without global credentials; ours override them.
        Configuration.configure(shop_id, secret, api_url=self.api_url)
        self._sessions = SessionPool(self.timeout_s + 1.0)  # the socket's own timeout

        def client() -> ApiClient:
            return _BoundClient(self.api_url, shop_id, secret, self._sessions)

        self._payment = _bound(Payment, client)
        self._refund = _bound(Refund, client)
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="yookassa")

    # ----------------------------------------------------------------------- plumbing
    async def _call(self, fn: Callable[[], T], op: str = "other") -> T:
        """One SDK call in our pool under our deadline, once the shop's gate lets it start
        (the deadline starts then). On a deadline the thread runs on (bounded by the socket
        timeout) and its result is dropped: outcome unknown. Counted and timed per attempt
        (billing_provider_calls_total, ..._duration_seconds)."""
        loop = asyncio.get_running_loop()
        outcome = "ok"
        try:
            async with self._gate.slot():
                with metrics.timed(metrics.PROVIDER_LATENCY.labels(op)):
                    return await asyncio.wait_for(
                        loop.run_in_executor(self._pool, _keeping_retry_after(fn)),
                        self.timeout_s,
                    )
        except TimeoutError as exc:
            outcome = "timeout"
            raise ProviderUnavailable(
                f"no answer within {self.timeout_s:g}s", code="timeout"
            ) from exc
        except Exception as exc:
            error = classify(exc)
            http = int(getattr(exc, "HTTP_CODE", 0) or 0) if isinstance(exc, ApiError) else 0
            outcome = metrics.provider_outcome(error, http)
            raise error from exc
        finally:
            metrics.PROVIDER_CALLS.labels(op, outcome).inc()

    async def _retrying(self, op: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._call(fn, op)
            except ProviderError as exc:
                delay = retry_wait_s(
                    exc, self._backoff(attempt, self._rng), self._retry_after_cap_s
                )
                if isinstance(exc, ProviderThrottled):
                    # Everyone waits, not only this call: the shop is over its limit.
                    self._gate.pause(delay)
                if not should_retry(exc, attempt, self.max_attempts):
                    raise
                log.warning(
                    "yookassa %s attempt %d: %s (%s); retrying in %.2fs",
                    op,
                    attempt,
                    exc.code,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------------ payments
    async def create_payment(
        self, request: PaymentRequest, subscription_id: str, *, receipt: Receipt | None = None
    ) -> ProviderPayment:
        """Create, or under the same key (our payment id) re-obtain, the payment."""
        body = build_create_body(request, subscription_id, receipt)
        key = request.payment_id
        resp = await self._retrying("create", lambda: self._payment.create(body, key))
        return parse_payment(resp)

    async def get_payment(self, provider_payment_id: str) -> ProviderPayment:
        resp = await self._retrying("get", lambda: self._payment.find_one(provider_payment_id))
        return parse_payment(resp)

    async def capture_payment(
        self, provider_payment_id: str, *, key: str, amount: Money | None = None
    ) -> ProviderPayment:
        """Capture a held (waiting_for_capture) payment; ``amount`` for a partial capture."""
        params = {"amount": amount.to_provider()} if amount is not None else None
        resp = await self._retrying(
            "capture", lambda: self._payment.capture(provider_payment_id, params, key)
        )
        return parse_payment(resp)

    async def cancel_payment(self, provider_payment_id: str, *, key: str) -> ProviderPayment:
        resp = await self._retrying(
            "cancel", lambda: self._payment.cancel(provider_payment_id, key)
        )
        return parse_payment(resp)

    async def list_payments(
        self,
        created_gte: datetime,
        created_lt: datetime,
        *,
        status: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[ProviderPayment]:
        """Every payment created in [gte, lt), newest first, page by page (cursor)."""
        params: dict[str, Any] = {
            "created_at.gte": _iso(created_gte),
            "created_at.lt": _iso(created_lt),
            "limit": page_size,
        }
        if status:
            params["status"] = status
        async for item in self._pages("list", self._payment.list, params):
            yield parse_payment(item)

    async def find_payment(
        self, payment_id: str, created_gte: datetime, created_lt: datetime
    ) -> ProviderPayment | None:
        """Our payment by its metadata, without creating: the read that replaces a create
        past the key window. The list is newest first; the first created match is kept (a
        later one would be a duplicate charge, reconciliation's to find and refund)."""
        found: ProviderPayment | None = None
        async for p in self.list_payments(created_gte, created_lt):
            if p.payment_id == payment_id:
                found = p
        return found

    async def _pages(
        self, op: str, lister: Callable[[dict[str, Any]], Any], params: dict[str, Any]
    ) -> AsyncIterator[Any]:
        cursor: str | None = None
        while True:
            page_params = dict(params, cursor=cursor) if cursor else dict(params)
            page = await self._retrying(op, lambda p=page_params: lister(p))  # type: ignore[misc]
            for item in page.items or []:
                yield item
            cursor = page.next_cursor
            if not cursor:
                return

    # ------------------------------------------------------------------------- refunds
    async def create_refund(
        self,
        provider_payment_id: str,
        amount: Money,
        *,
        refund_id: str,
        description: str = "",
        metadata: dict[str, str] | None = None,
        receipt: Receipt | None = None,
    ) -> ProviderRefund:
        """Refund (part of) a succeeded payment; Idempotence-Key = our refund id. The body
        depends only on the arguments, so a retry under the same key sends the same one."""
        body: dict[str, Any] = {
            "payment_id": provider_payment_id,
            "amount": amount.to_provider(),
            "metadata": {**(metadata or {}), "refund_id": refund_id},
        }
        if description:
            body["description"] = description[:128]
        if receipt is not None:
            body["receipt"] = receipt.to_provider()
        resp = await self._retrying("refund", lambda: self._refund.create(body, refund_id))
        return parse_refund(resp)

    async def get_refund(self, provider_refund_id: str) -> ProviderRefund:
        resp = await self._retrying("get_refund", lambda: self._refund.find_one(provider_refund_id))
        return parse_refund(resp)

    async def list_refunds(
        self,
        created_gte: datetime,
        created_lt: datetime,
        *,
        payment_id: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[ProviderRefund]:
        params: dict[str, Any] = {
            "created_at.gte": _iso(created_gte),
            "created_at.lt": _iso(created_lt),
            "limit": page_size,
        }
        if payment_id:
            params["payment_id"] = payment_id
        async for item in self._pages("list_refunds", self._refund.list, params):
            yield parse_refund(item)

    async def find_refund(
        self,
        refund_id: str,
        provider_payment_id: str,
        created_gte: datetime,
        created_lt: datetime,
    ) -> ProviderRefund | None:
        """Our refund of one provider payment by its metadata (``refund_id``), first created."""
        found: ProviderRefund | None = None
        async for r in self.list_refunds(created_gte, created_lt, payment_id=provider_payment_id):
            if r.metadata.get("refund_id") == refund_id:
                found = r
        return found

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sessions.close()
