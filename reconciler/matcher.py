"""The reconciliation matcher: pure classification of the provider's report against the ledger.

No Faust, no database, no clock: the time (``now``), the window and the pending SLA come in a
``MatchConfig``, so the same inputs always give the same items, and a replayed report line
gives the same item again (its repair is idempotent: observation ids and refund keys are
derived, never random). The shapes it works with (``MatchConfig``, ``MatchItem``,
``Summary``, the class and repair names) are contracts in ``schemas.recon_match``; the logic
that chooses a class is here.

Two entry points, one logic. The streaming agent calls ``match_line`` for each report line
(with the subscription's state and the ``SubscriptionRun`` it keeps for this run) and
``end_of_report`` for each subscription when the end-of-report marker arrives. ``reconcile``
(the nightly batch) is exactly that fold over a whole report, so both paths agree by
construction.

Inputs
------
- Ledger: ``SubscriptionState.payments`` (``PaymentRecord``) and ``.refunds``
  (``RefundRecord``).
- Report: ``schemas.recon.PaymentLine``/``RefundLine``, the provider's objects created in
  the window. The report should cover provider ``created_at`` in ``[start, end + lag)`` where
  lag covers the delay from our request to the provider's create: a ledger item requested
  just before ``end`` is otherwise judged missing.
- ``MatchConfig``: the window ``[window_start, window_end)`` (epoch ms) judged on the
  ledger's ``requested_at``; ``now`` (when the report was taken, the same for every line of a
  run); ``pending_sla_ms``.

Definitions
-----------
- Terminal: ``succeeded`` and ``canceled``. Anything else (ours: requested, unknown, pending,
  waiting_for_capture; theirs: pending, waiting_for_capture) is in flight.
- Overdue: ``now - requested_at >= pending_sla_ms`` for a ledger item (for a sibling provider
  object, below: from its ``created_at``). A payment held for capture (``waiting_for_capture``
  on either side) waits for the ledger's capture or release, so it has its own
  ``hold_sla_ms``, counted from the record's ``held_at`` when known. Within the SLA an
  in-flight item on either side is classified ``in_flight`` (not a discrepancy, judged again
  by a later run). Past the SLA an in-flight status counts as no outcome at all, which is
  what "missing" means here:
  *pending past the SLA is missing*. A provider line still in flight past the SLA, or a
  ledger item still in flight past the SLA that the provider never reported, is
  ``missing_at_provider`` (escalate). A ledger item in flight past the SLA for which the
  provider reports a terminal status is repaired like any other (apply it).
- The ledger payment of a payment line: ``metadata.payment_id`` in the subscription's state,
  else the record holding that provider id. The provider object *bound* to a ledger payment
  is the record's ``provider_payment_id``, else the first line for it processed in the run.
  Another provider object under the same payment id is a *sibling* (it only exists after an
  Idempotence-Key failure); a sibling line has no "ours" side.
- One payment request buys exactly one period, and the ledger refuses a second payment while
  one is in flight, so "two succeeded charges for one subscription period" is two succeeded
  provider objects under one payment id. The charge *kept* is the one the ledger recorded
  (a ledger ``succeeded`` was re-read from the provider, so it exists), else the first
  succeeded line processed (the oldest: ``reconcile`` processes lines in
  ``schemas.recon.report_order``); every other succeeded one is ``duplicate_charge``, refunded in
  full under a refund key derived from its provider id. This refunds "the later one" except
  when the ledger recorded the later one: then the unrecorded one is refunded, so the ledger
  never points at refunded money. Two charges for one period under two payment ids (a
  renewal attempt or a retry after a payment we hold canceled but the provider charged)
  show as ``status_mismatch`` on the canceled one: the records do not say which period or
  which earlier payment a charge was for.

Classes (one item per ledger object and per report object; each ledger object is "ours" in
exactly one item, each provider object "theirs" in exactly one, so totals add up)
--------------------------------------------------------------------------------------------
Checked in this order for a payment line:

1. no ledger payment (no state, unknown ids) -> ``missing_internal``, escalate (the ledger
   cannot apply an outcome to a payment it never requested).
2. currency differs from the ledger payment's -> ``currency_mismatch``, escalate.
3. amount differs -> ``amount_mismatch``, escalate.
4. succeeded, and another charge is kept for the payment -> ``duplicate_charge``,
   refund_later_duplicate.
5. status (same object): equal terminal -> ``matched``; theirs succeeded, ours in flight ->
   ``missing_internal`` (the missed webhook), apply; any other terminal difference ->
   ``status_mismatch``, apply (when ours is terminal too, the ledger must accept a
   reconciliation observation over a terminal status); theirs in flight -> ``in_flight``,
   or past the SLA ``missing_at_provider``, escalate.
   Sibling: succeeded -> as if ours were absent (``missing_internal``, or ``status_mismatch``
   when the ledger canceled the payment), apply; canceled -> ``matched`` (no money on either
   side); in flight -> ``in_flight``, past the SLA ``missing_at_provider``.

At the end of the report, for each ledger payment requested in the window that no line
accounted for: succeeded -> ``missing_at_provider``, escalate; canceled without a provider id
-> ``matched`` (the provider never created it: no money on either side); canceled with one ->
``missing_at_provider``; in flight -> ``in_flight``, past the SLA ``missing_at_provider``.

Refunds (lines matched by ``metadata.refund_id``, else by provider refund id) have one
discrepancy class, ``refund_mismatch``; ``detail`` says why. Repaired by applying the
provider's status when it is terminal and ours differs (the missed refund webhook included);
escalated when the ledger has no such refund (or a second provider refund claims one we
already matched), the currency or amount differs, the provider's refund is still pending past
the SLA, or, at the end, a ledger refund requested in the window was never reported
(succeeded, canceled with a provider id, or in flight past the SLA). Equal terminal statuses
-> ``matched``; the provider's refund pending within the SLA, or ours not reported yet within
it -> ``in_flight``.

Repairs proposed: ``none`` | ``apply_provider_status`` (``observation`` is a
``PaymentObserved`` or ``RefundObserved`` with ``source="reconciliation"``, deduplicated with
the webhook's by its observation id, so applying it while the webhook is in flight is
harmless) | ``refund_later_duplicate`` (``provider_id`` is the charge to refund in full,
``refund_key`` the refund's Idempotence-Key) | ``escalate``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Literal, TypeVar

import msgspec

from schemas.ids import NS_BILLING, observation_id_for
from schemas.messages import TERMINAL_PAYMENT_STATUSES, PaymentObserved, RefundObserved
from schemas.money import Money
from schemas.recon import PaymentLine, RefundLine, ReportLine, report_order
from schemas.recon_match import (
    MATCH_CLASSES,
    MatchClass,
    MatchConfig,
    MatchItem,
    MatchResult,
    RepairKind,
    Summary,
)
from schemas.state import PaymentRecord, RefundRecord, SubscriptionState

RecordT = TypeVar("RecordT", PaymentRecord, RefundRecord)


def _payment_overdue(cfg: MatchConfig, rec: PaymentRecord, theirs: str | None) -> bool:
    held = "waiting_for_capture" in (rec.status, theirs)
    since = rec.held_at if held and rec.held_at is not None else rec.requested_at
    return cfg.overdue(since, held=held)


class SubscriptionRun(msgspec.Struct, frozen=True, kw_only=True):
    """What one run has processed for one subscription: the streaming agent keeps it per
    (run, subscription) between lines and hands it to ``end_of_report``."""

    seen: frozenset[str] = frozenset()  # "payment:<provider id>" / "refund:<provider id>"
    accounted: frozenset[str] = frozenset()  # ledger payment ids already "ours" in an item
    accounted_refunds: frozenset[str] = frozenset()  # ledger refund ids likewise
    bound: dict[str, str] = {}  # payment id -> provider object standing for it
    kept: dict[str, str] = {}  # payment id -> the succeeded charge kept (not yet recorded)


def duplicate_refund_key(provider_payment_id: str) -> str:
    """The refund id (provider Idempotence-Key) of the refund of a duplicate charge: one
    per charge, however many runs propose it."""
    return str(uuid.uuid5(NS_BILLING, f"duplicate-refund:{provider_payment_id}"))


# ------------------------------------------------------------------------ streaming steps
def match_line(
    state: SubscriptionState | None,
    line: ReportLine,
    cfg: MatchConfig,
    run: SubscriptionRun | None = None,
) -> tuple[MatchItem | None, SubscriptionRun]:
    """Classify one report line against its subscription's state (``None`` when the ledger
    has no such subscription or the line names none). Returns the item, or ``None`` for a
    provider object this run already classified (a redelivered line), and the updated run.
    """
    if state is not None and line.subscription_id != state.subscription_id:
        raise ValueError(
            f"line for subscription {line.subscription_id!r} matched against the state of "
            f"{state.subscription_id!r}"
        )
    run = run or SubscriptionRun()
    if isinstance(line, PaymentLine):
        key = f"payment:{line.provider_payment_id}"
    else:
        key = f"refund:{line.provider_refund_id}"
    if key in run.seen:
        return None, run
    run = msgspec.structs.replace(run, seen=run.seen | {key})
    if isinstance(line, PaymentLine):
        return _match_payment(state, line, cfg, run)
    return _match_refund(state, line, cfg, run)


def end_of_report(
    state: SubscriptionState, cfg: MatchConfig, run: SubscriptionRun | None = None
) -> list[MatchItem]:
    """The ledger's items of one subscription requested in the window that no line of this
    run accounted for (the provider never reported them). An item requested after the
    report was taken (``cfg.now``: a repair of this very run, a payment made while the report
    was read) cannot be in it: the next run judges it."""
    run = run or SubscriptionRun()
    items: list[MatchItem] = []

    def judged(at: int) -> bool:
        return cfg.in_window(at) and at <= cfg.now

    for rec in sorted(state.payments.values(), key=lambda r: (r.requested_at, r.payment_id)):
        if judged(rec.requested_at) and rec.payment_id not in run.accounted:
            items.append(_unreported_payment(state.subscription_id, rec, cfg))
    for ref in sorted(state.refunds.values(), key=lambda r: (r.requested_at, r.refund_id)):
        if judged(ref.requested_at) and ref.refund_id not in run.accounted_refunds:
            items.append(_unreported_refund(state.subscription_id, ref, cfg))
    return items


# ---------------------------------------------------------------------------------- batch
def reconcile(
    states: Iterable[SubscriptionState], lines: Iterable[ReportLine], cfg: MatchConfig
) -> MatchResult:
    """The whole report against the whole ledger: ``match_line`` over the lines in
    ``report_order``, then ``end_of_report`` for every subscription."""
    by_sub = {s.subscription_id: s for s in states}
    runs: dict[str, SubscriptionRun] = {}
    items: list[MatchItem] = []
    for line in sorted(lines, key=report_order):
        sub_id = line.subscription_id
        state = by_sub.get(sub_id) if sub_id is not None else None
        run_key = sub_id or ""
        item, runs[run_key] = match_line(state, line, cfg, runs.get(run_key))
        if item is not None:
            items.append(item)
    for sub_id in sorted(by_sub):
        items.extend(end_of_report(by_sub[sub_id], cfg, runs.get(sub_id)))
    return MatchResult(items=items, summary=summarize(items))


# The succeeded totals of a ``Summary``: per object and side.
TOTAL_SIDES = ("payments_ours", "payments_theirs", "refunds_ours", "refunds_theirs")


def no_totals() -> dict[str, dict[str, Money]]:
    """Empty succeeded totals for each side of a ``Summary`` (``TOTAL_SIDES``), to be filled."""
    return {side: {} for side in TOTAL_SIDES}


def summarize(items: Iterable[MatchItem]) -> Summary:
    counts: dict[str, int] = dict.fromkeys(MATCH_CLASSES, 0)
    totals = no_totals()
    for item in items:
        counts[item.kind] += 1
        prefix = "payments" if item.object == "payment" else "refunds"
        if item.ours_status == "succeeded" and item.ours_amount is not None:
            _add(totals[f"{prefix}_ours"], item.ours_amount)
        if item.theirs_status == "succeeded" and item.theirs_amount is not None:
            _add(totals[f"{prefix}_theirs"], item.theirs_amount)
    return Summary(counts=counts, **totals)


def _add(totals: dict[str, Money], amount: Money) -> None:
    prior = totals.get(amount.currency)
    minor = amount.amount_minor + (prior.amount_minor if prior is not None else 0)
    totals[amount.currency] = Money(minor, amount.currency)


# ------------------------------------------------------------------------------ payments
def _find_record(state: SubscriptionState | None, line: PaymentLine) -> PaymentRecord | None:
    payments = state.payments if state is not None else {}
    pid = line.provider_payment_id
    holding = (rec for rec in payments.values() if rec.provider_payment_id == pid)
    return _own_or_first(payments, line.payment_id, holding)


def _own_or_first(
    records: Mapping[str, RecordT], own_id: str | None, holding: Iterable[RecordT]
) -> RecordT | None:
    """The record a line is about: the one under the line's own id (its metadata), else the
    first (in the state's order) ``holding`` the line's provider id; None when neither."""
    if own_id is not None and own_id in records:
        return records[own_id]
    return next(iter(holding), None)


def _observation(sub_id: str, rec: PaymentRecord, line: PaymentLine, now: int) -> PaymentObserved:
    return PaymentObserved(
        observation_id=observation_id_for(line.provider_payment_id, line.status),
        subscription_id=sub_id,
        observed_at=now,
        source="reconciliation",
        payment_id=rec.payment_id,
        provider_payment_id=line.provider_payment_id,
        status=line.status,
        amount=line.amount,
        paid=line.paid,
        cancellation_party=line.cancellation_party,
        cancellation_reason=line.cancellation_reason,
        payment_method_id=line.payment_method_id,
        payment_method_saved=line.payment_method_saved,
    )


def _match_payment(
    state: SubscriptionState | None, line: PaymentLine, cfg: MatchConfig, run: SubscriptionRun
) -> tuple[MatchItem, SubscriptionRun]:
    rec = _find_record(state, line)
    theirs = line.status
    if state is None or rec is None:
        return (
            MatchItem(
                kind="missing_internal",
                object="payment",
                subscription_id=line.subscription_id,
                payment_id=line.payment_id,
                provider_id=line.provider_payment_id,
                ours_status=None,
                theirs_status=theirs,
                ours_amount=None,
                theirs_amount=line.amount,
                repair="escalate",
                detail="the ledger has no payment for this provider object",
            ),
            run,
        )

    pid = rec.payment_id
    bound = run.bound.get(pid) or rec.provider_payment_id
    if bound is None:
        bound = line.provider_payment_id
        run = msgspec.structs.replace(run, bound={**run.bound, pid: bound})
    same = bound == line.provider_payment_id
    if same:
        run = msgspec.structs.replace(run, accounted=run.accounted | {pid})

    recorded = rec.provider_payment_id if rec.status == "succeeded" else None
    kept = recorded or run.kept.get(pid)

    def item(kind: MatchClass, repair: RepairKind, detail: str) -> MatchItem:
        return MatchItem(
            kind=kind,
            object="payment",
            subscription_id=state.subscription_id,
            payment_id=pid,
            provider_id=line.provider_payment_id,
            ours_status=rec.status if same else None,
            theirs_status=theirs,
            ours_amount=rec.amount if same else None,
            theirs_amount=line.amount,
            repair=repair,
            observation=(
                _observation(state.subscription_id, rec, line, cfg.now)
                if repair == "apply_provider_status"
                else None
            ),
            refund_key=(
                duplicate_refund_key(line.provider_payment_id)
                if repair == "refund_later_duplicate"
                else None
            ),
            detail=detail if same else f"second provider object for payment {pid}: {detail}",
        )

    if line.amount.currency != rec.amount.currency:
        return item("currency_mismatch", "escalate", f"ours in {rec.amount.currency}"), run
    if line.amount != rec.amount:
        return item("amount_mismatch", "escalate", f"ours {rec.amount}"), run
    # Only a charge of the payment's amount can be the one kept: an escalated odd charge
    # must not make the right one look like its duplicate (and get it refunded).
    if theirs == "succeeded" and kept is None:
        run = msgspec.structs.replace(run, kept={**run.kept, pid: line.provider_payment_id})
    if theirs == "succeeded" and kept is not None and kept != line.provider_payment_id:
        return item("duplicate_charge", "refund_later_duplicate", f"charge {kept} is kept"), run

    overdue = _payment_overdue(cfg, rec, theirs)
    if same:
        ours = rec.status
        if theirs in TERMINAL_PAYMENT_STATUSES:
            if ours == theirs:
                return item("matched", "none", ""), run
            if theirs == "succeeded" and ours not in TERMINAL_PAYMENT_STATUSES:
                return item("missing_internal", "apply_provider_status", "missed outcome"), run
            return item("status_mismatch", "apply_provider_status", f"ours {ours}"), run
    else:
        age_from = line.created_at if line.created_at is not None else rec.requested_at
        overdue = cfg.overdue(age_from, held=theirs == "waiting_for_capture")
        if theirs == "succeeded":
            if rec.status == "canceled":
                return item("status_mismatch", "apply_provider_status", "ours canceled"), run
            return item("missing_internal", "apply_provider_status", "missed outcome"), run
        if theirs == "canceled":
            return item("matched", "none", "canceled: no money on either side"), run
    if overdue:
        return item("missing_at_provider", "escalate", "no provider outcome past the SLA"), run
    return item("in_flight", "none", ""), run


def _unreported_payment(sub_id: str, rec: PaymentRecord, cfg: MatchConfig) -> MatchItem:
    overdue = _payment_overdue(cfg, rec, None)
    return _unreported("payment", sub_id, rec, rec.provider_payment_id, overdue, None)


# ------------------------------------------------------------------------------- refunds
def _match_refund(
    state: SubscriptionState | None, line: RefundLine, cfg: MatchConfig, run: SubscriptionRun
) -> tuple[MatchItem, SubscriptionRun]:
    ref = _find_refund(state, line)
    if state is None or ref is None or ref.refund_id in run.accounted_refunds:
        detail = (
            "the ledger has no such refund"
            if ref is None
            else "second provider refund for one ledger refund"
        )
        verdict: tuple[MatchClass, RepairKind, str] = ("refund_mismatch", "escalate", detail)
        return _refund_item(line, line.subscription_id, ref, verdict), run
    run = msgspec.structs.replace(run, accounted_refunds=run.accounted_refunds | {ref.refund_id})
    ours, theirs = ref.status, line.status
    kind: MatchClass = "refund_mismatch"
    repair: RepairKind = "escalate"
    if line.amount.currency != ref.amount.currency:
        detail = f"currency differs: ours in {ref.amount.currency}"
    elif line.amount != ref.amount:
        detail = f"amount differs: ours {ref.amount}"
    elif theirs in TERMINAL_PAYMENT_STATUSES:
        if ours == theirs:
            kind, repair, detail = "matched", "none", ""
        elif ours in TERMINAL_PAYMENT_STATUSES:
            repair, detail = "apply_provider_status", f"status differs: ours {ours}"
        else:
            repair, detail = "apply_provider_status", "missed outcome"
    elif not cfg.overdue(ref.requested_at):
        kind, repair, detail = "in_flight", "none", ""
    else:
        detail = "no provider outcome past the SLA"
    observation = None
    if repair == "apply_provider_status":
        observation = _refund_observation(state.subscription_id, ref, line, cfg.now)
    verdict = (kind, repair, detail)
    return _refund_item(line, state.subscription_id, ref, verdict, ours=ref, obs=observation), run


def _refund_item(
    line: RefundLine,
    sub_id: str | None,
    ref: RefundRecord | None,
    verdict: tuple[MatchClass, RepairKind, str],
    ours: RefundRecord | None = None,
    obs: RefundObserved | None = None,
) -> MatchItem:
    """A refund line's item (its class, repair and detail: ``verdict``), about the ledger
    refund ``ref`` (the line's ids when there is none); it has an "ours" side when the line
    accounts for the refund (``ours``)."""
    kind, repair, detail = verdict
    return MatchItem(
        kind=kind,
        object="refund",
        subscription_id=sub_id,
        payment_id=line.payment_id if ref is None else ref.payment_id,
        refund_id=line.refund_id if ref is None else ref.refund_id,
        provider_id=line.provider_refund_id,
        ours_status=None if ours is None else ours.status,
        theirs_status=line.status,
        ours_amount=None if ours is None else ours.amount,
        theirs_amount=line.amount,
        repair=repair,
        observation=obs,
        detail=detail,
    )


def _refund_observation(
    sub_id: str, ref: RefundRecord, line: RefundLine, now: int
) -> RefundObserved:
    return RefundObserved(
        observation_id=observation_id_for(line.provider_refund_id, line.status),
        subscription_id=sub_id,
        observed_at=now,
        source="reconciliation",
        refund_id=ref.refund_id,
        payment_id=ref.payment_id,
        provider_refund_id=line.provider_refund_id,
        status=line.status,
        amount=line.amount,
        cancellation_reason=line.cancellation_reason,
    )


def _find_refund(state: SubscriptionState | None, line: RefundLine) -> RefundRecord | None:
    refunds = state.refunds if state is not None else {}
    rid = line.provider_refund_id
    holding = (ref for ref in refunds.values() if ref.provider_refund_id == rid)
    return _own_or_first(refunds, line.refund_id, holding)


def _unreported_refund(sub_id: str, ref: RefundRecord, cfg: MatchConfig) -> MatchItem:
    overdue = cfg.overdue(ref.requested_at)
    return _unreported("refund", sub_id, ref, ref.provider_refund_id, overdue, ref.refund_id)


def _unreported(
    obj: Literal["payment", "refund"],
    sub_id: str,
    rec: PaymentRecord | RefundRecord,
    provider_id: str | None,
    overdue: bool,
    refund_id: str | None,
) -> MatchItem:
    """end_of_report's item for a ledger payment or refund no line was "ours" for: matched
    when the provider never created it, missing (escalate) when terminal or overdue, else in
    flight. A payment is ``missing_at_provider``, a refund ``refund_mismatch``."""
    missing: MatchClass = "missing_at_provider" if obj == "payment" else "refund_mismatch"
    kind: MatchClass
    if rec.status == "canceled" and provider_id is None:
        kind, detail = "matched", "never created at the provider: no money on either side"
    elif rec.status in TERMINAL_PAYMENT_STATUSES or overdue:
        kind, detail = missing, "not in the provider's report"
    else:
        kind, detail = "in_flight", "not in the provider's report yet"
    return MatchItem(
        kind=kind,
        object=obj,
        subscription_id=sub_id,
        payment_id=rec.payment_id,
        refund_id=refund_id,
        provider_id=provider_id,
        ours_status=rec.status,
        theirs_status=None,
        ours_amount=rec.amount,
        theirs_amount=None,
        repair="escalate" if kind == missing else "none",
        detail=detail,
    )
