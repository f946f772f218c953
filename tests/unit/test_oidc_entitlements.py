"""The entitlements bridge's logic (streams/entitlements/bridge.py) against a fake Keycloak
(httpx.MockTransport keeping role mappings as Keycloak does): latest message per subscription
wins, grant twice = once, revoke of a missing role is fine, an unknown user is skipped, a 401
fetches a new token once, a 5xx raises so the batch's offsets wait."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from billing.config import EntitlementsSettings
from schemas import notifications as contract
from schemas.notifications import Entitlement
from streams.entitlements.bridge import KeycloakError, KeycloakRoles, apply_batch

SETTINGS = EntitlementsSettings(
    env="test",
    keycloak_url="http://kc.test",
    keycloak_client_secret=SecretStr("s" * 24),
)


@dataclass
class Rec:
    value: bytes
    partition: int = 0
    offset: int = 0


def ent(user: str, action: str, version: int) -> Rec:
    msg = Entitlement(
        entitlement_id=f"e-{user}-{version}",
        action=action,  # type: ignore[arg-type]
        user_id=user,
        subscription_id=f"sub-{user}",
        occurred_at=1,
        version=version,
        event_id=f"ev-{version}",
    )
    return Rec(contract.encode(msg), offset=version)


class FakeKeycloak:
    def __init__(self, users: set[str]) -> None:
        self.users = users
        self.roles: dict[str, set[str]] = {u: set() for u in users}
        self.tokens = 0
        self.calls: list[str] = []
        self.expire_next = False
        self.fail = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/openid-connect/token"):
            self.tokens += 1
            return httpx.Response(200, json={"access_token": f"t{self.tokens}", "expires_in": 60})
        if self.expire_next:
            self.expire_next = False
            return httpx.Response(401)
        if self.fail:
            return httpx.Response(502)
        if path == "/admin/realms/cinema/roles/subscriber":
            return httpx.Response(200, json={"id": "r1", "name": "subscriber", "composite": False})
        user = path.split("/")[5]
        self.calls.append(f"{request.method} {user}")
        if user not in self.users:
            return httpx.Response(404, json={"error": "User not found"})
        assert json.loads(request.content) == [{"id": "r1", "name": "subscriber"}]
        if request.method == "POST":
            self.roles[user].add("subscriber")
        else:
            self.roles[user].discard("subscriber")
        return httpx.Response(204)


def bridge(kc: FakeKeycloak) -> KeycloakRoles:
    return KeycloakRoles(SETTINGS, httpx.AsyncClient(transport=httpx.MockTransport(kc.handler)))


async def test_latest_per_subscription_wins_and_grants_are_idempotent() -> None:
    kc = FakeKeycloak({"alice", "bob"})
    roles = bridge(kc)
    batch: list[Any] = [
        ent("alice", "granted", 1),
        ent("bob", "granted", 1),
        ent("alice", "revoked", 2),
        ent("alice", "granted", 3),
        ent("bob", "revoked", 2),
        Rec(b"not json"),
    ]
    await apply_batch(roles, batch)
    assert kc.roles == {"alice": {"subscriber"}, "bob": set()}
    assert sorted(kc.calls) == ["DELETE bob", "POST alice"]  # one call per user
    await apply_batch(roles, batch)  # a replay after a crash: same roles
    await apply_batch(roles, [ent("bob", "revoked", 2)])  # revoke of a missing role: fine
    assert kc.roles == {"alice": {"subscriber"}, "bob": set()}
    await roles.close()


async def test_unknown_user_is_skipped_and_401_renews_the_token_once() -> None:
    kc = FakeKeycloak({"alice"})
    roles = bridge(kc)
    await apply_batch(roles, [ent("ghost", "granted", 1)])  # no raise: nothing to retry
    assert kc.tokens == 1
    kc.expire_next = True
    await apply_batch(roles, [ent("alice", "granted", 1)])
    assert kc.roles["alice"] == {"subscriber"} and kc.tokens == 2
    await roles.close()


async def test_keycloak_errors_raise_so_the_offsets_wait() -> None:
    kc = FakeKeycloak({"alice"})
    roles = bridge(kc)
    await roles.ping()
    kc.fail = True
    with pytest.raises(KeycloakError):
        await apply_batch(roles, [ent("alice", "granted", 1)])
    assert kc.roles["alice"] == set()
    await roles.close()
