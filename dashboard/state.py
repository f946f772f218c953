"""What the console keeps between reruns of a page, as plain objects (no Streamlit here, so
it is unit-tested directly): the admin's session and the Idempotency-Keys of their actions."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.http import SessionOut


@dataclass(frozen=True)
class Session:
    """A logged-in admin: the API's token (kept server-side in the Streamlit session, never
    sent to the browser) and when it stops working."""

    token: str
    user_id: str
    expires_at: datetime

    @classmethod
    def of(cls, out: SessionOut) -> Session:
        return cls(token=out.access_token, user_id=out.user_id, expires_at=out.expires_at)

    def expired(self, now: datetime | None = None, *, margin_s: float = 5.0) -> bool:
        now = now or datetime.now(UTC)
        return now >= self.expires_at - timedelta(seconds=margin_s)

    def remaining_s(self, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        return max(0, int((self.expires_at - now).total_seconds()))


def fingerprint(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class _Attempt:
    fingerprint: str
    key: str
    settled_at: float | None = None


class ActionKeys:
    """One Idempotency-Key per user action, made before its first attempt.

    - The same action (same name, same body) while its outcome is unknown (the API did not
      answer, or answered "try again") gets the same key: a retry can only repeat it.
    - After it succeeded, the same action within ``replay_window_s`` still gets the same
      key, so a double click is answered with the first answer (``Idempotent-Replayed``)
      instead of doing it twice. After that window it is a new action.
    - A changed body is a new action (the API would refuse the old key with 422).
    - ``forget`` after a definitive refusal: the API stored nothing, the next try is new.
    """

    def __init__(
        self,
        *,
        replay_window_s: float = 60.0,
        new_key: Callable[[], str] = lambda: str(uuid.uuid4()),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replay_window_s = replay_window_s
        self._new_key = new_key
        self._clock = clock
        self._attempts: dict[str, _Attempt] = {}

    def key_for(self, action: str, body: Mapping[str, Any]) -> str:
        fp = fingerprint(body)
        current = self._attempts.get(action)
        if current is not None and current.fingerprint == fp:
            if current.settled_at is None:
                return current.key
            if self._clock() - current.settled_at < self.replay_window_s:
                return current.key
        attempt = _Attempt(fp, self._new_key())
        self._attempts[action] = attempt
        return attempt.key

    def settle(self, action: str) -> None:
        """The action succeeded (a replayed answer included)."""
        current = self._attempts.get(action)
        if current is not None and current.settled_at is None:
            current.settled_at = self._clock()

    def forget(self, action: str) -> None:
        self._attempts.pop(action, None)

    def pending(self, action: str) -> bool:
        """An attempt whose outcome is unknown: its retry reuses the key."""
        current = self._attempts.get(action)
        return current is not None and current.settled_at is None
