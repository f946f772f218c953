"""Admin reconciliation (admin role): runs with their counts per class, the discrepancies found
across runs with their resolution, and an admin's decision on an escalated one.

Built on ``reconciler/store.py`` (tables of migration 0005). Runs are started by the
reconciler (CLI or nightly job), never from here.

A decision (``POST /resolutions``) follows the Idempotency-Key rules of every admin write.
Accepting the provider's view of a payment or refund of ours that the provider never made
also sends the ledger the provider's view: a canceled observation from reconciliation, for
billing.provider-events, with an id derived from the provider object. It goes through the
outbox like every command (a row written in the decision's transaction, published after the
commit, republished by the relay until the projection sees the payment or refund canceled),
so a broker outage never loses it and never fails the decision.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from api import intake
from api.deps import (
    AdminUser,
    DbDep,
    IdempotencyKey,
    IntakeDep,
    JsonBody,
    get_admin_user,
)
from api.errors import ApiError, Conflict, NotFound, Unprocessable
from billing.clock import now_ms
from billing.config import ApiSettings
from reconciler import store
from schemas.http import (
    DiscrepancyOut,
    DiscrepancyPage,
    ReconciliationSummary,
    ResolutionCreate,
    ResolutionOut,
    RunOut,
    RunPage,
    error_responses,
)
from schemas.messages import PaymentObserved, RefundObserved, encode
from schemas.recon_match import MatchClass
from schemas.topics import PROVIDER_EVENTS

log = logging.getLogger(__name__)

# A UUID, with or without its hyphens (anything else is a 422, not a database error).
UUID_PATTERN = r"^[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}$"

router = APIRouter(
    prefix="/api/v1/admin/reconciliation",
    tags=["reconciliation"],
    dependencies=[Depends(get_admin_user)],
)

READ_ERRORS = error_responses(401, 403, 422)
WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
MAX_RUNS_PAGE = 50


def refusal(exc: store.StoreError) -> ApiError:
    """The store's refusal of a decision as the API answers it (clients branch on ``code``)."""
    if isinstance(exc, store.NotADiscrepancy):
        return Unprocessable(
            "this item agrees with the provider (or is in flight): nothing to resolve",
            code="not_a_discrepancy",
        )
    if isinstance(exc, store.AlreadyResolved):
        return Conflict(
            "an admin already decided this discrepancy otherwise",
            code="already_resolved",
            details={"resolution": exc.resolution, "resolved_by": exc.resolved_by},
        )
    return NotFound("no such discrepancy", code="discrepancy_not_found")


class CorrectionImpossible(Unprocessable):
    code = "correction_impossible"
    message = "the provider's view cannot be sent to the ledger: the item names no object of ours"


# --------------------------------------------------------------------------------- routes
@router.get("/summary", response_model=ReconciliationSummary, responses=READ_ERRORS)
async def summary(_admin: AdminUser, db: DbDep) -> ReconciliationSummary:
    """Open discrepancies (in total and per class) and the latest run: the overview tile."""
    cur = await db.execute(
        "SELECT kind, count(*) FROM recon_items WHERE discrepancy AND resolution IS NULL"
        " GROUP BY kind ORDER BY kind"
    )
    by_kind = {str(kind): int(n) for kind, n in await cur.fetchall()}
    cur = await db.execute(
        "SELECT run_id::text FROM recon_runs ORDER BY started_at DESC, run_id LIMIT 1"
    )
    row = await cur.fetchone()
    last = RunOut.of(await store.run_report(db, row[0])) if row is not None else None
    return ReconciliationSummary(
        open_discrepancies=sum(by_kind.values()), open_by_kind=by_kind, last_run=last
    )


@router.get("/runs", response_model=RunPage, responses=READ_ERRORS)
async def list_runs(
    _admin: AdminUser,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=MAX_RUNS_PAGE)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> RunPage:
    """Runs, newest first, each with its counts per class, totals on both sides, and how
    many of its discrepancies are still open."""
    cur = await db.execute(
        "SELECT run_id::text FROM recon_runs ORDER BY started_at DESC, run_id LIMIT %s OFFSET %s",
        (limit + 1, offset),
    )
    ids = [str(r[0]) for r in await cur.fetchall()]
    items = [RunOut.of(await store.run_report(db, run_id)) for run_id in ids[:limit]]
    return RunPage(items=items, next_offset=offset + limit if len(ids) > limit else None)


