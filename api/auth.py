"""Bearer tokens: ``sub`` is the user id; admins hold the role ``"admin"``.

Two kinds (:class:`TokenVerifier` picks by the token's ``alg``):

* **SSO** (``BILLING_OIDC_ISSUER``): access tokens of an OIDC provider such as Keycloak,
  RS256/ES256, verified with the provider's published keys (JWKS). Issuer, audience and
  expiry are checked; the keys are cached and fetched again when a token names an unknown
  ``kid`` (a key rotation needs no restart), at most once per ``oidc_jwks_min_refresh_s`` so
  that made-up ``kid``s cannot make us hammer the provider. Roles come from Keycloak's
  ``realm_access.roles``; the configured ``oidc_admin_role`` maps to ``admin`` (a provider
  role literally named ``admin`` does not).
* **HS256** with ``BILLING_JWT_SECRET``: :func:`mint_token` for the local stack
  (``billing token``), the tests and the console's own login. In prod they are refused,
  except the console's sessions (sub = the console user, only while console login is
  configured): a secret shared with another minter is what SSO replaces.

Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from api.errors import AuthUnavailable, TokenExpired, TokenInvalid
from billing.config import ApiSettings, JwtFields, OidcFields

log = logging.getLogger(__name__)

ADMIN_ROLE = "admin"
MAX_SUBJECT_LEN = 128


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: frozenset[str]
    # The token's ``email`` claim (SSO tokens may carry one): a 54-FZ receipt's fallback
    # contact when the user has none in their profile.
    email: str | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


def _key(settings: JwtFields) -> str:
    return settings.jwt_secret.get_secret_value()


def mint_token(
    settings: JwtFields, user_id: str, *, roles: Iterable[str] = (), ttl_s: int = 3600
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "roles": sorted(set(roles)),
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl_s,
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    with warnings.catch_warnings():
        # The dev placeholder secret is short; prod refuses placeholders (Settings).
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims, _key(settings), algorithm=settings.jwt_algorithm)


def _valid_subject(sub: object) -> bool:
    # The user id ends up in SQL text columns and Kafka payloads: refuse control characters
    # (PostgreSQL rejects NUL, which would otherwise surface as a 500).
    return (
        isinstance(sub, str)
        and 0 < len(sub) <= MAX_SUBJECT_LEN
        and sub.isprintable()
        and sub.strip() == sub
    )


def _hs256_claims(settings: JwtFields, token: str) -> dict[str, Any]:
    required = ["exp", "sub", "aud", *(["iss"] if settings.jwt_issuer else [])]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            claims: dict[str, Any] = jwt.decode(
                token,
                _key(settings),
                algorithms=[settings.jwt_algorithm],
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer or None,
                options={"require": required},
            )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired() from exc
    except jwt.InvalidTokenError as exc:
        raise TokenInvalid() from exc
    return claims


def _principal(sub: object, roles: object) -> Principal:
    if not _valid_subject(sub) or not isinstance(roles, list):
        raise TokenInvalid()
    assert isinstance(sub, str)
    return Principal(user_id=sub, roles=frozenset(r for r in roles if isinstance(r, str)))


def decode_token(settings: JwtFields, token: str) -> Principal:
    """Verify an HS256 token's signature, expiry, audience and (when configured) issuer;
    raise TokenExpired/TokenInvalid otherwise."""
    claims = _hs256_claims(settings, token)
    return _principal(claims.get("sub"), claims.get("roles", []))


# ------------------------------------------------------------------------------ SSO (OIDC)
class JwksUnavailable(Exception):
    """The provider's keys could not be fetched (and none is cached for the token)."""


