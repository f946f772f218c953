"""JWT bearer tokens (HS256, PyJWT): ``sub`` is the user id, ``roles`` may hold ``"admin"``.

Tokens are issued by the cinema's auth service in production; :func:`mint_token` exists for
the local stack (``billing token``) and tests. Tokens are never logged.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from api.errors import TokenExpired, TokenInvalid
from billing.config import JwtFields

ADMIN_ROLE = "admin"
MAX_SUBJECT_LEN = 128


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: frozenset[str]

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


def decode_token(settings: JwtFields, token: str) -> Principal:
    """Verify signature, expiry and audience; raise TokenExpired/TokenInvalid otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            claims = jwt.decode(
                token,
                _key(settings),
                algorithms=[settings.jwt_algorithm],
                audience=settings.jwt_audience,
                options={"require": ["exp", "sub", "aud"]},
            )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired() from exc
    except jwt.InvalidTokenError as exc:
        raise TokenInvalid() from exc
    sub = claims.get("sub")
    roles = claims.get("roles", [])
    if not _valid_subject(sub) or not isinstance(roles, list):
        raise TokenInvalid()
    assert isinstance(sub, str)
    return Principal(user_id=sub, roles=frozenset(r for r in roles if isinstance(r, str)))
