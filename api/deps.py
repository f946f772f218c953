"""Dependencies as ``Annotated`` aliases. Everything lives on ``app.state`` (opened by the
lifespan in api/main.py), so tests inject fakes through create_app or dependency_overrides."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Concatenate, ParamSpec, Protocol

import psycopg
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.types import DecoratedCallable
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from api.auth import Principal, verifier_for
from api.errors import (
    Forbidden,
    ServiceUnavailable,
    TokenMissing,
    UnsupportedMediaType,
)
from api.intake import Caller, IntakeOutcome, Write, accept_write
from api.limits import LimitsDep, check
from api.publisher import OutboxSender, Publisher
from api.relay import Background
from billing.config import ApiSettings
from providers.port import PaymentProvider
from schemas.http import error_responses
from schemas.messages import PaymentObserved

MAX_IDEMPOTENCY_KEY_LEN = 255
COMMAND_ERRORS = error_responses(400, 401, 404, 409, 413, 415, 422, 429, 503)

P = ParamSpec("P")
# An ``api.intake.accept_*`` function: the pool, the settings, the caller, then its own.
Accept = Callable[
    Concatenate[AsyncConnectionPool[Any], ApiSettings, Caller, P], Awaitable[IntakeOutcome]
]


class Normaliser(Protocol):
    """``providers.yookassa_adapter.normalise``: a re-read provider payment → PaymentObserved."""

    def __call__(self, payment: Any, *, source: str, observed_at: int) -> PaymentObserved: ...


async def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_pool(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] | None = getattr(request.app.state, "pool", None)
    if pool is None:
        raise ServiceUnavailable("the database pool is not open", code="database_unavailable")
    return pool


PoolDep = Annotated[AsyncConnectionPool[Any], Depends(get_pool)]


async def get_db(pool: PoolDep) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with pool.connection() as conn:
        yield conn


async def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


async def get_background(request: Request) -> Background:
    background: Background = request.app.state.background
    return background


async def get_provider(request: Request) -> PaymentProvider:
    provider: PaymentProvider | None = getattr(request.app.state, "provider", None)
    if provider is None:
        raise ServiceUnavailable(
            "the payment provider is not configured", code="provider_unavailable"
        )
    return provider


async def get_normaliser(request: Request) -> Normaliser:
    """The adapter's normalise, imported on first use so this package imports without it."""
    fn: Normaliser | None = getattr(request.app.state, "normalise", None)
    if fn is None:
        try:
            from providers.yookassa_adapter import normalise
        except ImportError as exc:
            raise ServiceUnavailable(
                "the provider adapter is not installed", code="provider_unavailable"
            ) from exc
        fn = normalise
        request.app.state.normalise = fn
    return fn


@dataclass(frozen=True)
class Intake:
    """What a command-accepting route needs: the pool for the intake transaction (the one
    connection a request takes), the sender that publishes after the 202, and the request's
    method and path (the idempotency fingerprint covers them)."""

    pool: AsyncConnectionPool[Any]
    sender: OutboxSender
    settings: ApiSettings
    method: str
    path: str

    def caller(self, user_id: str, idem_key: str, email: str | None = None) -> Caller:
        """This request as ``user_id`` (token email ``email``) asks it under ``idem_key``."""
        return Caller(user_id, idem_key, self.method, self.path, email)

    def publish_and_answer(self, outcome: IntakeOutcome) -> JSONResponse:
        """Publish the message a request has just created (batched, right after the answer;
        the relay covers a failure), then answer with the stored status and body,
        ``Location`` and ``Idempotent-Replayed``. A replay publishes nothing."""
        if outcome.message is not None:
            self.sender.send(outcome.message)
        headers: dict[str, str] = {}
        if outcome.location:
            headers["Location"] = outcome.location
        if outcome.replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)


async def get_intake(request: Request, pool: PoolDep) -> Intake:
    state = request.app.state
    return Intake(pool, state.sender, state.settings, request.method, request.url.path)


_bearer = HTTPBearer(
    auto_error=False,
    description="JWT: the SSO provider's access token (RS256/ES256, JWKS), or HS256 in dev",
)