class JwksCache:
    """The provider's signing keys by ``kid``. Fetched on first use, again when a token names
    an unknown ``kid`` or the keys are older than ``max_age_s``, never more often than
    ``min_refresh_s`` (concurrent requests share one fetch). While the provider is down the
    keys already known keep verifying."""

    def __init__(self, settings: OidcFields) -> None:
        self.settings = settings
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at = 0.0  # monotonic time of the last fetch attempt (0: never)
        self.loaded_at = 0.0  # ... of the last successful one
        self.fetches = 0
        self._lock = asyncio.Lock()
        self._jwks_url = settings.oidc_jwks_url

    async def _get_json(self, client: httpx.AsyncClient, url: str) -> dict[str, Any]:
        resp = await client.get(url, headers={"Accept": "application/json"})
        resp.raise_for_status()
        data = resp.json()
        if not isinstance(data, dict):
            raise ValueError(f"{url}: not a JSON object")
        return data

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        async with httpx.AsyncClient(timeout=self.settings.oidc_timeout_s) as client:
            if not self._jwks_url:
                issuer = self.settings.oidc_issuer.rstrip("/")
                meta = await self._get_json(client, f"{issuer}/.well-known/openid-configuration")
                if str(meta.get("issuer", "")).rstrip("/") != issuer:
                    raise ValueError("the discovery document names another issuer")
                self._jwks_url = str(meta["jwks_uri"])
            data = await self._get_json(client, self._jwks_url)
        keys: dict[str, jwt.PyJWK] = {}
        for jwk in data.get("keys", []):
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue  # Keycloak also publishes an encryption key
            try:
                key = jwt.PyJWK(jwk)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                continue  # an algorithm or key type we do not verify with
            keys[str(jwk.get("kid", ""))] = key
        return keys

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return self.keys.get(kid)
        return next(iter(self.keys.values())) if len(self.keys) == 1 else None

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        """The key for ``kid`` (None when the token names none and there is exactly one), or
        None when even a fresh fetch does not know it. Raises JwksUnavailable when the keys
        cannot be fetched and none is known."""
        now = time.monotonic()
        found = self._lookup(kid)
        stale = now - self.loaded_at > self.settings.oidc_jwks_max_age_s
        if found is not None and not stale:
            return found
        async with self._lock:
            found = self._lookup(kid)
            if found is not None and time.monotonic() - self.loaded_at <= (
                self.settings.oidc_jwks_max_age_s
            ):
                return found
            may_fetch = (
                self.fetched_at == 0.0
                or time.monotonic() - self.fetched_at >= self.settings.oidc_jwks_min_refresh_s
            )
            if may_fetch:
                self.fetched_at = time.monotonic()
                self.fetches += 1
                try:
                    self.keys = await self._fetch()
                    self.loaded_at = time.monotonic()
                    log.info("OIDC keys fetched: %d signing keys", len(self.keys))
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    log.warning("OIDC keys could not be fetched: %r", exc)
                    if not self.keys:
                        raise JwksUnavailable() from exc
            if self.loaded_at == 0.0:
                # Never fetched and not to be tried again yet: the token may be good (a 401
                # here would log a user out because the provider is down).
                raise JwksUnavailable()
            return self._lookup(kid)


def _sso_roles(settings: OidcFields, claims: dict[str, Any]) -> list[str]:
    """Keycloak realm roles, with ``oidc_admin_role`` as ``admin`` (and nothing else as it)."""
    realm = claims.get("realm_access")
    roles = realm.get("roles", []) if isinstance(realm, dict) else []
    if not isinstance(roles, list):
        raise TokenInvalid()
    own = [r for r in roles if isinstance(r, str) and r != ADMIN_ROLE]
    if settings.oidc_admin_role in own:
        own.append(ADMIN_ROLE)
    return own


class TokenVerifier:
    """Verifies a bearer token of either kind (module docstring); one per API process."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.jwks = JwksCache(settings) if settings.oidc_issuer else None

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid() from exc
        alg = header.get("alg")
        if alg == self.settings.jwt_algorithm:
            return self._verify_hs256(token)
        if self.jwks is not None and alg in self.settings.oidc_algorithms:
            return await self._verify_sso(token, header.get("kid"))
        raise TokenInvalid()

    def _verify_hs256(self, token: str) -> Principal:
        settings = self.settings
        claims = _hs256_claims(settings, token)
        principal = _principal(claims.get("sub"), claims.get("roles", []))
        if settings.env != "prod":
            return principal
        # Prod: only what the console login itself minted (api/routes/session.py).
        console = (
            settings.dashboard_admin_password_hash is not None
            and principal.user_id == settings.dashboard_admin_user
            and isinstance(claims.get("iat"), int)
            and claims["exp"] - claims["iat"] <= settings.dashboard_session_ttl_s
        )
        if not console:
            raise TokenInvalid()
        return principal

    async def _verify_sso(self, token: str, kid: object) -> Principal:
        assert self.jwks is not None
        settings = self.settings
        if kid is not None and not isinstance(kid, str):
            raise TokenInvalid()
        try:
            key = await self.jwks.key(kid)
        except JwksUnavailable as exc:
            raise AuthUnavailable() from exc
        if key is None:
            raise TokenInvalid()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=settings.oidc_algorithms,
                audience=settings.oidc_audience,
                issuer=settings.oidc_issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired() from exc
        except (jwt.InvalidTokenError, json.JSONDecodeError) as exc:
            raise TokenInvalid() from exc
        return _with_email(_principal(claims.get("sub"), _sso_roles(settings, claims)), claims)


def _with_email(principal: Principal, claims: dict[str, Any]) -> Principal:
    """The principal with the token's email claim, unless the provider says it is not
    verified (Keycloak's ``email_verified``)."""
    email = claims.get("email")
    if not isinstance(email, str) or not email or claims.get("email_verified") is False:
        return principal
    return Principal(principal.user_id, principal.roles, email[:254])


def verifier_for(state: Any, settings: ApiSettings) -> TokenVerifier:
    """The app's verifier (its key cache lives as long as the app), made on first use."""
    verifier: TokenVerifier | None = getattr(state, "token_verifier", None)
    if verifier is None or verifier.settings is not settings:
        verifier = TokenVerifier(settings)
        state.token_verifier = verifier
    return verifier
