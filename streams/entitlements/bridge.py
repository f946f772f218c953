"""The entitlements bridge: ``billing.entitlements`` → a realm role in Keycloak.

Each :class:`~schemas.notifications.Entitlement` (``granted``/``revoked``, keyed by
subscription id, one subscription per user) sets or removes ``keycloak_subscriber_role`` on
the Keycloak user whose id is the message's ``user_id`` (the SSO token's ``sub``) through
Keycloak's admin REST API.

* **Idempotent**: Keycloak's role-mapping POST of a role the user holds and DELETE of one
  it does not both answer 204, so a replay changes nothing.
* **In order per user**: a user's messages share one key, so one partition, read in order;
  within a batch only each subscription's latest message (highest ``version``) is applied,
  which leaves the same roles as applying all of them in order.
* **Surviving restarts**: run by streams.consumer.run_consumer, which commits a batch's
  offsets only after its roles are set (a failure is retried with backoff, the offsets
  wait); a restart replays at most the uncommitted batch.

A user Keycloak does not know (tokens of the local stack's HS256 users, a deleted account)
is skipped and counted, not retried: no role can ever be set on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
from prometheus_client import Counter

from billing.config import KeycloakAdminFields
from schemas import notifications as contract
from schemas.notifications import Entitlement
from streams.consumer import Record

log = logging.getLogger(__name__)

CONCURRENCY = 8  # distinct users at once (one user's changes are never concurrent)

APPLIED = Counter(
    "billing_entitlements_applied_total",
    "Entitlement changes the bridge applied in Keycloak, by action (granted, revoked) and "
    "outcome (ok, unknown_user, superseded, undecodable)",
    ["action", "outcome"],
)


class KeycloakError(RuntimeError):
    """Keycloak answered something other than success (retried by the consumer loop)."""


def latest_per_subscription(records: Sequence[Record]) -> list[Entitlement]:
    """The last entitlement of each subscription in ``records`` (by version, then offset):
    applying only it leaves the roles that applying every one in order would."""
    latest: dict[str, Entitlement] = {}
    for r in records:
        try:
            msg = contract.decode(r.value or b"")
        except Exception as exc:  # a foreign or broken record must not stall the bridge
            log.error("entitlements: undecodable record at %s@%s: %r", r.partition, r.offset, exc)
            APPLIED.labels("unknown", "undecodable").inc()
            continue
        if not isinstance(msg, Entitlement):
            continue
        seen = latest.get(msg.subscription_id)
        if seen is None or msg.version >= seen.version:
            if seen is not None:
                APPLIED.labels(seen.action, "superseded").inc()
            latest[msg.subscription_id] = msg
        else:
            APPLIED.labels(msg.action, "superseded").inc()
    return list(latest.values())


class KeycloakRoles:
    """Grants and revokes one realm role through the admin REST API. Its access token (client
    credentials of a service account; outside prod possibly an admin user's password grant)
    is kept until shortly before it expires and fetched again after a 401."""

    def __init__(self, settings: KeycloakAdminFields, http: httpx.AsyncClient | None = None):
        self.settings = settings
        self.base = settings.keycloak_url.rstrip("/")
        self.http = http or httpx.AsyncClient(timeout=settings.keycloak_timeout_s)
        self._token: str | None = None
        self._token_until = 0.0
        self._role: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self.last_ok = 0.0  # monotonic time of the last successful call (readiness)

    async def _access_token(self) -> str:
        async with self._lock:
            if self._token is not None and time.monotonic() < self._token_until:
                return self._token
            settings = self.settings
            realm = settings.keycloak_admin_realm or settings.keycloak_realm
            if settings.keycloak_admin_user:
                password = settings.keycloak_admin_password
                form = {
                    "grant_type": "password",
                    "client_id": "admin-cli",
                    "username": settings.keycloak_admin_user,
                    "password": password.get_secret_value() if password else "",
                }
            else:
                secret = settings.keycloak_client_secret
                form = {
                    "grant_type": "client_credentials",
                    "client_id": settings.keycloak_client_id,
                    "client_secret": secret.get_secret_value() if secret else "",
                }
            url = f"{self.base}/realms/{realm}/protocol/openid-connect/token"
            resp = await self.http.post(url, data=form)
            if resp.status_code != 200:
                raise KeycloakError(f"token request refused: HTTP {resp.status_code}")
            body = resp.json()
            self._token = str(body["access_token"])
            # Renew when 80% of its life is gone (master admin tokens live 60 s).
            self._token_until = time.monotonic() + 0.8 * float(body.get("expires_in", 60))
            return self._token

    async def _call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        url = f"{self.base}/admin/realms/{self.settings.keycloak_realm}{path}"
        for attempt in (0, 1):
            headers = {"Authorization": f"Bearer {await self._access_token()}"}
            resp = await self.http.request(method, url, json=json, headers=headers)
            if resp.status_code == 401 and attempt == 0:
                self._token = None  # expired or revoked early: one fresh token
                continue
            return resp
        raise AssertionError("unreachable")

    async def _role_representation(self) -> dict[str, Any]:
        if self._role is None:
            name = self.settings.keycloak_subscriber_role
            resp = await self._call("GET", f"/roles/{name}")
            if resp.status_code != 200:
                raise KeycloakError(f"realm role {name!r} not readable: HTTP {resp.status_code}")
            body = resp.json()
            self._role = {"id": body["id"], "name": body["name"]}
        return self._role

    async def apply(self, msg: Entitlement) -> str:
        """Set the role as ``msg`` says; the outcome label (ok, unknown_user). Raises
        KeycloakError (or an httpx error) when it could not be set: retry later."""
        role = await self._role_representation()
        method = "POST" if msg.action == "granted" else "DELETE"
        resp = await self._call(method, f"/users/{msg.user_id}/role-mappings/realm", [role])
        if resp.status_code == 404:
            log.warning(
                "entitlements: Keycloak has no user %r (subscription %s): %s skipped",
                msg.user_id,
                msg.subscription_id,
                msg.action,
            )
            return "unknown_user"
        if resp.status_code not in (200, 204):
            raise KeycloakError(f"{method} role mapping: HTTP {resp.status_code}")
        self.last_ok = time.monotonic()
        return "ok"

    async def ping(self) -> None:
        """Credentials and role work (start-up check; readiness)."""
        await self._role_representation()
        self.last_ok = time.monotonic()

    async def close(self) -> None:
        await self.http.aclose()


async def apply_batch(roles: KeycloakRoles, records: Sequence[Record]) -> None:
    """Make a batch's role changes durable in Keycloak (raises if any could not be made: the
    consumer retries the whole batch, which is idempotent)."""
    todo = latest_per_subscription(records)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(msg: Entitlement) -> None:
        async with gate:
            outcome = await roles.apply(msg)
        APPLIED.labels(msg.action, outcome).inc()
        log.info(
            "entitlements: %s %s for user %s (v%d, %s)",
            msg.action,
            roles.settings.keycloak_subscriber_role,
            msg.user_id,
            msg.version,
            outcome,
        )

    await asyncio.gather(*(one(m) for m in todo))
