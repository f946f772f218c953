"""Your subscription, from the read model."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import intake, queries
from api.deps import CommandDep, CurrentUser, DbDep, SettingsDep, command_route
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


@command_route(router, "/me/auto-renew", method="PUT")
async def set_auto_renew(body: AutoRenewUpdate, cmd: CommandDep) -> JSONResponse:
    """Turn auto-renewal off (``cancel_at_period_end``: access lasts to the period end, then
    the subscription expires) or back on. Needs an ``Idempotency-Key``."""
    return await cmd.submit(intake.accept_auto_renew, body)


@command_route(router, "/me/plan", PlanChangeAccepted)
async def change_plan(body: PlanChangeCreate, cmd: CommandDep) -> JSONResponse:
    """Switch to another plan on sale, at its price in force now. A dearer plan starts at
    once and is charged now, less the unused part of the current period (``payment_id`` is
    that charge); a cheaper one starts at the period end (no charge: the status URL reads
    ``done``, and ``next_plan_id`` shows it). Needs an ``Idempotency-Key``. Refused by the
    ledger (``rejected`` with the reason) without an active subscription, for the same plan,
    or with a payment in flight."""
    return await cmd.submit(intake.accept_plan_change, body)
