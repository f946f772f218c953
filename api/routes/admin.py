"""Admin endpoints (admin role, checked once for the whole router): the plan catalogue,
subscriptions with their history, and actions on them.

Every action names its ``reason`` and is recorded with the admin as the actor
(``admin:<user id>``). Actions on subscriptions and payments go through commands only (the
ledger decides, the event log is the audit trail): 202 and a ``status_url`` to poll, like a
user's payment. Catalogue changes are plain writes (the catalogue lives in PostgreSQL).
Every POST and PATCH needs an ``Idempotency-Key``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api import catalogue, intake, queries
from api.deps import (
    AdminUser,
    DbDep,
    IdempotencyKey,
    IntakeDep,
    JsonBody,
    SettingsDep,
    get_admin_user,
)
from api.errors import CommandNotFound, SubscriptionNotFound
from schemas.http import (
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
    PlanCreate,
    PlanUpdate,
    PriceCreate,
    error_responses,
)

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(get_admin_user)])

SubscriptionStatus = Literal[
    "none", "pending", "active", "inactive", "past_due", "expired", "canceled"
]
PLAN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
PlanIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=PLAN_ID_PATTERN)]
READ_ERRORS = error_responses(401, 403, 404, 422)
WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 422, 503)


# ------------------------------------------------------------------------------ commands
@router.get("/commands", response_model=list[CommandOut], responses=error_responses(401, 403))
async def open_commands(
    _admin: AdminUser,
    db: DbDep,
    status: Literal["accepted", "processing", "rejected"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[CommandOut]:
    """Accepted commands that are not done, oldest first, with publish attempts, last error
    and reason: a command that cannot progress is visible here."""
    return await queries.list_open_commands(db, status=status, limit=limit)


@router.get("/commands/{command_id}", response_model=CommandOut, responses=READ_ERRORS)
async def get_command(command_id: uuid.UUID, _admin: AdminUser, db: DbDep) -> CommandOut:
    """One command's status (the status URL of admin actions): accepted → processing →
    done, or rejected with the ledger's reason."""
    command = await queries.get_command(db, command_id)
    if command is None:
        raise CommandNotFound()
    return command


# ----------------------------------------------------------------------------- catalogue
async def _write(
    request: Request,
    admin: AdminUser,
    key: str,
    body: BaseModel,
    ctx: IntakeDep,
    write: intake.Write,
) -> JSONResponse:
    outcome = await intake.accept_write(
        ctx.pool,
        user_id=admin.user_id,
        idem_key=key,
        fp=intake.fingerprint(request.method, request.url.path, body.model_dump(mode="json")),
        write=write,
    )
    return ctx.publish_and_answer(outcome)


@router.get("/plans", response_model=list[AdminPlanOut], responses=error_responses(401, 403))
async def list_plans(_admin: AdminUser, db: DbDep) -> list[AdminPlanOut]:
    """Every plan, archived too, with the price in force now and every price version (past,
    current and scheduled) with who made it and why."""
    return await queries.list_admin_plans(db)


