"""The wallet (issue 16): your saved payment methods, a new card saved through a card check,
which one renewals charge, and forgetting one. Admins see a subscriber's methods.

Only what YooKassa returns as displayable is kept (type, title, first6/last4, expiry, card
type, issuer), from the read model ``payment_methods`` (migration 0011). Changes are commands
to the ledger (one subscription, one partition: serialised with renewals), so a deleted
method is never charged again and a renewal uses the default in force when it is asked.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field

from api import intake
from api.deps import AdminUser, CommandDep, CurrentUser, DbDep, command_route
from api.errors import NotFound
from billing.config import ApiSettings
from schemas.http import PaymentMethodList, PaymentMethodOut, ReturnUrl, error_responses
from schemas.ids import subscription_id_for
from schemas.messages import AddPaymentMethod, Command, ManagePaymentMethod

router = APIRouter(prefix="/api/v1/payment-methods", tags=["payment-methods"])
admin_router = APIRouter(prefix="/api/v1/admin/subscriptions", tags=["admin"])

MethodId = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]{1,64}$")


class PaymentMethodCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    return_url: ReturnUrl = Field(description="where the provider sends the user back")


class PaymentMethodAccepted(BaseModel):
    payment_id: str = Field(description="the card check: follow its confirmation_url")
    status: str
    status_url: str


class MethodChangeAccepted(BaseModel):
    method_id: str
    action: str
    status: str
    status_url: str


class _MethodAction(BaseModel):
    """The fingerprint of a default/delete request (no body): the method and the action."""

    method_id: str
    action: str


class PaymentMethodNotFound(NotFound):
    code = "payment_method_not_found"
    message = "no such saved payment method"


_COLUMNS = (
    "method_id, type, title, first6, last4, expiry_month, expiry_year, card_type,"
    " issuer_country, issuer_name, is_default, created_at"
)


async def _methods(db: Any, subscription_id: str) -> PaymentMethodList:
    cur = await db.execute(
        f"SELECT {_COLUMNS} FROM payment_methods"
        " WHERE subscription_id = %s AND deleted_at IS NULL ORDER BY created_at, method_id",
        (subscription_id,),
    )
    items = [
        PaymentMethodOut(
            method_id=r[0],
            type=r[1],
            title=r[2],
            first6=r[3],
            last4=r[4],
            expiry_month=r[5],
            expiry_year=r[6],
            card_type=r[7],
            issuer_country=r[8],
            issuer_name=r[9],
            default=bool(r[10]),
            created_at=r[11].isoformat(),
        )
        for r in await cur.fetchall()
    ]
    return PaymentMethodList(items=items)


@router.get("", response_model=PaymentMethodList, responses=error_responses(401))
async def list_methods(user: CurrentUser, db: DbDep) -> PaymentMethodList:
    """Your saved payment methods (displayable details only); ``default`` is the one renewals
    charge."""
    return await _methods(db, subscription_id_for(user.user_id))


@admin_router.get(
    "/{subscription_id}/payment-methods",
    response_model=PaymentMethodList,
    responses=error_responses(401, 403, 422),
)
async def admin_list_methods(
    subscription_id: uuid.UUID, _admin: AdminUser, db: DbDep
) -> PaymentMethodList:
    """A subscriber's saved payment methods (admin)."""
    return await _methods(db, str(subscription_id))


async def _accept_add(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    caller: intake.Caller,
    request: PaymentMethodCreate,
) -> intake.IntakeOutcome:
    command_id, payment_id = caller.command_id, caller.payment_id
    sub_id = caller.own_subscription_id

    async def build(conn: intake.Conn) -> tuple[Command, dict[str, Any]]:
        command = AddPaymentMethod(
            **intake._head(command_id, sub_id, caller.user_id),
            payment_id=payment_id,
            return_url=request.return_url,
        )
        return command, intake._accepted(intake.status_url(payment_id), payment_id=payment_id)

    return await intake._accept(pool, settings, caller, request, build, payment_id=payment_id)


async def _accept_manage(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    caller: intake.Caller,
    request: _MethodAction,
) -> intake.IntakeOutcome:
    command_id = caller.command_id
    sub_id = caller.own_subscription_id

    async def build(conn: intake.Conn) -> tuple[Command, dict[str, Any]]:
        cur = await conn.execute(
            "SELECT 1 FROM payment_methods WHERE method_id = %s AND subscription_id = %s"
            " AND deleted_at IS NULL",
            (request.method_id, sub_id),
        )
        if await cur.fetchone() is None:  # someone else's is a 404 too
            raise PaymentMethodNotFound(details={"method_id": request.method_id})
        command = ManagePaymentMethod(
            **intake._head(command_id, sub_id, caller.user_id),
            method_id=request.method_id,
            action="default" if request.action == "default" else "delete",
        )
        body = intake._accepted(
            intake.command_status_url(command_id),
            method_id=request.method_id,
            action=request.action,
        )
        return command, body

    return await intake._accept(pool, settings, caller, request, build)


@command_route(router, "", PaymentMethodAccepted)
async def add_method(body: PaymentMethodCreate, cmd: CommandDep) -> JSONResponse:
    """Save a new card: a card check (a 1.00 hold, released at once: nothing is charged) you
    confirm at the ``confirmation_url`` of the payment on ``status_url``; once held, the card
    is saved and becomes the default. Needs an ``Idempotency-Key``. Refused (``rejected`` on
    the status URL) while another payment of yours is in flight or with 10 cards saved."""
    return await cmd.submit(_accept_add, body)


@router.api_route(
    "/{method_id}/default",
    methods=["PUT"],
    status_code=202,
    response_model=MethodChangeAccepted,
    responses=error_responses(400, 401, 404, 409, 422),
)
async def make_default(cmd: CommandDep, method_id: str = MethodId) -> JSONResponse:
    """Make a saved method the one renewals charge (from the next charge asked). Needs an
    ``Idempotency-Key``; no body. Someone else's method is a 404."""
    return await cmd.submit(_accept_manage, _MethodAction(method_id=method_id, action="default"))


@router.api_route(
    "/{method_id}",
    methods=["DELETE"],
    status_code=202,
    response_model=MethodChangeAccepted,
    responses=error_responses(400, 401, 404, 409, 422),
)
async def delete_method(cmd: CommandDep, method_id: str = MethodId) -> JSONResponse:
    """Forget a saved method: it is never charged again. The default goes to your newest other
    method; with none left, the next renewal tells you and goes to dunning until you add one.
    Refused (``rejected`` on the status URL) while a payment charging it is in flight."""
    return await cmd.submit(_accept_manage, _MethodAction(method_id=method_id, action="delete"))
