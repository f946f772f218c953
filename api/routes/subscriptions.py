"""Your subscription, from the read model."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api import intake, queries
from api.deps import (
    BackgroundDep,
    CurrentUser,
    DbDep,
    IdempotencyKey,
    JsonBody,
    PoolDep,
    PublisherDep,
    SettingsDep,
)
from api.errors import SubscriptionNotFound
from api.models import AutoRenewUpdate, SubscriptionOut, error_responses
from api.relay import publish_soon

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/subscriptions", tags=["subscriptions"])


@router.get("/me", response_model=SubscriptionOut, responses=error_responses(401, 404))
async def my_subscription(user: CurrentUser, db: DbDep) -> SubscriptionOut:
    """Your subscription: ``active`` is true while a paid period covers now."""
    sub = await queries.get_subscription(db, user.user_id)
    if sub is None:
        raise SubscriptionNotFound()
    return sub


@router.put(
    "/me/auto-renew",
    status_code=202,
    dependencies=[JsonBody],
    responses=error_responses(400, 401, 404, 409, 413, 415, 422, 503),
)
async def set_auto_renew(
    request: Request,
    user: CurrentUser,
    key: IdempotencyKey,
    body: AutoRenewUpdate,
    pool: PoolDep,
    publisher: PublisherDep,
    background: BackgroundDep,
    settings: SettingsDep,
) -> JSONResponse:
    """Turn auto-renewal off (``cancel_at_period_end``: access lasts to the period end, then
    the subscription expires) or back on. Needs an ``Idempotency-Key``."""
    outcome = await intake.accept_auto_renew(
        pool,
        settings,
        user_id=user.user_id,
        idem_key=key,
        request=body,
        method=request.method,
        path=request.url.path,
    )
    if outcome.message is not None:
        publish_soon(background, pool, publisher, settings, outcome.message)
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)
