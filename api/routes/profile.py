"""Your profile (issue 16): the contact 54-FZ receipts are sent to (an email and/or a phone).

``POST /api/v1/payments`` takes the contact from its body first, then from here, then from
the sign-on token's ``email`` claim; the one a payment used is kept by the ledger for
renewals and refunds. A change here applies to the next payment or refund asked for, never
to one already requested (its provider body is fixed under its Idempotence-Key).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import CommandDep, CurrentUser, DbDep, command_route
from api.intake import Conn
from schemas.http import ProfileIn, ProfileOut, error_responses

router = APIRouter(prefix="/api/v1/profile", tags=["profile"])


async def _read(db: Conn, user_id: str, token_email: str | None) -> ProfileOut:
    cur = await db.execute(
        "SELECT email, phone, updated_at FROM user_profiles WHERE user_id = %s", (user_id,)
    )
    row = await cur.fetchone()
    email, phone, updated_at = row if row is not None else (None, None, None)
    from_token = email is None and token_email is not None
    return ProfileOut(
        user_id=user_id,
        email=email if email is not None else token_email,
        phone=phone,
        email_from_token=from_token,
        updated_at=updated_at,
    )


@router.get("", response_model=ProfileOut, responses=error_responses(401))
async def get_profile(user: CurrentUser, db: DbDep) -> ProfileOut:
    """Your receipt contact (the token's email when you saved none)."""
    return await _read(db, user.user_id, user.email)


@command_route(router, "", ProfileOut, method="PUT", status_code=200)
async def put_profile(body: ProfileIn, cmd: CommandDep) -> JSONResponse:
    """Set your receipt contact (both fields; null clears one). Needs an
    ``Idempotency-Key`` like every write (the same key and body answer the first result)."""
    user_id, token_email = cmd.caller.user_id, cmd.caller.email

    async def write(conn: Conn) -> tuple[int, dict[str, Any]]:
        await conn.execute(
            "INSERT INTO user_profiles (user_id, email, phone, updated_at)"
            " VALUES (%s, %s, %s, now()) ON CONFLICT (user_id) DO UPDATE"
            " SET email = EXCLUDED.email, phone = EXCLUDED.phone, updated_at = now()",
            (user_id, body.email, body.phone),
        )
        return 200, (await _read(conn, user_id, token_email)).model_dump(mode="json")

    return await cmd.write(body, write)
