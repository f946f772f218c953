"""The gateway's key-window policy (ARCHITECTURE.md invariant 7), pure so that every case is a
row of a table test; the agent does the I/O each step names.

YooKassa honours an Idempotence-Key for 24 h. Within that, a create under our key (payment
or refund id) can only re-obtain the object it made; after it, the same key and body make a
new one: a second charge. A request can reach the gateway again at any age (a re-drive, the
ledger re-emitting a duplicate command's events, the relay, a group reading from
``earliest``, a replayed changelog), so its age is checked on every call, measured from the
request's first time, against a safe window well inside 24 h (the slack covers our retries
and clock skew). Past it the outcome is only ever read: by the provider id if the event
knows it, else by searching the provider's list for our id in the metadata, else it is left
``unknown`` for reconciliation. Never a new create.
"""

from __future__ import annotations

from typing import Literal

from schemas.messages import KEY_WINDOW_EXPIRED

Step = Literal["create", "reread", "search", "give_up"]

# How far our clock and the provider's may disagree when searching by created_at.
SEARCH_SLACK_MS = 15 * 60 * 1000
KEY_EXPIRED = KEY_WINDOW_EXPIRED


def within_window(requested_at: int, now: int, window_ms: int) -> bool:
    """A create may still be sent: the request is younger than the safe window (a clock
    behind the request's time counts as young: the provider's key is fresher still)."""
    return now - requested_at < window_ms


def next_step(
    *,
    requested_at: int,
    now: int,
    window_ms: int,
    provider_id: str | None,
    searched: bool = False,
) -> Step:
    """What the gateway does next for one payment or refund request.

    A known provider id is re-read at any age (a read never charges). Within the window the
    create is repeated under the same key (the provider answers with the object it made, or
    makes the first one). Past it: search once, then give up (``unknown``).
    """
    if provider_id:
        return "reread"
    if within_window(requested_at, now, window_ms):
        return "create"
    return "give_up" if searched else "search"


def search_range(
    requested_at: int, window_ms: int, slack_ms: int = SEARCH_SLACK_MS
) -> tuple[int, int]:
    """[gte, lt) in epoch ms: every create we can have sent for the request happened between
    its first time and the end of the safe window (the guard stops creates after), widened
    by the clock slack on both sides."""
    return requested_at - slack_ms, requested_at + window_ms + slack_ms


def give_up_reason(requested_at: int, now: int, window_ms: int) -> str:
    """Why the request is left unknown, for the operator and reconciliation."""
    age_h = (now - requested_at) / 3_600_000
    return (
        f"request is {age_h:.1f} h old, past the {window_ms / 3_600_000:g} h key window, and"
        " no provider object carries its id: not created again; reconciliation settles it"
    )
