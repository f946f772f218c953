"""Your subscription, from the read model."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import intake, queries
from api.deps import CurrentUser, DbDep, IdempotencyKey, IntakeDep, JsonBody, SettingsDep
from api.errors import SubscriptionNotFound
from schemas.http import (
    AutoRenewUpdate,
    PlanChangeAccepted,
    PlanChangeCreate,
    SubscriptionOut,
    error_responses,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/subscriptions", tags=["subscriptions"])


@router.get("/me", response_model=SubscriptionOut, responses=error_responses(401, 404))
async def my_subscription(user: CurrentUser, db: DbDep, settings: SettingsDep) -> SubscriptionOut:
    """Your subscription: ``active`` is true while a paid period covers now; the current
    plan's price, a scheduled plan change, and the next automatic charge (when and how much)
    while auto-renewal is on."""
    sub = await queries.get_subscription(
        db, user.user_id, renew_lead=timedelta(seconds=settings.renew_lead_s)
    )
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
    user: CurrentUser,
    key: IdempotencyKey,
    body: AutoRenewUpdate,
    ctx: IntakeDep,
) -> JSONResponse:
    """Turn auto-renewal off (``cancel_at_period_end``: access lasts to the period end, then
    the subscription expires) or back on. Needs an ``Idempotency-Key``."""
    outcome = await intake.accept_auto_renew(
        ctx.pool, ctx.settings, ctx.caller(user.user_id, key), body
    )
    return ctx.publish_and_answer(outcome)


@router.post(
    "/me/plan",
    status_code=202,
    response_model=PlanChangeAccepted,
    dependencies=[JsonBody],
    responses=error_responses(400, 401, 404, 409, 413, 415, 422, 503),
)
async def change_plan(
    user: CurrentUser,
    key: IdempotencyKey,
    body: PlanChangeCreate,
    ctx: IntakeDep,
) -> JSONResponse:
    """Switch to another plan on sale, at its price in force now. A dearer plan starts at
    once and is charged now, less the unused part of the current period (``payment_id`` is
    that charge); a cheaper one starts at the period end (no charge: the status URL reads
    ``done``, and ``next_plan_id`` shows it). Needs an ``Idempotency-Key``. Refused by the
    ledger (``rejected`` with the reason) without an active subscription, for the same plan,
    or with a payment in flight."""
    outcome = await intake.accept_plan_change(
        ctx.pool, ctx.settings, ctx.caller(user.user_id, key), body
    )
    return ctx.publish_and_answer(outcome)
