"""Your subscription, from the read model."""

from __future__ import annotations

from fastapi import APIRouter

from api import queries
from api.deps import CurrentUser, DbDep
from api.errors import SubscriptionNotFound
from api.models import SubscriptionOut, error_responses

router = APIRouter(prefix="/api/v1/subscriptions", tags=["subscriptions"])


@router.get("/me", response_model=SubscriptionOut, responses=error_responses(401, 404))
async def my_subscription(user: CurrentUser, db: DbDep) -> SubscriptionOut:
    """Your subscription: ``active`` is true while a paid period covers now."""
    sub = await queries.get_subscription(db, user.user_id)
    if sub is None:
        raise SubscriptionNotFound()
    return sub
