"""One error tree, one JSON shape: ``{"error": {"code", "message", "details"}}``.

Routes raise :class:`ApiError` subclasses; the handlers installed by :func:`install` map them,
FastAPI's request validation errors, Starlette's HTTP errors (404 route, 405, 413) and
database outages onto that shape. Clients branch on ``code``, never on ``message``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from schemas.errors import BillingError

log = logging.getLogger(__name__)


class ApiError(BillingError):
    """Root of every error the API answers on purpose."""

    status_code: int = 400
    code: str = "bad_request"
    message: str = "bad request"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message or self.message)
        if message is not None:
            self.message = message
        if code is not None:
            self.code = code
        self.details = details
        self.headers = dict(headers or {})


# ------------------------------------------------------------------------------------- 400
class BadRequest(ApiError):
    pass


class MalformedJson(BadRequest):
    code = "malformed_json"
    message = "the request body is not valid JSON"


class IdempotencyKeyMissing(BadRequest):
    code = "idempotency_key_missing"
    message = "the Idempotency-Key header is required"


class IdempotencyKeyInvalid(BadRequest):
    code = "idempotency_key_invalid"
    message = "the Idempotency-Key header must be 1 to 255 visible ASCII characters"


class InvalidCursor(BadRequest):
    code = "invalid_cursor"
    message = "the cursor is not one this API issued"


class WebhookMalformed(BadRequest):
    code = "webhook_malformed"
    message = "the notification body is not a YooKassa notification"


# ------------------------------------------------------------------------------- 401 / 403
class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"
    message = "authentication required"

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        # RFC 6750: a token that was presented but is bad is "invalid_token".
        effective = code or self.code
        error = "invalid_token" if effective in {"token_invalid", "token_expired"} else None
        challenge = "Bearer" + (f' error="{error}"' if error else "")
        super().__init__(message, code=code, headers={"WWW-Authenticate": challenge})


class TokenMissing(Unauthorized):
    code = "token_missing"
    message = "a Bearer token is required"


class TokenInvalid(Unauthorized):
    code = "token_invalid"
    message = "the token is invalid"


class TokenExpired(Unauthorized):
    code = "token_expired"
    message = "the token has expired"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"
    message = "not allowed"


class WebhookSourceForbidden(Forbidden):
    code = "webhook_source_forbidden"
    message = "notifications are accepted only from the provider's addresses"


# ------------------------------------------------------------------------------------- 404
class NotFound(ApiError):
    status_code = 404
    code = "not_found"
    message = "not found"


class PlanNotFound(NotFound):
    code = "plan_not_found"
    message = "no such plan"


class PaymentNotFound(NotFound):
    code = "payment_not_found"
    message = "no such payment"


class RefundNotFound(NotFound):
    code = "refund_not_found"
    message = "no such refund"


class SubscriptionNotFound(NotFound):
    code = "subscription_not_found"
    message = "no subscription yet"


class CommandNotFound(NotFound):
    code = "command_not_found"
    message = "no such command"


# ------------------------------------------------------------------------------------- 409
class Conflict(ApiError):
    status_code = 409
    code = "conflict"
    message = "the request conflicts with the current state"


class PlanExists(Conflict):
    code = "plan_exists"
    message = "a plan with this id already exists"


class PriceConflict(Conflict):
    code = "price_conflict"
    message = "a price of this plan already takes effect at that moment"


class PaymentNotProcessed(Conflict):
    code = "payment_not_processed"
    message = "the payment is accepted but not yet processed; retry once its status has moved on"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "1"})


class IdempotencyKeyInFlight(Conflict):
    code = "idempotency_key_in_flight"
    message = "a request with this Idempotency-Key is still being processed; retry later"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "1"})


# ------------------------------------------------------------------------------------- 422
class Unprocessable(ApiError):
    status_code = 422
    code = "unprocessable"
    message = "the request cannot be processed"


class ValidationFailed(Unprocessable):
    code = "validation_error"
    message = "the request is invalid"


class IdempotencyKeyReused(Unprocessable):
    code = "idempotency_key_reused"
    message = "this Idempotency-Key was used with a different request"


class PlanUnavailable(Unprocessable):
    code = "plan_unavailable"
    message = "this plan can no longer be bought"


class PaymentNotRetryable(Unprocessable):
    code = "payment_not_retryable"
    message = "this payment was never started, so there is nothing to retry"


class PriceInvalid(Unprocessable):
    code = "price_invalid"
    message = "the price is not valid"


class PriceInPast(Unprocessable):
    code = "price_effective_in_past"
    message = "a new price can take effect now or later, never in the past"


class InvalidRange(Unprocessable):
    code = "invalid_range"
    message = "the range is empty: its start is after its end"


class RefundInvalid(Unprocessable):
    code = "refund_invalid"
    message = "the refund request is not valid"


class ReceiptContactRequired(Unprocessable):
    code = "receipt_contact_required"
    message = (
        "this shop sends 54-FZ receipts: give receipt_email or receipt_phone, or set them in"
        " your profile (PUT /api/v1/profile)"
    )


# -------------------------------------------------------------------------- 413 / 415 / 503
class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"
    message = "the request body is too large"


class UnsupportedMediaType(ApiError):
    status_code = 415
    code = "unsupported_media_type"
    message = "the body must be application/json"


class ServiceUnavailable(ApiError):
    status_code = 503
    code = "service_unavailable"
    message = "temporarily unavailable; retry later"

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": "5"})


class AuthUnavailable(ServiceUnavailable):
    """The SSO provider's signing keys (OIDC JWKS) cannot be fetched and none is known for
    the token: the token may be good, so not a 401; any authenticated route can answer it."""

    code = "auth_unavailable"
    message = "the sign-on provider's keys are unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    message = "the database is unavailable; retry later"


# ------------------------------------------------------------------------------- rendering
def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details),
        status_code=exc.status_code,
        headers=exc.headers or None,
    )


_STARLETTE_CODES = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def _validation_details(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Location, type and message only: never echo the input (it may hold secrets)."""
    return [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "type": str(err.get("type", "")),
            "msg": str(err.get("msg", "")),
        }
        for err in errors
    ]


