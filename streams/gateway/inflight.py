"""Which requests this gateway process need not send to the provider again, pure (a clock is
passed in).

At a peak the same payment can reach the gateway several times within seconds: the ledger
re-emits a duplicate command's request, re-drives a payment whose answer is still queued
behind its own backlog, and the agent's concurrent actors can hold two events of one
payment at once. Each of those would be one more create call under the same key: harmless
for money (the key makes it one payment) but it multiplies the provider calls exactly when
the provider is busiest (issue 13 measured 7.8 creates per payment). So a create is skipped
while a call for the same request runs here (its answer is on its way), and for
``remember_s`` after this process got a provider object for it (the answer is in the log,
ahead of the ledger's re-drive that asked again). Reads by a known provider id are never
skipped: they are how a pending payment's fate is learnt.

Nothing is lost by a skip: the ledger re-drives whatever stays without an answer, with a
growing backoff that soon outlives ``remember_s``; a restarted process remembers nothing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RequestGuard:
    """Requests (by key: "payment:<id>", "refund:<id>") in flight or answered lately."""

    def __init__(
        self,
        remember_s: float,
        *,
        max_remembered: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.remember_s = remember_s
        self.max_remembered = max_remembered
        self._clock = clock
        self._running: set[str] = set()
        self._answered: OrderedDict[str, float] = OrderedDict()  # key -> when, oldest first
        self.skipped = 0

    def begin(self, key: str) -> bool:
        """May a create for ``key`` be sent now? True marks it in flight (call ``end``)."""
        now = self._clock()
        self._expire(now)
        if key in self._running or key in self._answered:
            self.skipped += 1
            return False
        self._running.add(key)
        return True

    def end(self, key: str, *, answered: bool) -> None:
        """The call for ``key`` is over; ``answered``: the provider returned its object."""
        self._running.discard(key)
        if answered and self.remember_s > 0:
            self._answered[key] = self._clock()
            self._answered.move_to_end(key)
            while len(self._answered) > self.max_remembered:
                self._answered.popitem(last=False)

    def _expire(self, now: float) -> None:
        answered = self._answered
        while answered:
            _key, at = next(iter(answered.items()))
            if now - at < self.remember_s:
                break
            answered.popitem(last=False)
