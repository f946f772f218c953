"""What the reconciliation matcher is given and what it finds: its configuration, its classes
and repairs, one classified object (``MatchItem``) and a run's summary.

The classes and repairs are defined in ``reconciler.matcher``'s docstring (the logic that
chooses them lives there); these are the shapes the streaming agent, the ClickHouse batch
path, the store, the CLI and the API all share. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import msgspec

from schemas.messages import PaymentObserved, RefundObserved
from schemas.money import Money

MatchClass = Literal[
    "matched",
    "in_flight",
    "missing_internal",
    "status_mismatch",
    "missing_at_provider",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate_charge",
    "refund_mismatch",
]
MATCH_CLASSES: tuple[MatchClass, ...] = get_args(MatchClass)
# Not discrepancies: the books agree, or the item is still in flight within the SLA.
AGREEING_CLASSES: frozenset[str] = frozenset({"matched", "in_flight"})
DISCREPANCY_CLASSES: frozenset[str] = frozenset(MATCH_CLASSES) - AGREEING_CLASSES

RepairKind = Literal["none", "apply_provider_status", "refund_later_duplicate", "escalate"]
# The repairs the reconciler carries out itself (a discrepancy so repaired is resolved as
# ``repaired``), and the actor its commands carry.
AUTO_REPAIRS: frozenset[str] = frozenset({"apply_provider_status", "refund_later_duplicate"})
RECONCILER_ACTOR = "reconciler"

# Beyond the ledger's longest re-drive backoff (1 h) with room for the user's 3-DS step.
DEFAULT_PENDING_SLA_MS = 2 * 3_600_000
# A two-stage payment may be held for days: the ledger releases a hold after its hold_ms
# (6 days); YooKassa cancels a card hold after 7.
DEFAULT_HOLD_SLA_MS = 7 * 24 * 3_600_000


@dataclass(frozen=True)
class MatchConfig:
    """What the matcher is not told by its inputs. All times epoch ms UTC."""

    window_start: int
    window_end: int
    now: int
    pending_sla_ms: int = DEFAULT_PENDING_SLA_MS
    hold_sla_ms: int = DEFAULT_HOLD_SLA_MS

    def __post_init__(self) -> None:
        if self.window_start >= self.window_end:
            raise ValueError("empty window: window_start must be before window_end")
        if self.pending_sla_ms < 0 or self.hold_sla_ms < 0:
            raise ValueError("an SLA must not be negative")

    def in_window(self, at: int) -> bool:
        return self.window_start <= at < self.window_end

    def overdue(self, since: int, *, held: bool = False) -> bool:
        """In flight for at least the SLA (the hold SLA for a payment held for capture)."""
        return self.now - since >= (self.hold_sla_ms if held else self.pending_sla_ms)


class MatchItem(msgspec.Struct, frozen=True, kw_only=True):
    """One classified object. ``kind`` is the class; ``ours_*`` is the ledger object (absent
    when the ledger has none for this provider object) and ``theirs_*`` the provider's
    (absent when the provider never reported it)."""

    kind: MatchClass
    object: Literal["payment", "refund"]
    subscription_id: str | None
    payment_id: str | None
    refund_id: str | None = None
    provider_id: str | None
    ours_status: str | None
    theirs_status: str | None
    ours_amount: Money | None
    theirs_amount: Money | None
    repair: RepairKind
    observation: PaymentObserved | RefundObserved | None = None
    refund_key: str | None = None
    detail: str = ""

    @property
    def discrepancy(self) -> bool:
        return self.kind in DISCREPANCY_CLASSES


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """Counts per class (every class present) and succeeded totals per currency."""

    counts: dict[str, int]
    payments_ours: dict[str, Money]
    payments_theirs: dict[str, Money]
    refunds_ours: dict[str, Money]
    refunds_theirs: dict[str, Money]

    @property
    def discrepancies(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind in DISCREPANCY_CLASSES)


class MatchResult(msgspec.Struct, frozen=True, kw_only=True):
    items: list[MatchItem]
    summary: Summary
