"""SSO tokens (api/auth.py): RS256/ES256 verified with the keys a tiny JWKS server publishes
over real HTTP (discovery document, key rotation, rate-limited refetch, provider down), issuer,
audience and expiry checked, Keycloak roles mapped; HS256 refused in prod but for the
console's own sessions."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr, ValidationError

from api.auth import ADMIN_ROLE, TokenVerifier, mint_token, verifier_for
from api.errors import ServiceUnavailable, TokenExpired, TokenInvalid
from billing.config import ApiSettings, OidcFields, Settings

AUD = "cinema-billing"
SECRET = "unit-test-secret-of-32-bytes-or-more"


class Keys:
    """A signing key with its kid and public JWK."""

    def __init__(self, kind: str) -> None:
        self.kid = f"{kind}-{uuid.uuid4().hex[:8]}"
        self.alg = "RS256" if kind == "rsa" else "ES256"
        self.private: Any = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
        public: Any = self.private.public_key()
        algo: Any = jwt.algorithms.RSAAlgorithm if kind == "rsa" else jwt.algorithms.ECAlgorithm
        self.jwk: dict[str, Any] = {
            **json.loads(algo.to_jwk(public)),
            "kid": self.kid,
            "use": "sig",
            "alg": self.alg,
        }

    def token(self, issuer: str, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": issuer,
            "aud": [AUD, "account"],
            "sub": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 300,
            "realm_access": {"roles": ["default-roles-cinema", "offline_access"]},
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private, algorithm=self.alg, headers={"kid": self.kid})


class Provider:
    """An OIDC provider's two documents on a real HTTP server (a thread)."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.jwks_hits = 0
        self.down = False
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if provider.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path == "/realms/cinema/.well-known/openid-configuration":
                    body: dict[str, Any] = {
                        "issuer": provider.issuer,
                        "jwks_uri": f"{provider.base}/realms/cinema/protocol/openid-connect/certs",
                    }
                elif self.path == "/realms/cinema/protocol/openid-connect/certs":
                    provider.jwks_hits += 1
                    body = {"keys": provider.keys}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.issuer = f"{self.base}/realms/cinema"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, *keys: Keys) -> None:
        # Keycloak also publishes an encryption key: it must be skipped, not break parsing.
        enc = {**keys[0].jwk, "kid": "enc-1", "use": "enc", "alg": "RSA-OAEP"} if keys else None
        self.keys = [k.jwk for k in keys] + ([enc] if enc and keys[0].alg == "RS256" else [])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    yield p
    p.close()


def settings_for(provider: Provider, **extra: Any) -> ApiSettings:
    fields: dict[str, Any] = {"oidc_jwks_min_refresh_s": 60.0, **extra}
    return Settings(
        env="test",
        jwt_secret=SecretStr(SECRET),
        oidc_issuer=provider.issuer,
        oidc_audience=AUD,
        **fields,
    )


async def test_rs256_and_es256_tokens_verify_through_discovery(provider: Provider) -> None:
    rsa_key, ec_key = Keys("rsa"), Keys("ec")
    provider.publish(rsa_key, ec_key)
    verifier = TokenVerifier(settings_for(provider))
    sub = str(uuid.uuid4())
    p = await verifier.verify(rsa_key.token(provider.issuer, sub=sub))
    assert p.user_id == sub and not p.is_admin
    assert "offline_access" in p.roles
    p2 = await verifier.verify(ec_key.token(provider.issuer))
    assert p2.user_id != sub
    assert provider.jwks_hits == 1  # one fetch served both keys


async def test_admin_role_maps_and_a_provider_role_named_admin_does_not(provider: Provider) -> None:
    key = Keys("rsa")
    provider.publish(key)
    verifier = TokenVerifier(settings_for(provider))
    roles = {"roles": ["billing-admin", "offline_access"]}
    admin = await verifier.verify(key.token(provider.issuer, realm_access=roles))
    assert admin.is_admin and ADMIN_ROLE in admin.roles
    plain = await verifier.verify(key.token(provider.issuer, realm_access={"roles": ["admin"]}))
    assert not plain.is_admin


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        ({"iss": "http://127.0.0.1:1/realms/other"}, TokenInvalid),
        ({"aud": "account"}, TokenInvalid),
        ({"exp": int(time.time()) - 60}, TokenExpired),
        ({"sub": None}, TokenInvalid),
        ({"sub": "bad\x00id"}, TokenInvalid),
        ({"sub": "x" * 129}, TokenInvalid),
        ({"realm_access": {"roles": "admin"}}, TokenInvalid),
    ],
    ids=["issuer", "audience", "expired", "no-sub", "control-char-sub", "long-sub", "roles-shape"],
)
async def test_claims_are_checked(
    provider: Provider, claims: dict[str, Any], error: type[Exception]
) -> None:
    key = Keys("rsa")
    provider.publish(key)
    with pytest.raises(error):
        await TokenVerifier(settings_for(provider)).verify(key.token(provider.issuer, **claims))


