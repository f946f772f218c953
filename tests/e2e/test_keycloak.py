"""Single sign-on against a real Keycloak (keycloak-quarkus-dist, started here): a user logs in
to Keycloak, pays with that token through the API, and the entitlements bridge gives the user
the realm role ``subscriber``; a full refund takes it away; a Keycloak admin role opens the
admin endpoints, a plain user's token does not, nor one for another audience. The refund
happens while the bridge is stopped: started again, it resumes from its committed offset and
applies the revoke it missed.

Keycloak is started once for the module, in a thread while the stack starts (its first start
rebuilds the distribution: 30-70 s).
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing.keycloak_local import (
    KeycloakServer,
    fetch_keycloak,
    free_port,
    password_login,
)
from billing.processes import ManagedProcess, http_ok
from schemas.ids import subscription_id_for
from tests.e2e.client import BODY
from tests.e2e.harness import Stack, wait_until

pytestmark = [pytest.mark.e2e]

REALM = "cinema"
WEB_CLIENT = "cinema-web"
OTHER_CLIENT = "other-app"
BRIDGE_CLIENT = "billing-entitlements"
BRIDGE_SECRET = "bridge-" + uuid.uuid4().hex
KC_PORT = free_port()
ISSUER = f"http://127.0.0.1:{KC_PORT}/realms/{REALM}"
# The API of the stack (tests/e2e/conftest.py) trusts this Keycloak realm's tokens.
STACK_ENV = {
    "BILLING_OIDC_ISSUER": ISSUER,
    "BILLING_OIDC_AUDIENCE": "cinema-billing",
    "BILLING_OIDC_ADMIN_ROLE": "billing-admin",
}


@pytest.fixture(scope="module", autouse=True)  # autouse: launched before the stack
def keycloak_starting(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[KeycloakServer, concurrent.futures.Future[None]]]:
    server = KeycloakServer(fetch_keycloak(), tmp_path_factory.mktemp("keycloak"), port=KC_PORT)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    started = pool.submit(server.start)
    try:
        yield server, started
    finally:
        started.cancel()
        concurrent.futures.wait([started])
        server.stop()
        pool.shutdown()


class Realm:
    """The test realm: a role for subscribers and one for billing admins, a public client
    with the password grant whose tokens carry ``aud: cinema-billing``, the bridge's
    service-account client, and a user maker."""

    def __init__(self, server: KeycloakServer) -> None:
        self.server = server
        self.admin = server.admin()
        a = self.admin
        a.create_realm(REALM, access_token_lifespan_s=900)
        a.create_role(REALM, "subscriber")
        a.create_role(REALM, "billing-admin")
        a.create_client(REALM, WEB_CLIENT, audience="cinema-billing", password_grant=True)
        a.create_client(REALM, OTHER_CLIENT, password_grant=True)  # tokens for another audience
        bridge = a.create_client(REALM, BRIDGE_CLIENT, secret=BRIDGE_SECRET, service_account=True)
        for role in ("manage-users", "view-realm"):
            a.grant_client_role(REALM, bridge, "realm-management", role)

    def user(self, *roles: str, client: str = WEB_CLIENT) -> tuple[str, str]:
        """A new user: (Keycloak user id, access token from a password login)."""
        name = f"viewer-{uuid.uuid4().hex[:8]}"
        password = f"pw-{uuid.uuid4().hex}"
        user_id = self.admin.create_user(REALM, name, password, roles=roles)
        token = password_login(self.server.url, REALM, client, name, password)
        return user_id, token

    def roles(self, user_id: str) -> set[str]:
        return self.admin.realm_roles(REALM, user_id)


@pytest.fixture(scope="module")
def realm(
    keycloak_starting: tuple[KeycloakServer, concurrent.futures.Future[None]], stack: Stack
) -> Iterator[Realm]:
    server, started = keycloak_starting
    started.result(timeout=240)
    r = Realm(server)
    yield r
    r.admin.close()


class Bridge:
    def __init__(self, proc: ManagedProcess, port: int) -> None:
        self.proc = proc
        self.ready = http_ok(f"http://127.0.0.1:{port}/readyz")

    def start(self) -> None:
        self.proc.start()
        self.proc.wait_ready(self.ready, timeout=60)


@pytest.fixture(scope="module")
def bridge(stack: Stack, realm: Realm) -> Iterator[Bridge]:
    port = free_port()
    proc = ManagedProcess.python(
        "entitlements",
        ["streams.entitlements"],
        log_path=Path(stack.root) / "logs" / "entitlements.log",
        env=dict(
            stack.env,
            BILLING_KEYCLOAK_URL=realm.server.url,
            BILLING_KEYCLOAK_REALM=REALM,
            BILLING_KEYCLOAK_CLIENT_ID=BRIDGE_CLIENT,
            BILLING_KEYCLOAK_CLIENT_SECRET=BRIDGE_SECRET,
            BILLING_ENTITLEMENTS_WEB_PORT=str(port),
            BILLING_ENTITLEMENTS_GROUP=f"entitlements-{uuid.uuid4().hex[:6]}",
        ),
    )
    b = Bridge(proc, port)
    b.start()
    yield b
    proc.stop()


def _call(stack: Stack, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    return httpx.request(method, f"{stack.api_url}{path}", headers=headers, timeout=15, **kw)


def _subscription(stack: Stack, token: str) -> dict[str, Any]:
    resp = _call(stack, "GET", "/api/v1/subscriptions/me", token)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _payment(stack: Stack, token: str, pid: str) -> dict[str, Any]:
    resp = _call(stack, "GET", f"/api/v1/payments/{pid}", token)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_pay_with_a_keycloak_login_grants_the_role_and_a_full_refund_revokes_it(
    stack: Stack, realm: Realm, bridge: Bridge
) -> None:
    user_id, token = realm.user()
    assert "subscriber" not in realm.roles(user_id)

    resp = _call(
        stack,
        "POST",
        "/api/v1/payments",
        token,
        headers={"Idempotency-Key": str(uuid.uuid4())},
        json=BODY,
    )
    assert resp.status_code == 202, resp.text
    pid = resp.json()["payment_id"]
    seen: dict[str, Any] = {}

    def pending() -> bool:
        seen.update(_payment(stack, token, pid))
        return bool(seen["status"] == "pending")

    wait_until(pending, message="payment pending")
    stack.control.confirm(seen["provider_payment_id"], "succeed")
    wait_until(lambda: _subscription(stack, token).get("active") is True, message="active")
    # The token's sub (the Keycloak user id) is the user the subscription belongs to.
    assert _subscription(stack, token)["subscription_id"] == subscription_id_for(user_id)
    wait_until(lambda: "subscriber" in realm.roles(user_id), timeout=60, message="role granted")

    # The refund while the bridge is down: the revoke waits in billing.entitlements.
    bridge.proc.stop()
    refund = _call(
        stack,
        "POST",
        f"/api/v1/payments/{pid}/refunds",
        token,
        headers={"Idempotency-Key": str(uuid.uuid4())},
        json={"reason": "sso e2e"},
    )
    assert refund.status_code == 202, refund.text
    wait_until(lambda: _subscription(stack, token)["status"] == "canceled", message="access ended")
    assert "subscriber" in realm.roles(user_id)
    bridge.start()
    wait_until(lambda: "subscriber" not in realm.roles(user_id), timeout=60, message="role revoked")


def test_admin_endpoints_take_the_keycloak_admin_role(stack: Stack, realm: Realm) -> None:
    _, admin_token = realm.user("billing-admin")
    viewer_id, viewer_token = realm.user()
    path = f"/api/v1/admin/subscriptions?user_id={viewer_id}"
    ok = _call(stack, "GET", path, admin_token)
    assert ok.status_code == 200, ok.text
    refused = _call(stack, "GET", path, viewer_token)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "forbidden"
    # Signed in, no subscription yet: 404, not 401.
    assert _call(stack, "GET", "/api/v1/subscriptions/me", viewer_token).status_code == 404
    # The same realm's token for another client (no cinema-billing audience) is refused, and
    # so is a token whose signature was tampered with.
    _, other_token = realm.user("billing-admin", client=OTHER_CLIENT)
    assert _call(stack, "GET", path, other_token).status_code == 401
    head, body, sig = viewer_token.split(".")
    forged = f"{head}.{body}.{sig[:-6]}{'AAAAAA' if not sig.endswith('AAAAAA') else 'BBBBBB'}"
    assert _call(stack, "GET", "/api/v1/subscriptions/me", forged).status_code == 401