@router.post(
    "/plans",
    status_code=201,
    response_model=AdminPlanOut,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def create_plan(
    request: Request, admin: AdminUser, key: IdempotencyKey, body: PlanCreate, ctx: IntakeDep
) -> JSONResponse:
    """Create a plan; its price is version 1, in force from now. 409 ``plan_exists`` if the
    id is taken."""
    actor = intake.actor_of(admin.user_id)
    return await _write(
        request, admin, key, body, ctx, lambda conn: catalogue.create_plan(conn, actor, body)
    )


@router.patch(
    "/plans/{plan_id}",
    response_model=AdminPlanOut,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def update_plan(
    plan_id: PlanIdPath,
    request: Request,
    admin: AdminUser,
    key: IdempotencyKey,
    body: PlanUpdate,
    ctx: IntakeDep,
) -> JSONResponse:
    """Rename a plan or change its trial days. Prices change only through a new version."""
    actor = intake.actor_of(admin.user_id)
    return await _write(
        request,
        admin,
        key,
        body,
        ctx,
        lambda conn: catalogue.update_plan(conn, actor, plan_id, body),
    )


@router.post(
    "/plans/{plan_id}/archive",
    response_model=AdminPlanOut,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def archive_plan(
    plan_id: PlanIdPath,
    request: Request,
    admin: AdminUser,
    key: IdempotencyKey,
    body: AdminReason,
    ctx: IntakeDep,
) -> JSONResponse:
    """Take a plan off sale: it can no longer be bought or switched to; subscriptions
    already on it keep it and keep renewing at its price in force. Archiving twice is
    harmless."""
    actor = intake.actor_of(admin.user_id)
    return await _write(
        request,
        admin,
        key,
        body,
        ctx,
        lambda conn: catalogue.archive_plan(conn, actor, plan_id, body.reason),
    )


@router.post(
    "/plans/{plan_id}/prices",
    status_code=201,
    response_model=AdminPlanOut,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def add_price(
    plan_id: PlanIdPath,
    request: Request,
    admin: AdminUser,
    key: IdempotencyKey,
    body: PriceCreate,
    ctx: IntakeDep,
) -> JSONResponse:
    """Schedule a price change: a new price version in force from ``effective_from`` (now if
    omitted; never in the past: 422 ``price_effective_in_past``), in the plan's currency.
    Purchases take the price in force when they are made, renewals the price in force when
    the new period starts. 409 ``price_conflict`` if a version already starts at that
    instant."""
    actor = intake.actor_of(admin.user_id)
    return await _write(
        request, admin, key, body, ctx, lambda conn: catalogue.add_price(conn, actor, plan_id, body)
    )


# ------------------------------------------------------------------------- subscriptions
@router.get(
    "/subscriptions",
    response_model=AdminSubscriptionPage,
    responses=error_responses(400, 401, 403, 422),
)
async def list_subscriptions(
    _admin: AdminUser,
    db: DbDep,
    settings: SettingsDep,
    user_id: Annotated[
        str | None, Query(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
    ] = None,
    status: SubscriptionStatus | None = None,
    plan_id: Annotated[str | None, Query(max_length=64, pattern=PLAN_ID_PATTERN)] = None,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> AdminSubscriptionPage:
    """Subscriptions matching the filters, in a stable order; pass ``next_cursor`` back as
    ``cursor`` (with the same filters) for the next page."""
    return await queries.list_subscriptions(
        db,
        user_id=user_id,
        status=status,
        plan_id=plan_id,
        cursor=cursor,
        limit=limit,
        renew_lead=timedelta(seconds=settings.renew_lead_s),
    )


@router.get(
    "/subscriptions/{subscription_id}",
    response_model=AdminSubscriptionDetail,
    responses=READ_ERRORS,
)
async def get_subscription(
    subscription_id: uuid.UUID,
    _admin: AdminUser,
    db: DbDep,
    settings: SettingsDep,
    events_after: Annotated[int, Query(ge=0, description="a version; 0: from the start")] = 0,
    events_limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> AdminSubscriptionDetail:
    """A subscription with its payments, refunds, latest commands (with the ledger's reason
    for any refusal) and its event timeline, the audit trail: who did what, when, why."""
    detail = await queries.get_subscription_detail(
        db,
        subscription_id,
        renew_lead=timedelta(seconds=settings.renew_lead_s),
        events_after=events_after,
        events_limit=events_limit,
    )
    if detail is None:
        raise SubscriptionNotFound("no such subscription")
    return detail


# ------------------------------------------------------------------------------- actions
@router.post(
    "/payments/{payment_id}/refunds",
    status_code=202,
    response_model=AdminRefundAccepted,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def refund_payment(
    payment_id: uuid.UUID,
    admin: AdminUser,
    key: IdempotencyKey,
    body: AdminRefundCreate,
    ctx: IntakeDep,
) -> JSONResponse:
    """Refund any user's payment, fully (no ``amount``) or partly. The ledger enforces the
    refundable amount; a full refund of the current period's payment ends access."""
    outcome = await intake.accept_refund(
        ctx.pool,
        ctx.settings,
        ctx.caller(admin.user_id, key),
        body,
        payment_id=str(payment_id),
        admin=True,
    )
    return ctx.publish_and_answer(outcome)


@router.post(
    "/payments/{payment_id}/capture",
    status_code=202,
    response_model=AdminActionAccepted,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def capture_payment(
    payment_id: uuid.UUID,
    request: Request,
    admin: AdminUser,
    key: IdempotencyKey,
    body: AdminReason,
    ctx: IntakeDep,
) -> JSONResponse:
    """Capture a two-stage payment held for capture (BILLING_TWO_STAGE_PAYMENTS)."""
    return await _settle("capture", payment_id, admin, key, body, ctx)


@router.post(
    "/payments/{payment_id}/release",
    status_code=202,
    response_model=AdminActionAccepted,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def release_payment(
    payment_id: uuid.UUID,
    request: Request,
    admin: AdminUser,
    key: IdempotencyKey,
    body: AdminReason,
    ctx: IntakeDep,
) -> JSONResponse:
    """Release (cancel) a two-stage payment held for capture: the hold is lifted, nothing
    is charged."""
    return await _settle("cancel", payment_id, admin, key, body, ctx)


async def _settle(
    action: Literal["capture", "cancel"],
    payment_id: uuid.UUID,
    admin: AdminUser,
    key: str,
    body: AdminReason,
    ctx: IntakeDep,
) -> JSONResponse:
    outcome = await intake.accept_admin_settle(
        ctx.pool,
        ctx.settings,
        ctx.caller(admin.user_id, key),
        body,
        payment_id=str(payment_id),
        action=action,
    )
    return ctx.publish_and_answer(outcome)


async def _adjust(
    action: Literal["extend", "grant", "cancel"],
    subscription_id: uuid.UUID,
    admin: AdminUser,
    key: str,
    body: AdminReason | AdminExtend | AdminGrant,
    ctx: IntakeDep,
) -> JSONResponse:
    outcome = await intake.accept_admin_adjust(
        ctx.pool,
        ctx.settings,
        ctx.caller(admin.user_id, key),
        body,
        subscription_id=str(subscription_id),
        action=action,
    )
    return ctx.publish_and_answer(outcome)


@router.post(
    "/subscriptions/{subscription_id}/cancel",
    status_code=202,
    response_model=AdminActionAccepted,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def cancel_subscription(
    subscription_id: uuid.UUID,
    request: Request,
    admin: AdminUser,
    key: IdempotencyKey,
    body: AdminReason,
    ctx: IntakeDep,
) -> JSONResponse:
    """End access now and stop renewals (no refund: refund a payment separately). Refused by
    the ledger unless the subscription is active or past due."""
    return await _adjust("cancel", subscription_id, admin, key, body, ctx)


@router.post(
    "/subscriptions/{subscription_id}/extend",
    status_code=202,
    response_model=AdminActionAccepted,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def extend_subscription(
    subscription_id: uuid.UUID,
    request: Request,
    admin: AdminUser,
    key: IdempotencyKey,
    body: AdminExtend,
    ctx: IntakeDep,
) -> JSONResponse:
    """Add ``days`` to the current paid period, free. Refused by the ledger unless a period
    covers now."""
    return await _adjust("extend", subscription_id, admin, key, body, ctx)


@router.post(
    "/subscriptions/{subscription_id}/grant",
    status_code=202,
    response_model=AdminActionAccepted,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def grant_subscription(
    subscription_id: uuid.UUID,
    request: Request,
    admin: AdminUser,
    key: IdempotencyKey,
    body: AdminGrant,
    ctx: IntakeDep,
) -> JSONResponse:
    """Give one free period of a plan (its own length): from now, or from the end of the
    period covering now. A plan off sale only to a subscription already on it."""
    return await _adjust("grant", subscription_id, admin, key, body, ctx)


@router.post(
    "/subscriptions/{subscription_id}/auto-renew",
    status_code=202,
    response_model=AdminActionAccepted,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def set_auto_renew(
    subscription_id: uuid.UUID,
    admin: AdminUser,
    key: IdempotencyKey,
    body: AdminAutoRenew,
    ctx: IntakeDep,
) -> JSONResponse:
    """Turn a subscription's auto-renewal off (it expires at the period end) or on."""
    outcome = await intake.accept_auto_renew(
        ctx.pool,
        ctx.settings,
        ctx.caller(admin.user_id, key),
        body,
        subscription_id=str(subscription_id),
    )
    return ctx.publish_and_answer(outcome)
