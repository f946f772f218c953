"""Fault injection: the failures a real provider shows, on demand and reproducibly.

A fault targets one endpoint (or ``*``), fires a limited number of times (``count``) and/or
with a probability drawn from a seeded RNG, and acts either before the work (nothing was
done) or after it (the object exists but the client sees the failure) — the case that makes
idempotence keys necessary.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from typing import Any, Literal

API_ENDPOINTS = (
    "payments.create",
    "payments.get",
    "payments.list",
    "payments.capture",
    "payments.cancel",
    "refunds.create",
    "refunds.get",
    "refunds.list",
)
API_KINDS = ("delay", "timeout", "500", "202", "429")
NOTIFY_KINDS = ("duplicate", "late", "lost", "out_of_order")

When = Literal["before", "after"]


@dataclass
class Fault:
    """One fault rule. ``count`` None = unlimited; ``delay_s`` is the delay, the hang of a
    timeout, or how late a late / out-of-order notification arrives."""

    id: int
    endpoint: str
    kind: str
    when: When = "before"
    count: int | None = 1
    probability: float = 1.0
    delay_s: float = 30.0
    fired: int = 0

    def public(self) -> dict[str, Any]:
        return asdict(self)


class FaultBook:
    """The active faults; ``pick`` consumes one firing of the first rule that matches."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next_id = 1
        self.rng = random.Random(seed)

    def reset(self, seed: int | None) -> None:
        with self._lock:
            self._faults.clear()
            self.rng = random.Random(seed)

    def add(self, spec: dict[str, Any]) -> Fault:
        endpoint = str(spec.get("endpoint", "*"))
        kind = str(spec.get("kind", ""))
        if endpoint == "notifications":
            if kind not in NOTIFY_KINDS:
                raise ValueError(f"notification fault kind must be one of {NOTIFY_KINDS}")
        else:
            if endpoint != "*" and endpoint not in API_ENDPOINTS:
                raise ValueError(f"endpoint must be '*', 'notifications' or one of {API_ENDPOINTS}")
            if kind not in API_KINDS:
                raise ValueError(f"fault kind must be one of {API_KINDS}")
        when = spec.get("when", "before")
        if when not in ("before", "after"):
            raise ValueError("when must be before or after")
        count = spec.get("count", 1)
        probability = float(spec.get("probability", 1.0))
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within 0..1")
        default_delay = 30.0 if kind == "timeout" else 1.0
        with self._lock:
            fault = Fault(
                id=self._next_id,
                endpoint=endpoint,
                kind=kind,
                when=when,
                count=None if count is None else int(count),
                probability=probability,
                delay_s=float(spec.get("delay_s", default_delay)),
            )
            self._next_id += 1
            self._faults.append(fault)
            return fault

    def remove(self, fault_id: int) -> bool:
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if f.id != fault_id]
            return len(self._faults) < before

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def pick(
        self, endpoint: str, when: When | None = None, kind: str | None = None
    ) -> Fault | None:
        """The fault to apply to this call now, if any; its count is consumed."""
        with self._lock:
            for f in self._faults:
                if f.endpoint not in (endpoint, "*") or (when is not None and f.when != when):
                    continue
                if endpoint == "notifications" and f.endpoint == "*":
                    continue
                if kind is not None and f.kind != kind:
                    continue
                if f.count is not None and f.fired >= f.count:
                    continue
                if f.probability < 1.0 and self.rng.random() >= f.probability:
                    continue
                f.fired += 1
                return f
            return None
