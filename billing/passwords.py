"""The console's password hashes: ``scrypt:n:r:p:salt:hash``, made by ``python -m dashboard
hash-password`` (or the local stack) into BILLING_DASHBOARD_ADMIN_PASSWORD_HASH and checked
by the API's console login (api/routes/session.py). Pure CPU: no I/O, no settings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

# scrypt: 16 MiB and ~50 ms per hash on these machines (the API verifies off its event loop).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_DKLEN = 32
SCHEME = "scrypt"
SEP = ":"
_MAX_N = 2**20  # refuse a configured hash that would take seconds and a GiB per login
_MAXMEM = 1100 * 1024 * 1024


class PasswordHashInvalid(ValueError):
    """The configured hash is not one ``hash_password`` makes."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def valid_password(value: str) -> str:
    """A password as typed: any text but control characters."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


def hash_password(
    password: str,
    *,
    salt: bytes | None = None,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
) -> str:
    """``scrypt:n:r:p:salt:hash`` (salt and hash base64url): what
    BILLING_DASHBOARD_ADMIN_PASSWORD_HASH holds. No ``$`` in it, so neither a shell nor
    docker compose interpolates any part of it."""
    if not password:
        raise ValueError("the password is empty")
    valid_password(password)
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=SCRYPT_DKLEN, maxmem=_MAXMEM
    )
    return SEP.join((SCHEME, str(n), str(r), str(p), _b64(salt), _b64(digest)))


def parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.strip().split(SEP)
    if len(parts) != 6 or parts[0] != SCHEME:
        raise PasswordHashInvalid("expected scrypt:n:r:p:salt:hash")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error) as exc:
        raise PasswordHashInvalid("malformed scrypt parameters") from exc
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise PasswordHashInvalid("scrypt parameters out of range")
    if len(salt) < 8 or len(digest) < 16:
        raise PasswordHashInvalid("salt or hash too short")
    return n, r, p, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against a ``hash_password`` string; raises
    PasswordHashInvalid for a malformed one."""
    n, r, p, salt, digest = parse_hash(encoded)
    candidate = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=_MAXMEM
    )
    return hmac.compare_digest(candidate, digest)
