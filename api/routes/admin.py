"""Admin endpoints (admin role). More arrive with the console; this one shows what is stuck."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api import queries
from api.deps import AdminUser, DbDep
from api.models import CommandOut, error_responses

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


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
