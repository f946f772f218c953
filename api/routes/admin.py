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
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from fastapi.types import DecoratedCallable
from pydantic import BaseModel

from api import catalogue, intake, queries
from api.deps import (
    AdminCommandDep,
    AdminUser,
    CursorQuery,
    DbDep,
    SettingsDep,
    command_route,
    get_admin_user,
)
from api.errors import CommandNotFound, SubscriptionNotFound
from api.routes.refunds import refund_or_not_yet
from schemas.http import (
    PLAN_ID_PATTERN,
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
from schemas.ids import subscription_id_for

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(get_admin_user)])

SubscriptionStatus = Literal[
    "none", "pending", "active", "inactive", "past_due", "expired", "canceled"
]
PlanIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=PLAN_ID_PATTERN)]
READ_ERRORS = error_responses(401, 403, 404, 422)
WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)


def _write_route(
    path: str,
    response_model: type[BaseModel] = AdminActionAccepted,
    *,
    method: str = "POST",
    status_code: int | None = 202,
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """An admin write: a JSON body under an Idempotency-Key; an action answers 202 and a
    command to poll."""
    return command_route(
        router,
        path,
        response_model,
        method=method,
        status_code=status_code,
        responses=WRITE_ERRORS,
    )


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
@router.get("/plans", response_model=list[AdminPlanOut], responses=error_responses(401, 403))
async def list_plans(_admin: AdminUser, db: DbDep) -> list[AdminPlanOut]:
    """Every plan, archived too, with the price in force now and every price version (past,
    current and scheduled) with who made it and why."""
    return await queries.list_admin_plans(db)


@_write_route("/plans", AdminPlanOut, status_code=201)
async def create_plan(body: PlanCreate, cmd: AdminCommandDep) -> JSONResponse:
    """Create a plan; its price is version 1, in force from now. 409 ``plan_exists`` if the
    id is taken."""
    actor = intake.actor_of(cmd.caller.user_id)
    return await cmd.write(body, lambda conn: catalogue.create_plan(conn, actor, body))


@_write_route("/plans/{plan_id}", AdminPlanOut, method="PATCH", status_code=None)
async def update_plan(plan_id: PlanIdPath, body: PlanUpdate, cmd: AdminCommandDep) -> JSONResponse:
    """Rename a plan or change its trial days. Prices change only through a new version."""
    actor = intake.actor_of(cmd.caller.user_id)
    return await cmd.write(body, lambda conn: catalogue.update_plan(conn, actor, plan_id, body))


@_write_route("/plans/{plan_id}/archive", AdminPlanOut, status_code=None)
async def archive_plan(
    plan_id: PlanIdPath, body: AdminReason, cmd: AdminCommandDep
) -> JSONResponse:
    """Take a plan off sale: it can no longer be bought or switched to; subscriptions
    already on it keep it and keep renewing at its price in force. Archiving twice is
    harmless."""
    actor = intake.actor_of(cmd.caller.user_id)
    return await cmd.write(
        body, lambda conn: catalogue.archive_plan(conn, actor, plan_id, body.reason)
    )


@_write_route("/plans/{plan_id}/unarchive", AdminPlanOut, status_code=None)
async def unarchive_plan(
    plan_id: PlanIdPath, body: AdminReason, cmd: AdminCommandDep
) -> JSONResponse:
    """Put an archived plan back on sale, at its price in force now (scheduled prices keep
    their dates). Unarchiving a plan on sale is harmless."""
    actor = intake.actor_of(cmd.caller.user_id)
    return await cmd.write(
        body,
        lambda conn: catalogue.archive_plan(conn, actor, plan_id, body.reason, archived=False),
    )


@_write_route("/plans/{plan_id}/prices", AdminPlanOut, status_code=201)
async def add_price(plan_id: PlanIdPath, body: PriceCreate, cmd: AdminCommandDep) -> JSONResponse:
    """Schedule a price change: a new price version in force from ``effective_from`` (now if
    omitted; never in the past: 422 ``price_effective_in_past``), in the plan's currency.
    Purchases take the price in force when they are made, renewals the price in force when
    the new period starts. 409 ``price_conflict`` if a version already starts at that
    instant."""
    actor = intake.actor_of(cmd.caller.user_id)
    return await cmd.write(body, lambda conn: catalogue.add_price(conn, actor, plan_id, body))


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
    cursor: CursorQuery = None,
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
@_write_route("/payments/{payment_id}/refunds", AdminRefundAccepted)
async def refund_payment(
    payment_id: uuid.UUID, body: AdminRefundCreate, cmd: AdminCommandDep
) -> JSONResponse:
    """Refund any user's payment, fully (no ``amount``) or partly. The ledger enforces the
    refundable amount; a full refund of the current period's payment ends access."""
    outcome = await refund_or_not_yet(cmd, body, payment_id, admin=True)
    return cmd.intake.publish_and_answer(outcome)


@_write_route("/payments/{payment_id}/capture")
async def capture_payment(
    payment_id: uuid.UUID, body: AdminReason, cmd: AdminCommandDep
) -> JSONResponse:
    """Capture a two-stage payment held for capture (BILLING_TWO_STAGE_PAYMENTS)."""
    return await cmd.submit(
        intake.accept_admin_settle, body, payment_id=str(payment_id), action="capture"
    )


@_write_route("/payments/{payment_id}/release")
async def release_payment(
    payment_id: uuid.UUID, body: AdminReason, cmd: AdminCommandDep
) -> JSONResponse:
    """Release (cancel) a two-stage payment held for capture: the hold is lifted, nothing
    is charged."""
    return await cmd.submit(
        intake.accept_admin_settle, body, payment_id=str(payment_id), action="cancel"
    )


@_write_route("/subscriptions/{subscription_id}/cancel")
async def cancel_subscription(
    subscription_id: uuid.UUID, body: AdminReason, cmd: AdminCommandDep
) -> JSONResponse:
    """End access now and stop renewals (no refund: refund a payment separately). Refused by
    the ledger unless the subscription is active or past due."""
    return await cmd.submit(
        intake.accept_admin_adjust, body, subscription_id=str(subscription_id), action="cancel"
    )


@_write_route("/subscriptions/{subscription_id}/extend")
async def extend_subscription(
    subscription_id: uuid.UUID, body: AdminExtend, cmd: AdminCommandDep
) -> JSONResponse:
    """Add ``days`` to the current paid period, free. Refused by the ledger unless a period
    covers now."""
    return await cmd.submit(
        intake.accept_admin_adjust, body, subscription_id=str(subscription_id), action="extend"
    )


@_write_route("/subscriptions/{subscription_id}/grant")
async def grant_subscription(
    subscription_id: uuid.UUID, body: AdminGrant, cmd: AdminCommandDep
) -> JSONResponse:
    """Give one free period of a plan (its own length): from now, or from the end of the
    period covering now. A plan off sale only to a subscription already on it."""
    return await cmd.submit(
        intake.accept_admin_adjust, body, subscription_id=str(subscription_id), action="grant"
    )


@_write_route("/users/{user_id}/grant")
async def grant_user(
    body: AdminGrant,
    cmd: AdminCommandDep,
    user_id: str = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@:+-]{1,128}$"),
) -> JSONResponse:
    """Give one free period of a plan to a user by id, with or without a subscription yet
    (issue 16): the same grant, on the subscription derived from the user id."""
    return await cmd.submit(
        intake.accept_admin_adjust,
        body,
        subscription_id=subscription_id_for(user_id),
        action="grant",
        user_id=user_id,
    )


@_write_route("/subscriptions/{subscription_id}/auto-renew")
async def set_auto_renew(
    subscription_id: uuid.UUID, body: AdminAutoRenew, cmd: AdminCommandDep
) -> JSONResponse:
    """Turn a subscription's auto-renewal off (it expires at the period end) or on."""
    return await cmd.submit(intake.accept_auto_renew, body, subscription_id=str(subscription_id))