async def get_current_user(
    request: Request,
    settings: Annotated[ApiSettings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise TokenMissing()
    return await verifier_for(request.app.state, settings).verify(credentials.credentials)


async def get_admin_user(user: Annotated[Principal, Depends(get_current_user)]) -> Principal:
    if not user.is_admin:
        raise Forbidden("admin role required")
    return user


async def require_json(request: Request) -> None:
    """415 for a body that is not JSON, rather than a confusing validation error. (Every
    dependency here is ``async def``: a plain ``def`` costs a threadpool hop per request.)"""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise UnsupportedMediaType()


# What the OpenAPI document promises and the server checks: 1..255 visible ASCII characters,
# spaces only inside (HTTP trims them around a header value anyway). The IETF draft's
# sf-string form ("key" in quotes) is accepted too: the quotes are not part of the key.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]{0,253}[!-~])?$"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"


async def get_idempotency_key(
    idempotency_key: Annotated[
        str,
        Header(
            alias=IDEMPOTENCY_KEY_HEADER,
            description="required on every write: unique per operation, 1..255 visible ASCII"
            " characters (IETF Idempotency-Key draft); missing: 400 idempotency_key_missing,"
            " malformed: 400 idempotency_key_invalid",
            pattern=IDEMPOTENCY_KEY_PATTERN,
            max_length=MAX_IDEMPOTENCY_KEY_LEN,
        ),
    ],
) -> str:
    """The key, validated by FastAPI against the pattern above (a missing or malformed header
    is turned into 400 ``idempotency_key_missing``/``_invalid`` by api/errors.py)."""
    key = idempotency_key
    if len(key) > 2 and key[0] == key[-1] == '"':  # the draft's sf-string form
        key = key[1:-1]
    return key


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
DbDep = Annotated[psycopg.AsyncConnection[Any], Depends(get_db)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
BackgroundDep = Annotated[Background, Depends(get_background)]
ProviderDep = Annotated[PaymentProvider, Depends(get_provider)]
NormaliserDep = Annotated[Normaliser, Depends(get_normaliser)]
CurrentUser = Annotated[Principal, Depends(get_current_user)]
AdminUser = Annotated[Principal, Depends(get_admin_user)]
IdempotencyKey = Annotated[str, Depends(get_idempotency_key)]
IntakeDep = Annotated[Intake, Depends(get_intake)]
# A page cursor as this API issues them (base64url); one it did not issue is a 400
# invalid_cursor, which no pattern can tell beforehand.
CursorQuery = Annotated[
    str | None,
    Query(
        max_length=256,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="next_cursor of the previous page, as given (with the same filters)",
    ),
]
JsonBody = Depends(require_json)


@dataclass(frozen=True)
class CommandRequest:
    """A request that changes something under an Idempotency-Key: who asks (``caller``) and
    the intake that accepts it."""

    caller: Caller
    intake: Intake

    async def accept(self, fn: Accept[P], *args: P.args, **kwargs: P.kwargs) -> IntakeOutcome:
        """Hand the request to an ``api.intake.accept_*`` function."""
        return await fn(self.intake.pool, self.intake.settings, self.caller, *args, **kwargs)

    async def submit(self, fn: Accept[P], *args: P.args, **kwargs: P.kwargs) -> JSONResponse:
        """:meth:`accept`, then publish and answer (:meth:`Intake.publish_and_answer`)."""
        return self.intake.publish_and_answer(await self.accept(fn, *args, **kwargs))

    async def write(self, body: BaseModel, write: Write) -> JSONResponse:
        """A synchronous write (``api.intake.accept_write``) of this validated body."""
        outcome = await accept_write(
            self.intake.pool,
            user_id=self.caller.user_id,
            idem_key=self.caller.idem_key,
            fp=self.caller.fingerprint(body),
            write=write,
        )
        return self.intake.publish_and_answer(outcome)


async def get_command_request(
    user: CurrentUser, key: IdempotencyKey, intake: IntakeDep, limits: LimitsDep
) -> CommandRequest:
    check(limits.writes, user.user_id, "writes")  # before any database work
    return CommandRequest(intake.caller(user.user_id, key, user.email), intake)


async def get_admin_command_request(
    admin: AdminUser, key: IdempotencyKey, intake: IntakeDep, limits: LimitsDep
) -> CommandRequest:
    check(limits.writes, admin.user_id, "writes")
    return CommandRequest(intake.caller(admin.user_id, key), intake)


CommandDep = Annotated[CommandRequest, Depends(get_command_request)]
AdminCommandDep = Annotated[CommandRequest, Depends(get_admin_command_request)]


def command_route(
    router: APIRouter,
    path: str,
    response_model: Any = None,
    *,
    method: str = "POST",
    status_code: int | None = 202,
    responses: dict[int | str, dict[str, Any]] = COMMAND_ERRORS,
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The route of a request with a JSON body (415 otherwise) that changes something: 202 (a
    command accepted) unless ``status_code`` says otherwise."""
    return router.api_route(
        path,
        methods=[method],
        status_code=status_code,
        response_model=response_model,
        dependencies=[JsonBody],
        responses=responses,
    )


__all__ = [
    "AdminCommandDep",
    "AdminUser",
    "BackgroundDep",
    "CommandDep",
    "CommandRequest",
    "CurrentUser",
    "CursorQuery",
    "DbDep",
    "IdempotencyKey",
    "Intake",
    "IntakeDep",
    "JsonBody",
    "Normaliser",
    "NormaliserDep",
    "PoolDep",
    "ProviderDep",
    "PublisherDep",
    "SettingsDep",
]
