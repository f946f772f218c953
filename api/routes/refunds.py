"""Refunds: ask for one (intake → outbox → ledger, which enforces the refundable amount) and
read your own."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from api import intake, queries
from api.deps import CommandDep, CommandRequest, CurrentUser, CursorQuery, DbDep, command_route
from api.errors import PaymentNotFound, PaymentNotProcessed, RefundNotFound
from api.intake import IntakeOutcome
from schemas.http import (
    AdminRefundCreate,
    RefundAccepted,
    RefundCreate,
    RefundOut,
    RefundPage,
    error_responses,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["refunds"])

RefundStatusFilter = Literal["requested", "unknown", "pending", "succeeded", "canceled"]


async def refund_or_not_yet(
    cmd: CommandRequest,
    body: RefundCreate | AdminRefundCreate,
    payment_id: uuid.UUID,
    *,
    admin: bool,
) -> IntakeOutcome:
    """Accept a refund; a payment the caller can see as ``accepted`` but the ledger has not
    taken yet is 409 ``payment_not_processed`` (retry later), not a 404."""
    try:
        return await cmd.accept(intake.accept_refund, body, payment_id=str(payment_id), admin=admin)
    except PaymentNotFound:
        async with cmd.intake.pool.connection() as conn:
            owner = None if admin else cmd.caller.user_id
            if await queries.payment_accepted(conn, str(payment_id), owner):
                raise PaymentNotProcessed() from None
        raise


@command_route(router, "/payments/{payment_id}/refunds", RefundAccepted)
async def create_refund(payment_id: uuid.UUID, body: RefundCreate, cmd: CommandDep) -> JSONResponse:
    """Refund one of your payments, fully (no ``amount``) or partly. Needs an
    ``Idempotency-Key``. 202 means accepted; the ledger refuses more than is still
    refundable (``status: rejected`` with the reason on the status URL). A full refund of the
    current period's payment ends access at once; a partial one keeps it."""
    outcome = await refund_or_not_yet(cmd, body, payment_id, admin=False)
    if outcome.message is not None:
        log.info("accepted refund command %s", outcome.message.command_id)
    return cmd.intake.publish_and_answer(outcome)


@router.get(
    "/payments/{payment_id}/refunds",
    response_model=list[RefundOut],
    responses=error_responses(401, 404, 422),
)
async def list_refunds(payment_id: uuid.UUID, user: CurrentUser, db: DbDep) -> list[RefundOut]:
    """The refunds of one of your payments, oldest first; someone else's payment is a 404."""
    refunds = await queries.list_refunds(db, user.user_id, payment_id)
    if refunds is None:
        raise PaymentNotFound()
    return refunds


@router.get("/refunds", response_model=RefundPage, responses=error_responses(400, 401, 422))
async def list_my_refunds(
    user: CurrentUser,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: RefundStatusFilter | None = None,
    cursor: CursorQuery = None,
) -> RefundPage:
    """Your refunds (of all your payments), newest first. Pass ``next_cursor`` back as
    ``cursor`` for the next page. A refund the ledger refused never appears here: its status
    URL says why."""
    return await queries.list_user_refunds(
        db, user.user_id, limit=limit, status=status, cursor=cursor
    )


@router.get("/refunds/{refund_id}", response_model=RefundOut, responses=error_responses(401, 404))
async def get_refund(refund_id: uuid.UUID, user: CurrentUser, db: DbDep) -> RefundOut:
    """One of your refunds; someone else's is a 404, like a missing one."""
    refund = await queries.get_refund(db, user.user_id, refund_id)
    if refund is None:
        raise RefundNotFound()
    return refund
