"""Payments: buy a plan (intake → outbox → Kafka) and read your own payments."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from api import intake, queries
from api.deps import CommandDep, CurrentUser, CursorQuery, DbDep, command_route
from api.errors import InvalidRange, PaymentNotFound
from schemas.http import (
    Instant,
    PaymentAccepted,
    PaymentCreate,
    PaymentOut,
    PaymentPage,
    RetryAccepted,
    RetryCreate,
    error_responses,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/payments", tags=["payments"])

StatusFilter = Literal[
    "requested", "unknown", "pending", "waiting_for_capture", "succeeded", "canceled"
]


@command_route(router, "", PaymentAccepted)
async def create_payment(body: PaymentCreate, cmd: CommandDep) -> JSONResponse:
    """Pay for a plan. Needs an ``Idempotency-Key``: retrying with the same key and body
    returns the first answer (``Idempotent-Replayed: true``) and never charges twice. The
    price is the plan's price in force now; archived plans are not for sale. 202 means the
    command is durably accepted; poll ``status_url``. When the shop sends 54-FZ receipts and
    no contact is known (``receipt_email``/``receipt_phone``, the profile, the token's
    email), 422 ``receipt_contact_required``."""
    outcome = await cmd.accept(intake.accept_payment, body)
    if outcome.message is not None:
        log.info("accepted command %s", outcome.message.command_id)
    return cmd.intake.publish_and_answer(outcome)


@command_route(router, "/{payment_id}/retry", RetryAccepted)
async def retry_payment(payment_id: uuid.UUID, body: RetryCreate, cmd: CommandDep) -> JSONResponse:
    """Pay again for what one of your canceled payments was for, at the plan's price in force
    now: a new payment (``payment_id``), never the old one again. Needs an
    ``Idempotency-Key``. The ledger refuses (``status: rejected`` with the reason on the status
    URL) a payment that is not canceled, a payment in flight, or a period paid meanwhile.
    Someone else's payment is a 404."""
    return await cmd.submit(intake.accept_retry, body, retry_of=str(payment_id))


@router.get("", response_model=PaymentPage, responses=error_responses(400, 401, 422))
async def list_payments(
    user: CurrentUser,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: StatusFilter | None = None,
    cursor: CursorQuery = None,
    created_from: Annotated[
        Instant | None, Query(description="RFC 3339 with a zone; inclusive")
    ] = None,
    created_to: Annotated[
        Instant | None,
        Query(description="RFC 3339 with a zone; exclusive; not before created_from (422)"),
    ] = None,
) -> PaymentPage:
    """Your payments, newest first, optionally created in ``[created_from, created_to)``.
    Pass ``next_cursor`` back as ``cursor`` (with the same filters) for the next page."""
    if created_from is not None and created_to is not None and created_from > created_to:
        raise InvalidRange(details={"created_from": "after created_to"})
    return await queries.list_payments(
        db,
        user.user_id,
        limit=limit,
        status=status,
        cursor=cursor,
        created_from=created_from,
        created_to=created_to,
    )


@router.get("/{payment_id}", response_model=PaymentOut, responses=error_responses(401, 404, 422))
async def get_payment(payment_id: uuid.UUID, user: CurrentUser, db: DbDep) -> PaymentOut:
    """One of your payments. Right after the 202 it may read ``accepted`` until the ledger
    has taken it; someone else's payment is a 404, like a missing one."""
    payment = await queries.get_payment(db, user.user_id, payment_id)
    if payment is None:
        raise PaymentNotFound()
    return payment