async def test_forged_tokens_are_refused(provider: Provider) -> None:
    key, stranger = Keys("rsa"), Keys("rsa")
    provider.publish(key)
    verifier = TokenVerifier(settings_for(provider))
    good = key.token(provider.issuer)
    head, body, sig = good.split(".")
    tampered = f"{head}.{body[:-4]}AAAA.{sig}"
    # A stranger's key under our kid; no alg; HS256 keyed with the public JWK (alg confusion).
    stolen_kid = jwt.encode(
        {"iss": provider.issuer, "aud": AUD, "sub": "u", "iat": 1, "exp": 2**40},
        stranger.private,
        algorithm="RS256",
        headers={"kid": key.kid},
    )
    unsigned = jwt.encode(
        {"iss": provider.issuer, "aud": AUD, "sub": "u", "exp": 2**40},
        None,  # type: ignore[arg-type]  # alg "none" takes no key
        "none",
    )
    # PyJWT refuses to make it, so by hand: HMAC-SHA256 keyed with the published JWK.
    segments = [
        jwt.utils.base64url_encode(json.dumps(part).encode())
        for part in (
            {"alg": "HS256", "kid": key.kid},
            {"iss": provider.issuer, "aud": AUD, "sub": "u", "exp": 2**40},
        )
    ]
    signing_input = b".".join(segments)
    mac = hmac.new(json.dumps(key.jwk).encode(), signing_input, hashlib.sha256).digest()
    confused = (signing_input + b"." + jwt.utils.base64url_encode(mac)).decode()
    for token in (tampered, stolen_kid, unsigned, confused, "not.a.jwt", ""):
        with pytest.raises(TokenInvalid):
            await verifier.verify(token)


async def test_a_rotated_key_is_fetched_without_a_restart(provider: Provider) -> None:
    old, new = Keys("rsa"), Keys("ec")
    provider.publish(old)
    verifier = TokenVerifier(settings_for(provider, oidc_jwks_min_refresh_s=0.0))
    await verifier.verify(old.token(provider.issuer))
    provider.publish(new)  # the provider rotated: only the new key is published
    p = await verifier.verify(new.token(provider.issuer))
    assert p.user_id
    assert provider.jwks_hits == 2
    with pytest.raises(TokenInvalid):  # the retired key is gone after the refetch
        await verifier.verify(old.token(provider.issuer))


async def test_unknown_kids_refetch_at_most_once_per_interval(provider: Provider) -> None:
    key = Keys("rsa")
    provider.publish(key)
    verifier = TokenVerifier(settings_for(provider, oidc_jwks_min_refresh_s=60.0))
    await verifier.verify(key.token(provider.issuer))
    for _ in range(20):
        made_up = jwt.encode(
            {"sub": "u"}, key.private, algorithm="RS256", headers={"kid": uuid.uuid4().hex}
        )
        with pytest.raises(TokenInvalid):
            await verifier.verify(made_up)
    assert provider.jwks_hits == 1  # the first refetch waits 60 s after the first fetch


async def test_provider_down_keeps_known_keys_and_answers_503_without_any(
    provider: Provider,
) -> None:
    key = Keys("rsa")
    provider.publish(key)
    verifier = TokenVerifier(
        settings_for(provider, oidc_jwks_min_refresh_s=0.0, oidc_jwks_max_age_s=0.001)
    )
    await verifier.verify(key.token(provider.issuer))
    provider.down = True
    await asyncio.sleep(0.01)  # the keys are stale: a refetch is tried, fails, the known key serves
    assert (await verifier.verify(key.token(provider.issuer))).user_id
    cold = TokenVerifier(settings_for(provider))
    with pytest.raises(ServiceUnavailable):
        await cold.verify(key.token(provider.issuer))


async def test_hs256_tokens_work_outside_prod_and_oidc_is_optional_there() -> None:
    settings = Settings(env="test", jwt_secret=SecretStr(SECRET))
    verifier = verifier_for(type("State", (), {})(), settings)
    assert (await verifier.verify(mint_token(settings, "alice"))).user_id == "alice"
    other = Keys("rsa")
    with pytest.raises(TokenInvalid):  # no SSO configured: RS256 is not accepted
        await verifier.verify(other.token("https://sso.example/realms/cinema"))


async def test_prod_refuses_hs256_but_the_consoles_own_sessions(provider: Provider) -> None:
    settings = settings_for(provider, dashboard_admin_password_hash=SecretStr("scrypt$x"))
    prod = settings.model_copy(update={"env": "prod"})
    verifier = TokenVerifier(prod)
    console = mint_token(prod, prod.dashboard_admin_user, roles=(ADMIN_ROLE,), ttl_s=600)
    assert (await verifier.verify(console)).is_admin
    for token in (
        mint_token(prod, "alice"),  # a user token minted with the secret
        mint_token(prod, prod.dashboard_admin_user, roles=(ADMIN_ROLE,), ttl_s=86_400),
    ):
        with pytest.raises(TokenInvalid):
            await verifier.verify(token)
    no_console = TokenVerifier(prod.model_copy(update={"dashboard_admin_password_hash": None}))
    with pytest.raises(TokenInvalid):
        await no_console.verify(console)


def test_prod_requires_an_https_issuer_and_asymmetric_algorithms() -> None:
    with pytest.raises(ValidationError, match="BILLING_OIDC_ISSUER"):
        OidcFields(env="prod")
    with pytest.raises(ValidationError, match="BILLING_OIDC_ISSUER"):
        OidcFields(env="prod", oidc_issuer="http://sso.example/realms/cinema")
    OidcFields(env="prod", oidc_issuer="https://sso.example/realms/cinema")
    with pytest.raises(ValidationError, match="BILLING_OIDC_ALGORITHMS"):
        OidcFields(env="dev", oidc_algorithms=["RS256", "HS256"])
