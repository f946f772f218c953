"""Promo codes (issue 16): the admin's codes (create, list, archive, redemptions) and a
user's quote of a plan with a code, priced by the same function as the payment it quotes.

The codes live in PostgreSQL (migration 0013, api/promo.py): the admin's writes are plain
writes under an Idempotency-Key (a retried create never makes a second code), each logged
with the admin as the actor and the reason. A code is redeemed by ``POST /api/v1/payments``
with ``promo_code`` (api/intake.py), in the transaction that accepts the payment.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse

from api import intake, promo
from api.deps import AdminCommandDep, AdminUser, CurrentUser, DbDep, command_route, get_admin_user
from api.routes.analytics import ERRORS as ANALYTICS_ERRORS
from api.routes.analytics import AskDep, Window
from schemas.http import PLAN_ID_PATTERN, AdminReason, error_responses
from schemas.http_promo import DiscountOut, PromoCreate, PromoOut, PromoRedemptionOut, QuoteOut
from schemas.promo import PROMO_CODE_PATTERN

router = APIRouter(prefix="/api/v1/plans", tags=["plans"])
admin_router = APIRouter(
    prefix="/api/v1/admin/promo-codes", tags=["admin"], dependencies=[Depends(get_admin_user)]
)

analytics_router = APIRouter(
    prefix="/api/v1/admin/analytics", tags=["analytics"], dependencies=[Depends(get_admin_user)]
)

CodePath = Annotated[str, Path(pattern=PROMO_CODE_PATTERN, description="case-insensitive")]
WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)


@router.get("/{plan_id}/quote", response_model=QuoteOut, responses=error_responses(401, 404, 422))
async def quote(
    plan_id: Annotated[str, Path(min_length=1, max_length=64, pattern=PLAN_ID_PATTERN)],
    user: CurrentUser,
    db: DbDep,
    promo_code: Annotated[str | None, Query(pattern=PROMO_CODE_PATTERN)] = None,
) -> QuoteOut:
    """What ``POST /api/v1/payments`` with this plan (and ``promo_code``) would charge you now:
    the plan's price in force, the discount and the charge, from the same pricing function
    as the payment. Refused as the payment would be (404 plan_not_found, 422
    plan_unavailable, promo_not_found, promo_expired, promo_exhausted, promo_already_used,
    promo_not_for_plan); nothing is reserved."""
    plan = await intake._quote_for_sale(db, plan_id)
    assert plan.quote is not None
    return await promo.quote(db, plan.quote, promo_code, user.user_id)


@command_route(admin_router, "", PromoOut, status_code=201, responses=WRITE_ERRORS)
async def create_code(body: PromoCreate, cmd: AdminCommandDep) -> JSONResponse:
    """Create a promo code: percent (1..100) or a fixed amount off, for one charge
    (``periods`` 1), the first N or every one (omitted), for some plans or all, until
    ``expires_at``, at most ``max_redemptions`` times; each user redeems it once. 409
    ``promo_exists`` if the name is taken in any case; 404 for an unknown plan; 422
    ``promo_expiry_in_past``."""
    actor = intake.actor_of(cmd.caller.user_id)
    return await cmd.write(body, lambda conn: promo.create(conn, actor, body))


@admin_router.get("", response_model=list[PromoOut], responses=error_responses(401, 403, 422))
async def list_codes(_admin: AdminUser, db: DbDep, archived: bool = False) -> list[PromoOut]:
    """Promo codes, newest first, with their redemption counts (``archived``: those too)."""
    return await promo.list_codes(db, archived=archived)


@admin_router.get("/{code}", response_model=PromoOut, responses=error_responses(401, 403, 404, 422))
async def get_code(code: CodePath, _admin: AdminUser, db: DbDep) -> PromoOut:
    """One promo code (404 promo_not_found)."""
    return await promo.get_code(db, code)


@command_route(admin_router, "/{code}/archive", PromoOut, status_code=None, responses=WRITE_ERRORS)
async def archive_code(code: CodePath, body: AdminReason, cmd: AdminCommandDep) -> JSONResponse:
    """Archive a code: never redeemable again; subscriptions it already discounts keep their
    discount for its duration. 404 promo_not_found."""
    actor = intake.actor_of(cmd.caller.user_id)
    return await cmd.write(body, lambda conn: promo.archive(conn, actor, code, body.reason))


@admin_router.get(
    "/{code}/redemptions",
    response_model=list[PromoRedemptionOut],
    responses=error_responses(401, 403, 404, 422),
)
async def redemptions(
    code: CodePath,
    _admin: AdminUser,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[PromoRedemptionOut]:
    """Who redeemed a code, newest first: the plan, its price, the discount on the first
    charge and the payment's status."""
    return await promo.redemptions(db, code, limit=limit)


@analytics_router.get("/discounts", response_model=list[DiscountOut], responses=ANALYTICS_ERRORS)
async def discounts(ask: AskDep, window: Window) -> Any:
    """Promo discounts on the charges that succeeded in the window, per code and currency
    (revenue is what was charged; MRR counts a discounted period at its charge)."""
    return await ask("discounts", window, list[DiscountOut])
