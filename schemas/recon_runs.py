"""Reconciliation runs and their items as recorded (``reconciler.store``, tables of migration
0005) and as the CLI, the API and the console show them. Pure: no I/O.

``ItemView`` is one item across runs with its resolution, generic in how an amount is shown:
the store's ``ItemRow`` holds ``Money``; the API's ``DiscrepancyOut`` is the same fields with
its own money shape (``api.models.MoneyOut``), so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field

from schemas.money import Money
from schemas.recon_match import MatchConfig

RunSource = Literal["provider_api", "registry"]
RunStatus = Literal["feeding", "matching", "finished", "incomplete", "failed"]
AdminResolution = Literal["accept_provider", "accept_ours", "write_off"]
ADMIN_RESOLUTIONS: tuple[str, ...] = get_args(AdminResolution)
DONE_STATUSES: frozenset[str] = frozenset({"finished", "incomplete", "failed"})


@dataclass(frozen=True)
class RunSpec:
    """What a run is: the matcher's parameters, its source and where it stands."""

    run_id: str
    window_start: int
    window_end: int
    taken_at: int
    pending_sla_ms: int
    hold_sla_ms: int
    source: str
    source_ref: str
    trigger: str
    status: str
    partitions: int | None

    def match_config(self) -> MatchConfig:
        return MatchConfig(
            window_start=self.window_start,
            window_end=self.window_end,
            now=self.taken_at,
            pending_sla_ms=self.pending_sla_ms,
            hold_sla_ms=self.hold_sla_ms,
        )


@dataclass(frozen=True)
class RunReport:
    """A run as the CLI and the console show it; ``unresolved`` and ``partitions_done`` are
    live (read now), the rest as recorded when the run finished."""

    spec: RunSpec
    lines: int
    partitions_done: int
    incomplete_partitions: int
    counts: dict[str, int]
    totals: dict[str, dict[str, str]]
    discrepancies: int
    new_discrepancies: int
    unresolved: int
    started_at: datetime
    fed_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    error: str | None

    @property
    def done(self) -> bool:
        return self.spec.status in DONE_STATUSES


AmountT = TypeVar("AmountT")


class ItemView(BaseModel, Generic[AmountT]):
    """One discrepancy (or agreeing item) across runs, with its resolution; amounts as
    ``AmountT``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    item_key: str
    object: str = Field(description="payment | refund")
    kind: str
    discrepancy: bool
    subscription_id: str | None
    payment_id: str | None
    refund_id: str | None
    provider_id: str | None
    ours_status: str | None
    theirs_status: str | None
    ours_amount: AmountT | None
    theirs_amount: AmountT | None
    repair: str = Field(
        description="none | apply_provider_status | refund_later_duplicate | escalate"
    )
    detail: str
    first_run_id: str
    last_run_id: str
    first_seen_at: datetime
    last_seen_at: datetime
    repaired_at: datetime | None
    resolution: str | None = Field(
        description="null: open; repaired (by the reconciler) or an admin's accept_provider,"
        " accept_ours, write_off"
    )
    resolved_by: str | None
    resolved_at: datetime | None
    note: str


class ItemRow(ItemView[Money]):
    """An item as ``reconciler.store`` records it: with the Idempotence-Key of a
    duplicate charge's refund (``refund_key``), which only the reconciler needs."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    refund_key: str | None
