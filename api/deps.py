"""Dependencies as ``Annotated`` aliases. Everything lives on ``app.state`` (opened by the
lifespan in api/main.py), so tests inject fakes through create_app or dependency_overrides."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Concatenate, ParamSpec, Protocol

import psycopg
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.types import DecoratedCallable
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from api.auth import Principal, decode_token
from api.errors import (
    Forbidden,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    ServiceUnavailable,
    TokenMissing,
    UnsupportedMediaType,
)
from api.intake import Caller, IntakeOutcome, Write, accept_write
from api.publisher import Publisher
from api.relay import Background, publish_soon
from billing.config import ApiSettings
from providers.port import PaymentProvider
from schemas.http import error_responses
from schemas.messages import PaymentObserved

MAX_IDEMPOTENCY_KEY_LEN = 255
COMMAND_ERRORS = error_responses(400, 401, 404, 409, 413, 415, 422, 503)

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
    """What a command-accepting route needs: the pool for the intake transaction, the
    publisher and background set for the publish right after the 202, and the request's
    method and path (the idempotency fingerprint covers them)."""

    pool: AsyncConnectionPool[Any]
    publisher: Publisher
    background: Background
    settings: ApiSettings
    method: str
    path: str

    def caller(self, user_id: str, idem_key: str) -> Caller:
        """This request as ``user_id`` asks it under ``idem_key``."""
        return Caller(user_id, idem_key, self.method, self.path)

    def publish_and_answer(self, outcome: IntakeOutcome) -> JSONResponse:
        """Publish the message a request has just created (in the background, right after the
        answer; the relay covers a failure), then answer with the stored status and body,
        ``Location`` and ``Idempotent-Replayed``. A replay publishes nothing."""
        if outcome.message is not None:
            publish_soon(self.background, self.pool, self.publisher, self.settings, outcome.message)
        headers: dict[str, str] = {}
        if outcome.location:
            headers["Location"] = outcome.location
        if outcome.replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)


async def get_intake(request: Request, pool: PoolDep) -> Intake:
    state = request.app.state
    return Intake(
        pool, state.publisher, state.background, state.settings, request.method, request.url.path
    )


_bearer = HTTPBearer(auto_error=False, description="JWT (HS256) with sub, roles, exp, aud")


async def get_current_user(
    settings: Annotated[ApiSettings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise TokenMissing()
    return decode_token(settings, credentials.credentials)


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


async def get_idempotency_key(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="unique per operation, 1..255 characters (IETF Idempotency-Key draft)",
        ),
    ] = None,
) -> str:
    if idempotency_key is None:
        raise IdempotencyKeyMissing()
    key = idempotency_key.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':  # the draft's sf-string form
        key = key[1:-1]
    if not key:
        raise IdempotencyKeyMissing()
    if len(key) > MAX_IDEMPOTENCY_KEY_LEN or not key.isprintable():
        raise IdempotencyKeyInvalid()
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
    user: CurrentUser, key: IdempotencyKey, intake: IntakeDep
) -> CommandRequest:
    return CommandRequest(intake.caller(user.user_id, key), intake)


async def get_admin_command_request(
    admin: AdminUser, key: IdempotencyKey, intake: IntakeDep
) -> CommandRequest:
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
