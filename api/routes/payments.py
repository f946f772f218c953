"""Payments: buy a plan (intake → outbox → Kafka) and read your own payments."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
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
from api.errors import PaymentNotFound
from api.models import PaymentAccepted, PaymentCreate, PaymentOut, PaymentPage, error_responses
from api.relay import publish_soon

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/payments", tags=["payments"])

StatusFilter = Literal[
    "requested", "unknown", "pending", "waiting_for_capture", "succeeded", "canceled"
]


@router.post(
    "",
    status_code=202,
    response_model=PaymentAccepted,
    dependencies=[JsonBody],
    responses=error_responses(400, 401, 404, 409, 413, 415, 422, 503),
)
async def create_payment(
    request: Request,
    user: CurrentUser,
    key: IdempotencyKey,
    body: PaymentCreate,
    pool: PoolDep,
    publisher: PublisherDep,
    background: BackgroundDep,
    settings: SettingsDep,
) -> JSONResponse:
    """Pay for a plan. Needs an ``Idempotency-Key``: retrying with the same key and body
    returns the first answer (``Idempotent-Replayed: true``) and never charges twice. The
    price comes from the plan. 202 means the command is durably accepted; poll
    ``status_url``."""
    outcome = await intake.accept_payment(
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
        log.info("accepted command %s", outcome.message.command_id)
    headers: dict[str, str] = {}
    if outcome.location:
        headers["Location"] = outcome.location
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)


@router.get("", response_model=PaymentPage, responses=error_responses(400, 401, 422))
async def list_payments(
    user: CurrentUser,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: StatusFilter | None = None,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> PaymentPage:
    """Your payments, newest first. Pass ``next_cursor`` back as ``cursor`` for the next
    page."""
    return await queries.list_payments(db, user.user_id, limit=limit, status=status, cursor=cursor)


@router.get("/{payment_id}", response_model=PaymentOut, responses=error_responses(401, 404, 422))
async def get_payment(payment_id: uuid.UUID, user: CurrentUser, db: DbDep) -> PaymentOut:
    """One of your payments. Right after the 202 it may read ``accepted`` until the ledger
    has taken it; someone else's payment is a 404, like a missing one."""
    payment = await queries.get_payment(db, user.user_id, payment_id)
    if payment is None:
        raise PaymentNotFound()
    return payment
