"""Admin console login: ``POST /api/v1/admin/session`` {username, password} → a short-lived
admin JWT (the same kind of token as any admin's: ``roles: ["admin"]``, ``sub`` = the
username, so actions are recorded as ``admin:<username>``).

The one console account comes from the settings: ``BILLING_DASHBOARD_ADMIN_USER`` and
``BILLING_DASHBOARD_ADMIN_PASSWORD_HASH``, an scrypt hash (``python -m dashboard
hash-password`` makes one); the password itself is never configured, stored or logged.
Without a hash the console login is disabled (503 ``admin_login_disabled``); tokens minted
by the cinema's auth service keep working.

Bad credentials answer 400 ``invalid_credentials`` (OAuth 2.0's password grant answers an
invalid grant the same way, RFC 6749 §5.2), the same for an unknown user and a wrong password,
in the same time. Repeated failures from one address for one username are refused for a while
(429 ``too_many_attempts`` with ``Retry-After``), and so are attempts of any outcome from one
address beyond ``rate_limit_logins_per_min`` (429 ``rate_limited``). The address is the real
client's: behind a proxy in ``api_trusted_proxies``, the one it forwarded (api/limits.py).
No Idempotency-Key: a login creates nothing, and storing its answer for a replay would store a
credential.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.auth import ADMIN_ROLE, mint_token
from api.deps import JsonBody, SettingsDep
from api.errors import ApiError, BadRequest, ServiceUnavailable
from api.limits import LimitsDep, limit_logins
from billing.config import ApiSettings
from billing.passwords import PasswordHashInvalid, verify_password
from schemas.http import SessionOut, error_responses

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/admin", tags=["session"])

MAX_FAILURES = 5
FAILURE_WINDOW_S = 300.0
MAX_TRACKED = 10_000


# ------------------------------------------------------------------------------- throttle
class LoginThrottle:
    """Failures per key (address, username) in a sliding window; at ``max_failures`` the key
    waits until the oldest failure leaves the window. Bounded: the least recently failed keys
    are forgotten first. In-process: each API replica counts its own."""

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
        max_keys: int = MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str) -> deque[float]:
        now = self._clock()
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, key: str) -> float | None:
        """Seconds this key must wait, or None if it may try now."""
        times = self._recent(key)
        if len(times) < self.max_failures:
            return None
        return max(0.0, times[0] + self.window_s - self._clock())

    def failed(self, key: str) -> None:
        times = self._recent(key)
        times.append(self._clock())
        self._failures[key] = times
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


async def get_throttle(request: Request) -> LoginThrottle:
    throttle: LoginThrottle | None = getattr(request.app.state, "login_throttle", None)
    if throttle is None:
        throttle = LoginThrottle()
        request.app.state.login_throttle = throttle
    return throttle


ThrottleDep = Annotated[LoginThrottle, Depends(get_throttle)]


# --------------------------------------------------------------------------------- errors
class InvalidCredentials(BadRequest):
    code = "invalid_credentials"
    message = "the username or the password is wrong"


class TooManyAttempts(ApiError):
    status_code = 429
    code = "too_many_attempts"
    message = "too many failed logins; wait before trying again"

    def __init__(self, retry_after_s: float) -> None:
        wait = max(1, int(retry_after_s + 0.999))
        super().__init__(details={"retry_after_s": wait}, headers={"Retry-After": str(wait)})


class AdminLoginDisabled(ServiceUnavailable):
    code = "admin_login_disabled"
    message = (
        "console login is not configured on this API: set BILLING_DASHBOARD_ADMIN_PASSWORD_HASH"
        " (python -m dashboard hash-password)"
    )


# ---------------------------------------------------------------------------------- route
Username = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$"),
]
# Any text but control characters (billing.passwords.valid_password, as a pattern here so the
# OpenAPI document says it).
Password = Annotated[
    str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    username: Username
    password: Password = Field(json_schema_extra={"format": "password", "writeOnly": True})

    def __repr__(self) -> str:  # never the password, whatever logs this object
        return f"SessionCreate(username={self.username!r}, password='**********')"

    __str__ = __repr__


def _client_key(address: str, username: str) -> str:
    return f"{address}\x00{username.casefold()}"


async def check_credentials(settings: ApiSettings, username: str, password: str) -> bool:
    """True when both match the configured account. Always hashes, so an unknown username
    takes as long as a wrong password."""
    configured = settings.dashboard_admin_password_hash
    if configured is None:
        raise AdminLoginDisabled()
    encoded = configured.get_secret_value()
    try:
        password_ok = await asyncio.to_thread(verify_password, password, encoded)
    except PasswordHashInvalid as exc:
        log.error("BILLING_DASHBOARD_ADMIN_PASSWORD_HASH is malformed (%s): login disabled", exc)
        raise AdminLoginDisabled(
            "BILLING_DASHBOARD_ADMIN_PASSWORD_HASH is malformed; make one with"
            " python -m dashboard hash-password"
        ) from exc
    user_ok = hmac.compare_digest(username.encode(), settings.dashboard_admin_user.encode())
    return user_ok and password_ok


@router.post(
    "/session",
    response_model=SessionOut,
    dependencies=[Depends(limit_logins), JsonBody],
    responses=error_responses(400, 413, 415, 422, 429, 503),
)
async def create_session(
    request: Request,
    body: SessionCreate,
    settings: SettingsDep,
    throttle: ThrottleDep,
    limits: LimitsDep,
) -> SessionOut:
    """Log in to the admin console: a short-lived admin token (``dashboard_session_ttl_s``).
    400 ``invalid_credentials``; 429 after repeated failures; 503 when not configured."""
    key = _client_key(limits.client(request), body.username)
    wait = throttle.retry_after(key)
    if wait is not None:
        log.warning("console login refused (throttled) for %r", body.username)
        raise TooManyAttempts(wait)
    if not await check_credentials(settings, body.username, body.password):
        throttle.failed(key)
        log.warning("console login failed for %r", body.username)
        raise InvalidCredentials()
    throttle.succeeded(key)
    ttl = settings.dashboard_session_ttl_s
    issued = datetime.now(UTC)
    token = mint_token(settings, body.username, roles=(ADMIN_ROLE,), ttl_s=ttl)
    log.info("console login: %r (token for %ss)", body.username, ttl)
    return SessionOut(
        access_token=token,
        expires_in=ttl,
        expires_at=(issued + timedelta(seconds=ttl)).replace(microsecond=0),
        user_id=body.username,
        roles=[ADMIN_ROLE],
    )