def _idempotency_key_error(errors: Sequence[Any]) -> ApiError | None:
    """The Idempotency-Key header is declared required with a pattern (api/deps.py), so
    FastAPI validates it; its refusals keep their own 400 codes rather than a 422."""
    for err in errors:
        loc = tuple(str(part).lower() for part in err.get("loc", ()))
        if loc != ("header", "idempotency-key"):
            continue
        value = err.get("input")
        if err.get("type") == "missing" or not (isinstance(value, str) and value.strip()):
            return IdempotencyKeyMissing()
        return IdempotencyKeyInvalid()
    return None


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(MalformedJson())
    key = _idempotency_key_error(errors)
    if key is not None:
        return error_response(key)
    return error_response(ValidationFailed(details=_validation_details(errors)))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (RFC 9110 §15.5.6). Starlette's own
    ``Allow`` names only the first route that matched the path, so GET /admin/plans made
    a POST there look unsupported."""
    index: list[tuple[re.Pattern[str], frozenset[str]]] | None = getattr(
        request.app.state, "allow_index", None
    )
    if index is None:
        index = []
        for ctx in iter_route_contexts(request.app.routes):
            if ctx.path is not None and ctx.methods:
                index.append((compile_path(ctx.path)[0], frozenset(ctx.methods)))
        request.app.state.allow_index = index
    path = request.url.path
    return sorted({m for regex, methods in index if regex.match(path) for m in methods})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allow = {"Allow": ", ".join(allowed_methods(request))}
        err: ApiError = ApiError("method not allowed", code="method_not_allowed", headers=allow)
        err.status_code = 405
        return error_response(err)
    cls = _STARLETTE_CODES.get(exc.status_code)
    if cls is not None and cls is not Unauthorized:
        return error_response(cls())
    err = ApiError(str(exc.detail), code=f"http_{exc.status_code}", headers=exc.headers)
    err.status_code = exc.status_code
    return error_response(err)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(DatabaseUnavailable())


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        error_body("internal_error", "internal error; it has been logged"), status_code=500
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    app.add_exception_handler(psycopg.OperationalError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
