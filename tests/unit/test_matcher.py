"""Table-driven tests of the pure reconciliation matcher: one line per case (ledger, report,
expected items), then the repairs, the totals, the streaming steps and the report contract."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from providers.port import ProviderPayment
from reconciler.matcher import (
    SubscriptionRun,
    duplicate_refund_key,
    end_of_report,
    match_line,
    reconcile,
)
from reconciler.report import (
    ReportError,
    iso_to_ms,
    payment_line,
    read_registry,
    refund_line,
)
from schemas.ids import observation_id_for
from schemas.messages import (
    PaymentObserved,
    PaymentStatus,
    RefundObserved,
)
from schemas.money import Money
from schemas.periods import dt_to_ms
from schemas.recon import (
    PaymentLine,
    RefundLine,
    ReportLine,
    decode_line,
    encode_line,
    report_order,
)
from schemas.recon_match import DISCREPANCY_CLASSES, MATCH_CLASSES, MatchConfig, MatchItem
from schemas.state import PaymentRecord, RefundRecord, RefundStatus, SubscriptionState
from tests.factories import (
    payment_record,
    refund_record,
    report_payment_line,
    report_refund_line,
    subscription_state,
)

HOUR = 3_600_000
DAY = 24 * HOUR
W0 = dt_to_ms(datetime(2026, 3, 1, tzinfo=UTC))  # the window: one day
W1 = W0 + 24 * HOUR
NOW = W1 + HOUR // 2  # the report was taken half an hour after the window
CFG = MatchConfig(window_start=W0, window_end=W1, now=NOW, pending_sla_ms=2 * HOUR)
OLD = W0 + 2 * HOUR  # requested long before now: past the SLA
FRESH = W1 - HOUR // 2  # requested an hour before now: within the SLA
BEFORE = W0 - 5 * 24 * HOUR  # outside the window
SUB = "sub-1"
PRICE = Money(29900, "RUB")


def rec(
    payment_id: str,
    status: PaymentStatus,
    provider_id: str | None = None,
    *,
    at: int = OLD,
    amount: Money = PRICE,
) -> PaymentRecord:
    """A ledger payment; ``provider_id`` defaults to ``prov-<payment_id>`` once the provider
    has answered (any status but requested/unknown)."""
    if provider_id is None and status not in ("requested", "unknown"):
        provider_id = f"prov-{payment_id}"
    succeeded_at = at + 1000 if status == "succeeded" else None
    return payment_record(
        payment_id, status, at, provider_id, amount=amount, succeeded_at=succeeded_at
    )


def held(payment_id: str, held_at: int, at: int = OLD) -> PaymentRecord:
    """A two-stage payment held for capture since ``held_at``."""
    return msgspec.structs.replace(rec(payment_id, "waiting_for_capture", at=at), held_at=held_at)


def no_provider(payment_id: str, status: PaymentStatus, at: int = OLD) -> PaymentRecord:
    """A ledger payment the provider never answered for (no provider id)."""
    return msgspec.structs.replace(rec(payment_id, status, at=at), provider_payment_id=None)


def pay(
    payment_id: str | None,
    status: str,
    provider_id: str | None = None,
    *,
    created: int | None = OLD + 500,
    amount: Money = PRICE,
    sub: str | None = SUB,
) -> PaymentLine:
    """A provider payment line; ``provider_id`` defaults to ``prov-<payment_id>``."""
    provider_id = provider_id or f"prov-{payment_id}"
    return report_payment_line(sub, payment_id, provider_id, status, created, amount)


def lref(
    refund_id: str,
    status: RefundStatus,
    provider_id: str | None = "auto",
    *,
    at: int = OLD,
    amount: Money = PRICE,
) -> RefundRecord:
    """A ledger refund of payment p1; ``provider_id`` defaults to ``prov-<refund_id>``."""
    provider_id = f"prov-{refund_id}" if provider_id == "auto" else provider_id
    return refund_record(refund_id, "p1", "prov-p1", status, at, provider_id, amount=amount)


def refund(
    refund_id: str | None,
    status: str,
    provider_id: str | None = None,
    *,
    amount: Money = PRICE,
) -> RefundLine:
    provider_id = provider_id or f"prov-{refund_id}"
    return report_refund_line(
        SUB, "p1", "prov-p1", refund_id, provider_id, status, OLD + 700, amount
    )


def state(
    *records: PaymentRecord, refunds: Sequence[RefundRecord] = (), sub: str = SUB
) -> SubscriptionState:
    return subscription_state(sub, *records, refunds=refunds)


def run_one(
    records: Sequence[PaymentRecord],
    lines: Sequence[ReportLine],
    refunds: Sequence[RefundRecord] = (),
) -> list[MatchItem]:
    result = reconcile([state(*records, refunds=refunds)], lines, CFG)
    return result.items


def brief(item: MatchItem) -> tuple[str, str, str]:
    """(class, provider id or ours:<payment/refund id>, repair)."""
    key = item.provider_id or f"ours:{item.refund_id or item.payment_id}"
    return item.kind, key, item.repair


RUB2 = Money(29900, "USD")
# (name, ledger payments, report lines, expected (class, key, repair) in output order)
PAYMENT_CASES: list[tuple[str, list[PaymentRecord], list[ReportLine], list[tuple[str, str, str]]]]
PAYMENT_CASES = [
    ("both succeeded", [rec("p1", "succeeded")], [pay("p1", "succeeded")],
     [("matched", "prov-p1", "none")]),
    ("both canceled", [rec("p1", "canceled")], [pay("p1", "canceled")],
     [("matched", "prov-p1", "none")]),
    ("missed webhook: ours pending, theirs succeeded", [rec("p1", "pending")],
     [pay("p1", "succeeded")], [("missing_internal", "prov-p1", "apply_provider_status")]),
    ("ours requested (no provider id), theirs succeeded", [no_provider("p1", "requested")],
     [pay("p1", "succeeded")], [("missing_internal", "prov-p1", "apply_provider_status")]),
    ("ours unknown past the SLA, theirs succeeded", [no_provider("p1", "unknown")],
     [pay("p1", "succeeded")], [("missing_internal", "prov-p1", "apply_provider_status")]),
    ("ours fresh pending, theirs succeeded: apply now", [rec("p1", "pending", at=FRESH)],
     [pay("p1", "succeeded")], [("missing_internal", "prov-p1", "apply_provider_status")]),
    ("ours pending, theirs canceled", [rec("p1", "pending")], [pay("p1", "canceled")],
     [("status_mismatch", "prov-p1", "apply_provider_status")]),
    ("ours succeeded, theirs canceled", [rec("p1", "succeeded")], [pay("p1", "canceled")],
     [("status_mismatch", "prov-p1", "apply_provider_status")]),
    ("ours canceled on a 4xx, theirs succeeded", [no_provider("p1", "canceled")],
     [pay("p1", "succeeded")], [("status_mismatch", "prov-p1", "apply_provider_status")]),
    ("ours succeeded, provider has nothing", [rec("p1", "succeeded")], [],
     [("missing_at_provider", "prov-p1", "escalate")]),
    ("ours fresh succeeded, provider has nothing", [rec("p1", "succeeded", at=FRESH)], [],
     [("missing_at_provider", "prov-p1", "escalate")]),
    ("ours pending past the SLA, provider has nothing", [rec("p1", "pending")], [],
     [("missing_at_provider", "prov-p1", "escalate")]),
    ("ours requested past the SLA, provider has nothing", [no_provider("p1", "requested")], [],
     [("missing_at_provider", "ours:p1", "escalate")]),
    ("ours canceled with a provider id, provider has nothing", [rec("p1", "canceled")], [],
     [("missing_at_provider", "prov-p1", "escalate")]),
    ("ours canceled, never created at the provider", [no_provider("p1", "canceled")], [],
     [("matched", "ours:p1", "none")]),
    ("ours fresh pending, provider has nothing yet", [rec("p1", "pending", at=FRESH)], [],
     [("in_flight", "prov-p1", "none")]),
    ("ours fresh requested, theirs pending", [no_provider("p1", "requested", at=FRESH)],
     [pay("p1", "pending")], [("in_flight", "prov-p1", "none")]),
    ("ours fresh succeeded, report snapshot still pending",
     [rec("p1", "succeeded", at=FRESH)], [pay("p1", "pending")],
     [("in_flight", "prov-p1", "none")]),
    ("both pending past the SLA", [rec("p1", "pending")], [pay("p1", "pending")],
     [("missing_at_provider", "prov-p1", "escalate")]),
    ("ours succeeded, theirs pending past the SLA", [rec("p1", "succeeded")],
     [pay("p1", "pending")], [("missing_at_provider", "prov-p1", "escalate")]),
    ("held for capture past the pending SLA, within the hold SLA", [held("p1", OLD)],
     [pay("p1", "waiting_for_capture")], [("in_flight", "prov-p1", "none")]),
    ("held, unreported, within the hold SLA", [held("p1", OLD)], [],
     [("in_flight", "prov-p1", "none")]),
    ("ours pending, theirs held: missed webhook, within the hold SLA", [rec("p1", "pending")],
     [pay("p1", "waiting_for_capture")], [("in_flight", "prov-p1", "none")]),
    ("held past the hold SLA", [held("p1", NOW - 8 * DAY, at=NOW - 8 * DAY)],
     [pay("p1", "waiting_for_capture")], [("missing_at_provider", "prov-p1", "escalate")]),
    ("hold SLA counts from the hold, not the request", [held("p1", OLD, at=NOW - 8 * DAY)],
     [pay("p1", "waiting_for_capture")], [("in_flight", "prov-p1", "none")]),
    ("ours canceled, theirs pending past the SLA", [rec("p1", "canceled")],
     [pay("p1", "pending")], [("missing_at_provider", "prov-p1", "escalate")]),
    ("outside the window and unreported: not judged", [rec("p1", "succeeded", at=BEFORE)], [], []),
    ("outside the window but reported: matched", [rec("p1", "succeeded", at=BEFORE)],
     [pay("p1", "succeeded")], [("matched", "prov-p1", "none")]),
    ("amount differs", [rec("p1", "succeeded")],
     [pay("p1", "succeeded", amount=Money(29800, "RUB"))],
     [("amount_mismatch", "prov-p1", "escalate")]),
    ("amount differs and status differs: escalate, not apply", [rec("p1", "pending")],
     [pay("p1", "succeeded", amount=Money(1, "RUB"))],
     [("amount_mismatch", "prov-p1", "escalate")]),
    ("currency differs (same minor units)", [rec("p1", "succeeded")],
     [pay("p1", "succeeded", amount=RUB2)], [("currency_mismatch", "prov-p1", "escalate")]),
    ("currency differs and status differs", [rec("p1", "pending")],
     [pay("p1", "canceled", amount=Money(100, "EUR"))],
     [("currency_mismatch", "prov-p1", "escalate")]),
    ("provider payment unknown to the subscription's ledger", [rec("p1", "succeeded")],
     [pay("p1", "succeeded"), pay("p9", "succeeded")],
     [("matched", "prov-p1", "none"), ("missing_internal", "prov-p9", "escalate")]),
    ("provider payment without our metadata", [],
     [pay(None, "succeeded", "prov-x", sub=None)], [("missing_internal", "prov-x", "escalate")]),
    ("metadata payment id absent: found by provider id", [rec("p1", "succeeded")],
     [pay(None, "succeeded", "prov-p1")], [("matched", "prov-p1", "none")]),
    ("second charge for a recorded payment: refund it", [rec("p1", "succeeded")],
     [pay("p1", "succeeded"), pay("p1", "succeeded", "prov-dup", created=OLD + 900)],
     [("matched", "prov-p1", "none"),
      ("duplicate_charge", "prov-dup", "refund_later_duplicate")]),
    ("ledger recorded the later charge: refund the earlier", [rec("p1", "succeeded", "prov-b")],
     [pay("p1", "succeeded", "prov-a", created=OLD + 100),
      pay("p1", "succeeded", "prov-b", created=OLD + 900)],
     [("duplicate_charge", "prov-a", "refund_later_duplicate"),
      ("matched", "prov-b", "none")]),
    ("two charges, ledger recorded none: apply the older, refund the later",
     [no_provider("p1", "unknown")],
     [pay("p1", "succeeded", "prov-b", created=OLD + 900),
      pay("p1", "succeeded", "prov-a", created=OLD + 100)],
     [("missing_internal", "prov-a", "apply_provider_status"),
      ("duplicate_charge", "prov-b", "refund_later_duplicate")]),
    ("redelivered line is classified once", [rec("p1", "succeeded")],
     [pay("p1", "succeeded"), pay("p1", "succeeded")], [("matched", "prov-p1", "none")]),
    ("canceled second provider object: no money either side", [rec("p1", "succeeded")],
     [pay("p1", "succeeded"), pay("p1", "canceled", "prov-sib")],
     [("matched", "prov-p1", "none"), ("matched", "prov-sib", "none")]),
    ("pending second provider object past the SLA", [rec("p1", "succeeded")],
     [pay("p1", "succeeded"), pay("p1", "pending", "prov-sib")],
     [("matched", "prov-p1", "none"), ("missing_at_provider", "prov-sib", "escalate")]),
    ("succeeded second object, ours still pending on the first: apply it",
     [rec("p1", "pending")], [pay("p1", "pending"), pay("p1", "succeeded", "prov-sib")],
     [("missing_at_provider", "prov-p1", "escalate"),
      ("missing_internal", "prov-sib", "apply_provider_status")]),
    ("second charge in another currency: escalate, not refund", [rec("p1", "succeeded")],
     [pay("p1", "succeeded"), pay("p1", "succeeded", "prov-dup", created=OLD + 900, amount=RUB2)],
     [("matched", "prov-p1", "none"), ("currency_mismatch", "prov-dup", "escalate")]),
    ("an odd charge first never makes the right one its duplicate",
     [rec("p1", "pending")],
     [pay("p1", "succeeded", "prov-odd", created=OLD + 100, amount=Money(100, "RUB")),
      pay("p1", "succeeded", created=OLD + 900)],
     [("amount_mismatch", "prov-odd", "escalate"),
      ("missing_internal", "prov-p1", "apply_provider_status")]),
    ("a charge in another currency first never makes the right one its duplicate",
     [no_provider("p1", "unknown")],
     [pay("p1", "succeeded", "prov-usd", created=OLD + 100, amount=RUB2),
      pay("p1", "succeeded", "prov-a", created=OLD + 900)],
     [("currency_mismatch", "prov-usd", "escalate"),
      ("missing_internal", "prov-a", "apply_provider_status")]),
    ("two stacked periods (two payments) are not a duplicate",
     [rec("p1", "succeeded"), rec("p2", "succeeded", at=OLD + HOUR)],
     [pay("p1", "succeeded"), pay("p2", "succeeded", created=OLD + HOUR + 500)],
     [("matched", "prov-p1", "none"), ("matched", "prov-p2", "none")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("records", "lines", "expected"),
    [case[1:] for case in PAYMENT_CASES],
    ids=[case[0] for case in PAYMENT_CASES],
)
def test_payment_classes(
    records: list[PaymentRecord], lines: list[ReportLine], expected: list[tuple[str, str, str]]
) -> None:
    assert [brief(i) for i in run_one(records, lines)] == expected


# (name, ledger refunds, report lines, expected (class, key, repair) in output order)
REFUND_CASES: list[tuple[str, list[RefundRecord], list[ReportLine], list[tuple[str, str, str]]]]
REFUND_CASES = [
    ("both succeeded", [lref("r1", "succeeded")], [refund("r1", "succeeded")],
     [("matched", "prov-r1", "none")]),
    ("refund unknown to the ledger", [], [refund("r1", "succeeded")],
     [("refund_mismatch", "prov-r1", "escalate")]),
    ("amount differs", [lref("r1", "succeeded")],
     [refund("r1", "succeeded", amount=Money(100, "RUB"))],
     [("refund_mismatch", "prov-r1", "escalate")]),
    ("currency differs", [lref("r1", "succeeded")], [refund("r1", "succeeded", amount=RUB2)],
     [("refund_mismatch", "prov-r1", "escalate")]),
    ("missed refund webhook: ours pending, theirs succeeded", [lref("r1", "pending", at=FRESH)],
     [refund("r1", "succeeded")], [("refund_mismatch", "prov-r1", "apply_provider_status")]),
    ("ours unknown past the SLA, theirs canceled", [lref("r1", "unknown", None)],
     [refund("r1", "canceled")], [("refund_mismatch", "prov-r1", "apply_provider_status")]),
    ("ours succeeded, theirs canceled", [lref("r1", "succeeded")], [refund("r1", "canceled")],
     [("refund_mismatch", "prov-r1", "apply_provider_status")]),
    ("ours fresh requested, theirs pending", [lref("r1", "requested", None, at=FRESH)],
     [refund("r1", "pending")], [("in_flight", "prov-r1", "none")]),
    ("ours succeeded fresh, report snapshot still pending", [lref("r1", "succeeded", at=FRESH)],
     [refund("r1", "pending")], [("in_flight", "prov-r1", "none")]),
    ("both pending past the SLA", [lref("r1", "pending")], [refund("r1", "pending")],
     [("refund_mismatch", "prov-r1", "escalate")]),
    ("ours succeeded, provider has nothing", [lref("r1", "succeeded")], [],
     [("refund_mismatch", "prov-r1", "escalate")]),
    ("ours fresh succeeded, provider has nothing", [lref("r1", "succeeded", at=FRESH)], [],
     [("refund_mismatch", "prov-r1", "escalate")]),
    ("ours canceled with a provider id, provider has nothing", [lref("r1", "canceled")], [],
     [("refund_mismatch", "prov-r1", "escalate")]),
    ("ours pending past the SLA, provider has nothing", [lref("r1", "pending", None)], [],
     [("refund_mismatch", "ours:r1", "escalate")]),
    ("ours canceled, never created at the provider", [lref("r1", "canceled", None)], [],
     [("matched", "ours:r1", "none")]),
    ("ours fresh pending, provider has nothing yet", [lref("r1", "pending", None, at=FRESH)], [],
     [("in_flight", "ours:r1", "none")]),
    ("outside the window and unreported: not judged", [lref("r1", "succeeded", at=BEFORE)], [],
     []),
    ("metadata refund id absent: found by provider id", [lref("r1", "succeeded")],
     [refund(None, "succeeded", "prov-r1")], [("matched", "prov-r1", "none")]),
    ("two provider refunds for one ledger refund", [lref("r1", "succeeded")],
     [refund("r1", "succeeded"), refund("r1", "succeeded", "prov-r1-again")],
     [("matched", "prov-r1", "none"), ("refund_mismatch", "prov-r1-again", "escalate")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("refunds", "lines", "expected"),
    [case[1:] for case in REFUND_CASES],
    ids=[case[0] for case in REFUND_CASES],
)
def test_refund_classes(
    refunds: list[RefundRecord], lines: list[ReportLine], expected: list[tuple[str, str, str]]
) -> None:
    assert [brief(i) for i in run_one([], lines, refunds)] == expected


# (name, ledger refunds, report lines, the start of the one item's detail)
REFUND_DETAILS: list[tuple[str, list[RefundRecord], list[ReportLine], str]] = [
    ("currency", [lref("r1", "succeeded")], [refund("r1", "succeeded", amount=RUB2)],
     "currency differs: ours in RUB"),
    ("amount", [lref("r1", "succeeded")], [refund("r1", "succeeded", amount=Money(1, "RUB"))],
     "amount differs: ours 299.00 RUB"),
    ("unknown", [], [refund("r1", "succeeded")], "the ledger has no such refund"),
    ("missed outcome", [lref("r1", "pending")], [refund("r1", "succeeded")], "missed outcome"),
    ("terminal conflict", [lref("r1", "succeeded")], [refund("r1", "canceled")],
     "status differs: ours succeeded"),
    ("stuck", [lref("r1", "pending")], [refund("r1", "pending")], "no provider outcome past"),
    ("unreported", [lref("r1", "succeeded")], [], "not in the provider's report"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("refunds", "lines", "detail"),
    [case[1:] for case in REFUND_DETAILS],
    ids=[case[0] for case in REFUND_DETAILS],
)
def test_refund_mismatch_says_why(
    refunds: list[RefundRecord], lines: list[ReportLine], detail: str
) -> None:
    (item,) = run_one([], lines, refunds)
    assert item.kind == "refund_mismatch"
    assert item.detail.startswith(detail), item.detail


# --------------------------------------------------------------------------------- repairs
def test_apply_carries_the_providers_outcome_as_a_reconciliation_observation() -> None:
    line = msgspec.structs.replace(
        pay("p1", "canceled"), cancellation_party="yoo_money", cancellation_reason="fraud"
    )
    (item,) = run_one([rec("p1", "pending")], [line])
    obs = item.observation
    assert isinstance(obs, PaymentObserved)
    assert obs.observation_id == observation_id_for("prov-p1", "canceled")
    assert (obs.source, obs.observed_at, obs.subscription_id) == ("reconciliation", NOW, SUB)
    assert (obs.payment_id, obs.provider_payment_id, obs.status) == ("p1", "prov-p1", "canceled")
    assert (obs.amount, obs.cancellation_party, obs.cancellation_reason) == (
        PRICE,
        "yoo_money",
        "fraud",
    )


def test_apply_carries_the_providers_refund_outcome() -> None:
    line = msgspec.structs.replace(refund("r1", "canceled"), cancellation_reason="rejected")
    (item,) = run_one([], [line], [lref("r1", "pending")])
    obs = item.observation
    assert isinstance(obs, RefundObserved)
    assert obs.observation_id == observation_id_for("prov-r1", "canceled")
    assert (obs.source, obs.observed_at, obs.subscription_id) == ("reconciliation", NOW, SUB)
    assert (obs.refund_id, obs.payment_id, obs.provider_refund_id) == ("r1", "p1", "prov-r1")
    assert (obs.status, obs.amount, obs.cancellation_reason) == ("canceled", PRICE, "rejected")


def test_apply_to_a_second_provider_object_names_our_payment() -> None:
    lines = [pay("p1", "pending"), pay("p1", "succeeded", "prov-sib")]
    items = run_one([rec("p1", "pending", at=FRESH)], lines)
    obs = items[1].observation
    assert isinstance(obs, PaymentObserved)
    assert (obs.payment_id, obs.provider_payment_id) == ("p1", "prov-sib")
    assert items[1].ours_status is None  # the ledger's record is "ours" in the first item only


def test_duplicate_refund_key_is_derived_from_the_charge_and_stable_across_runs() -> None:
    records = [rec("p1", "succeeded")]
    lines = [pay("p1", "succeeded"), pay("p1", "succeeded", "prov-dup", created=OLD + 900)]
    first, second = run_one(records, lines)[1], run_one(records, lines)[1]
    assert first.refund_key == second.refund_key == duplicate_refund_key("prov-dup")
    assert duplicate_refund_key("prov-dup") != duplicate_refund_key("prov-p1")
    assert first.theirs_amount == PRICE and first.observation is None


def test_only_repairs_that_need_a_payload_carry_one() -> None:
    records = [rec("p1", "succeeded"), rec("p2", "pending"), rec("p3", "succeeded")]
    lines = [
        pay("p1", "succeeded"),
        pay("p1", "succeeded", "prov-dup", created=OLD + 900),
        pay("p2", "succeeded"),
    ]
    for item in run_one(records, lines):
        assert (item.observation is not None) == (item.repair == "apply_provider_status")
        assert (item.refund_key is not None) == (item.repair == "refund_later_duplicate")
        assert (item.repair == "none") == (not item.discrepancy)


# --------------------------------------------------------------------------------- summary
def test_summary_counts_every_class_and_totals_succeeded_money_per_currency() -> None:
    usd = Money(500, "USD")
    records = [
        rec("p1", "succeeded"),
        rec("p2", "succeeded", amount=usd),
        rec("p3", "pending"),
        rec("p4", "succeeded"),  # unreported
        rec("p5", "succeeded", amount=Money(1000, "EUR")),
    ]
    lines = [
        pay("p1", "succeeded"),
        pay("p1", "succeeded", "prov-dup", created=OLD + 900),
        pay("p2", "succeeded", amount=usd),
        pay("p3", "succeeded"),
        pay("p5", "succeeded", amount=Money(1200, "EUR")),
    ]
    refunds = [lref("r1", "succeeded", amount=Money(100, "RUB"))]
    result = reconcile(
        [state(*records, refunds=refunds)],
        [*lines, refund("r1", "succeeded", amount=Money(100, "RUB"))],
        CFG,
    )
    s = result.summary
    assert list(s.counts) == list(MATCH_CLASSES)
    assert {k: n for k, n in s.counts.items() if n} == {
        "matched": 3,
        "missing_internal": 1,
        "duplicate_charge": 1,
        "missing_at_provider": 1,
        "amount_mismatch": 1,
    }
    assert s.discrepancies == 4
    # ours: p1 p4 (RUB), p2 (USD), p5 (EUR); p3 is still pending in the ledger
    assert s.payments_ours == {
        "RUB": Money(2 * 29900, "RUB"),
        "USD": usd,
        "EUR": Money(1000, "EUR"),
    }
    # theirs: p1, the duplicate and p3 (RUB), p2 (USD), p5 as the provider charged it (EUR)
    assert s.payments_theirs == {
        "RUB": Money(3 * 29900, "RUB"),
        "USD": usd,
        "EUR": Money(1200, "EUR"),
    }
    assert s.refunds_ours == s.refunds_theirs == {"RUB": Money(100, "RUB")}


def test_discrepancy_classes_are_all_but_matched_and_in_flight() -> None:
    assert set(MATCH_CLASSES) - DISCREPANCY_CLASSES == {"matched", "in_flight"}


# ------------------------------------------------------------------------ streaming steps
def test_streaming_steps_give_the_batch_result() -> None:
    st = state(rec("p1", "succeeded"), rec("p2", "pending"), rec("p3", "succeeded"))
    lines: list[ReportLine] = [
        pay("p1", "succeeded"),
        pay("p1", "succeeded", "prov-dup", created=OLD + 900),
        pay("p2", "canceled"),
        refund("r9", "succeeded"),
    ]
    run: SubscriptionRun | None = None
    streamed: list[MatchItem] = []
    for line in sorted(lines, key=report_order):
        item, run = match_line(st, line, CFG, run)
        streamed.extend([item] if item is not None else [])
        # a redelivered line changes nothing
        again, run2 = match_line(st, line, CFG, run)
        assert again is None and run2 == run
    streamed.extend(end_of_report(st, CFG, run))
    assert streamed == reconcile([st], lines, CFG).items
    assert [i.kind for i in streamed] == [
        "matched",  # prov-p1, oldest
        "status_mismatch",  # prov-p2, same time: by id
        "refund_mismatch",  # prov-r9
        "duplicate_charge",  # prov-dup, newest
        "missing_at_provider",  # p3, at the end
    ]


def test_run_memory_survives_encoding_like_a_table_value() -> None:
    st = state(no_provider("p1", "unknown"))
    _, run = match_line(st, pay("p1", "succeeded", "prov-a"), CFG)
    stored = msgspec.json.decode(msgspec.json.encode(run), type=SubscriptionRun)
    item, _ = match_line(st, pay("p1", "succeeded", "prov-b"), CFG, stored)
    assert item is not None and item.kind == "duplicate_charge"
    assert end_of_report(st, CFG, stored) == []


def test_end_of_report_without_a_run_judges_every_item_in_the_window() -> None:
    st = state(rec("p1", "succeeded"), rec("p2", "succeeded", at=BEFORE))
    assert [brief(i) for i in end_of_report(st, CFG)] == [
        ("missing_at_provider", "prov-p1", "escalate")
    ]


def test_a_line_matched_against_another_subscriptions_state_is_refused() -> None:
    with pytest.raises(ValueError, match="matched against the state"):
        match_line(state(sub="other"), pay("p1", "succeeded"), CFG)


@pytest.mark.parametrize(
    ("start", "end", "sla"),
    [(W1, W0, 0), (W0, W0, 0), (W0, W1, -1)],
    ids=["reversed", "empty", "negative sla"],
)
def test_config_refuses_nonsense(start: int, end: int, sla: int) -> None:
    with pytest.raises(ValueError):
        MatchConfig(window_start=start, window_end=end, now=NOW, pending_sla_ms=sla)
    with pytest.raises(ValueError):
        MatchConfig(window_start=start, window_end=end, now=NOW, hold_sla_ms=sla)


def test_sla_boundary_is_inclusive() -> None:
    at = NOW - CFG.pending_sla_ms
    assert [i.kind for i in run_one([rec("p1", "pending", at=at)], [])] == ["missing_at_provider"]
    assert [i.kind for i in run_one([rec("p1", "pending", at=at + 1)], [])] == ["in_flight"]


def test_window_is_half_open() -> None:
    assert [i.kind for i in run_one([rec("p1", "succeeded", at=W0)], [])] == ["missing_at_provider"]
    assert run_one([rec("p1", "succeeded", at=W1)], []) == []


# -------------------------------------------------------------------------- report contract
def test_lines_round_trip_through_the_wire_encoding() -> None:
    lines: list[ReportLine] = [pay("p1", "succeeded"), refund("r1", "pending")]
    assert [decode_line(encode_line(line)) for line in lines] == lines
    assert b'"object":"payment"' in encode_line(lines[0])


def test_payment_line_from_the_list_api() -> None:
    payment = ProviderPayment(
        provider_payment_id="2f9c1a7e-000f-5000-8000-1b2c3d4e5f60",
        status="succeeded",
        amount=PRICE,
        paid=True,
        metadata={"payment_id": "p1", "subscription_id": SUB, "user_id": "user-1"},
        payment_method_id="pm-1",
        payment_method_saved=True,
        created_at="2026-03-01T02:00:00.500Z",
    )
    line = payment_line(payment)
    assert (line.payment_id, line.subscription_id, line.user_id) == ("p1", SUB, "user-1")
    assert line.created_at == OLD + 500
    assert (line.payment_method_id, line.payment_method_saved) == ("pm-1", True)
    with pytest.raises(ReportError):
        payment_line(msgspec.structs.replace(payment, status="refunded"))


@dataclass(frozen=True)
class FakeRefund:
    provider_refund_id: str
    provider_payment_id: str
    status: str
    amount: Money
    created_at: str | None
    cancellation_reason: str | None
    metadata: dict[str, str]


def test_refund_line_takes_our_ids_from_metadata_or_from_the_caller() -> None:
    meta = {"refund_id": "r1", "subscription_id": SUB, "payment_id": "p1"}
    found = FakeRefund("prov-r1", "prov-p1", "succeeded", PRICE, "2026-03-01T02:00:00Z", None, meta)
    line = refund_line(found)
    assert (line.refund_id, line.subscription_id, line.payment_id) == ("r1", SUB, "p1")
    assert line.created_at == OLD
    bare = FakeRefund("prov-r2", "prov-p1", "pending", PRICE, None, None, {"refund_id": "r2"})
    line = refund_line(bare, subscription_id=SUB, payment_id="p1")
    assert (line.refund_id, line.subscription_id, line.payment_id) == ("r2", SUB, "p1")
    assert refund_line(bare).subscription_id is None
    with pytest.raises(ReportError):
        refund_line(FakeRefund("x", "y", "refunded", PRICE, None, None, {}))


def test_iso_times_need_a_zone() -> None:
    assert iso_to_ms("2026-03-01T00:00:00+03:00") == W0 - 3 * HOUR
    with pytest.raises(ReportError, match="zone"):
        iso_to_ms("2026-03-01T00:00:00")
    with pytest.raises(ReportError):
        iso_to_ms("yesterday")


REGISTRY = """\
object,provider_id,provider_payment_id,status,amount,currency,created_at,subscription_id,\
payment_id,refund_id,extra
payment,prov-p1,,succeeded,299.00,RUB,2026-03-01T02:00:00.500Z,sub-1,p1,,ignored
payment,prov-p2,,canceled,5.00,USD,,sub-1,p2,,
refund,prov-r1,prov-p1,succeeded,299.00,RUB,,sub-1,p1,r1,
"""


def test_registry_rows_become_report_lines() -> None:
    lines = read_registry(io.StringIO(REGISTRY))
    assert lines == [
        PaymentLine(
            provider_payment_id="prov-p1",
            status="succeeded",
            amount=PRICE,
            paid=True,
            created_at=OLD + 500,
            subscription_id=SUB,
            payment_id="p1",
        ),
        PaymentLine(
            provider_payment_id="prov-p2",
            status="canceled",
            amount=Money(500, "USD"),
            subscription_id=SUB,
            payment_id="p2",
        ),
        RefundLine(
            provider_refund_id="prov-r1",
            provider_payment_id="prov-p1",
            status="succeeded",
            amount=PRICE,
            subscription_id=SUB,
            payment_id="p1",
            refund_id="r1",
        ),
    ]


HEADER = "object,provider_id,provider_payment_id,status,amount,currency,created_at,paid\n"
# (name, one data row, expected error text)
BAD_ROWS: list[tuple[str, str, str]] = [
    ("unknown object", "payout,x,,succeeded,1.00,RUB,,", "payment or refund"),
    ("unknown payment status", "payment,x,,refunded,1.00,RUB,,", "payment status"),
    ("refund status of a payment", "refund,x,p,waiting_for_capture,1.00,RUB,,", "refund status"),
    ("refund without its payment", "refund,x,,succeeded,1.00,RUB,,", "provider_payment_id"),
    ("sub-minor amount", "payment,x,,succeeded,1.001,RUB,,", "precision"),
    ("unsupported currency", "payment,x,,succeeded,1.00,XXX,,", "currency"),
    ("empty id", "payment,,,succeeded,1.00,RUB,,", "provider_id is empty"),
    ("naive time", "payment,x,,succeeded,1.00,RUB,2026-03-01T00:00:00,", "zone"),
    ("paid not boolean", "payment,x,,succeeded,1.00,RUB,,yes", "paid"),
]


@pytest.mark.parametrize(("row", "error"), [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_registry_refuses_bad_rows_with_their_row_number(row: str, error: str) -> None:
    good = "payment,ok,,succeeded,1.00,RUB,,\n"
    with pytest.raises(ReportError, match=error) as exc:
        read_registry(io.StringIO(HEADER + good + row + "\n"))
    assert exc.value.row == 3


def test_registry_without_required_columns_is_refused() -> None:
    with pytest.raises(ReportError, match="currency"):
        read_registry(io.StringIO("object,provider_id,status,amount\npayment,x,succeeded,1.00\n"))


def test_registry_paid_defaults_to_succeeded_and_can_be_given() -> None:
    rows = "payment,a,,succeeded,1.00,RUB,,\npayment,b,,waiting_for_capture,1.00,RUB,,true\n"
    lines: list[Any] = read_registry(io.StringIO(HEADER + rows))
    assert [line.paid for line in lines] == [True, True]


def test_end_of_report_does_not_judge_items_requested_after_the_report_was_taken() -> None:
    from reconciler.matcher import end_of_report
    from schemas.recon_match import MatchConfig
    from tests.factories import T0, active

    state = active()  # one succeeded payment requested at T0, never reported
    window = {"window_start": T0 - 1_000, "window_end": T0 + 10_000_000}
    before = end_of_report(state, MatchConfig(**window, now=T0 - 1))
    after = end_of_report(state, MatchConfig(**window, now=T0 + 10_000))
    assert before == []
    assert [i.kind for i in after] == ["missing_at_provider"]
