"""The plan catalogue (public): the only source of prices."""

from __future__ import annotations

from fastapi import APIRouter

from api import queries
from api.deps import DbDep
from schemas.http import PlanOut

router = APIRouter(prefix="/api/v1/plans", tags=["plans"])


@router.get("", response_model=list[PlanOut])
async def list_plans(db: DbDep) -> list[PlanOut]:
    """Plans on sale, with the price in force now (``price_version``), the next scheduled
    price if any (``next_price``), and the period. No authentication needed."""
    return await queries.list_plans(db)