@router.get("/discrepancies", response_model=DiscrepancyPage, responses=READ_ERRORS)
async def list_discrepancies(
    _admin: AdminUser,
    db: DbDep,
    run_id: Annotated[str | None, Query(pattern=UUID_PATTERN)] = None,
    open_only: Annotated[bool, Query(description="false: resolved ones too")] = True,
    kind: Annotated[list[MatchClass] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> DiscrepancyPage:
    """Discrepancies across runs (or those ``run_id`` found), most recently seen first; by
    default the escalation queue: the ones still waiting for a decision."""
    rows = await store.list_items(
        db,
        run_id=run_id,
        unresolved_only=open_only,
        discrepancies_only=True,
        kinds=kind,
        limit=limit + 1,
        offset=offset,
    )
    return DiscrepancyPage(
        items=[DiscrepancyOut.of(r) for r in rows[:limit]],
        next_offset=offset + limit if len(rows) > limit else None,
    )


def _uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _enqueue_correction(
    conn: Any, settings: ApiSettings, follow_up: PaymentObserved | RefundObserved, actor: str
) -> intake.OutboxMessage | None:
    """Write the correction into the outbox in the decision's transaction.

    The object's read-model row is locked (FOR SHARE) first: if it is canceled already the
    ledger has nothing to apply and no event would ever close the row, so it is written closed;
    otherwise a projection canceling it meanwhile waits for this commit and then closes the
    new row (streams/projection/agent.py). A correction recorded before (the same decision again)
    is left to its relay: nothing new to publish."""
    if isinstance(follow_up, PaymentObserved):
        object_id, table, column = follow_up.payment_id, "payments", "payment_id"
    else:
        object_id, table, column = follow_up.refund_id, "refunds", "refund_id"
    if not (_uuid(follow_up.subscription_id) and _uuid(object_id)):
        raise CorrectionImpossible(details={"subscription_id": follow_up.subscription_id})
    cur = await conn.execute(
        f"SELECT user_id, status FROM {table} WHERE {column} = %s FOR SHARE", (object_id,)
    )
    row = await cur.fetchone()
    already = row is not None and row[1] == follow_up.status
    return await intake.enqueue(
        conn,
        settings,
        message_id=follow_up.observation_id,
        subscription_id=follow_up.subscription_id,
        user_id=str(row[0]) if row is not None else actor,
        message_type=type(follow_up).__name__,
        payload=encode(follow_up),
        topic=PROVIDER_EVENTS,
        closed_reason=f"nothing to apply: already {follow_up.status}" if already else None,
    )


@router.post(
    "/resolutions",
    response_model=ResolutionOut,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def resolve(
    request: Request,
    admin: AdminUser,
    key: IdempotencyKey,
    body: ResolutionCreate,
    ctx: IntakeDep,
) -> JSONResponse:
    """Decide an open (or reconciler-repaired) discrepancy, with a reason. Deciding the same
    again is harmless (``changed`` false); deciding otherwise after an admin decided is 409
    ``already_resolved``. A ledger correction is recorded with the decision and delivered by
    the outbox (``correction_id``: its status under /api/v1/admin/commands); 422
    ``correction_impossible`` if the item does not name our object by its ids."""
    actor = intake.actor_of(admin.user_id)

    async def write(conn: Any) -> tuple[int, dict[str, Any], intake.OutboxMessage | None]:
        try:
            resolved = await store.resolve(
                conn,
                body.item_key,
                resolution=body.resolution,
                actor=actor,
                note=body.reason,
                at=now_ms(),
            )
        except (store.ItemNotFound, store.NotADiscrepancy, store.AlreadyResolved) as exc:
            raise refusal(exc) from exc
        follow_up = resolved.follow_up
        message = None
        if follow_up is not None:
            message = await _enqueue_correction(conn, ctx.settings, follow_up, actor)
        out = ResolutionOut(
            item=DiscrepancyOut.of(resolved.item),
            changed=resolved.changed,
            ledger_correction=follow_up is not None,
            correction_id=follow_up.observation_id if follow_up is not None else None,
        )
        return 200, out.model_dump(mode="json"), message

    outcome = await intake.accept_write_and_send(
        ctx.pool,
        user_id=admin.user_id,
        idem_key=key,
        fp=intake.fingerprint(request.method, request.url.path, body.model_dump(mode="json")),
        write=write,
    )
    if outcome.message is not None:
        log.info("reconciliation: %s accepted from the provider, correction queued", body.item_key)
    # Publishes a new correction now; the relay covers a failure.
    return ctx.publish_and_answer(outcome)
