"""Property-style test of the matcher: random ledgers and provider reports, built clean and
then given known injected differences, must be classified as exactly those differences and
nothing else; the streaming steps, in any line order and with redelivered lines, must give
the same items as the batch.

Each case has its own ``random.Random(f"{seed}/{case}")``. One run uses a fixed seed, one a
fresh seed (printed; ``MATCHER_PROPERTY_SEED=<n>`` replays it).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import pytest

from reconciler.matcher import (
    SubscriptionRun,
    end_of_report,
    match_line,
    reconcile,
)
from schemas.messages import PaymentStatus
from schemas.money import CURRENCY_EXPONENT, Money
from schemas.recon import PaymentLine, ReportLine, provider_id_of
from schemas.recon_match import MatchConfig, MatchItem
from schemas.state import PaymentRecord, RefundStatus, SubscriptionState
from tests.factories import (
    payment_record,
    refund_record,
    report_payment_line,
    report_refund_line,
)

HOUR = 3_600_000
W0 = 1_772_323_200_000  # 2026-03-01T00:00Z
W1 = W0 + 24 * HOUR
NOW = W1 + HOUR // 2
SLA = 2 * HOUR
CFG = MatchConfig(window_start=W0, window_end=W1, now=NOW, pending_sla_ms=SLA)
CASES = 400
FIXED_SEED = 20260301
FRESH_SEED = int(os.environ.get("MATCHER_PROPERTY_SEED", random.SystemRandom().randrange(2**32)))
CURRENCIES = sorted(CURRENCY_EXPONENT)

Expected = tuple[str, str, str]  # (class, provider id or ours:<id>, repair)


@dataclass
class Case:
    rng: random.Random
    states: dict[str, SubscriptionState] = field(default_factory=dict)
    lines: list[ReportLine] = field(default_factory=list)
    expected: Counter[Expected] = field(default_factory=Counter)
    n: int = 0

    def uid(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    # ----------------------------------------------------------------- random values
    def money(self) -> Money:
        return Money(self.rng.randint(100, 500_000), self.rng.choice(CURRENCIES))

    def old(self) -> int:
        """Requested in the window, past the SLA at NOW."""
        return self.rng.randint(W0, NOW - SLA)

    def fresh(self) -> int:
        """Requested in the window, within the SLA at NOW."""
        return self.rng.randint(NOW - SLA + 1, W1 - 1)

    def before(self) -> int:
        return W0 - self.rng.randint(1, 10 * 24 * HOUR)

    def after(self, at: int) -> int:
        return at + self.rng.randint(1, 5_000)

    # ----------------------------------------------------------------------- builders
    def record(
        self,
        sub: str,
        status: PaymentStatus,
        *,
        at: int | None = None,
        provider_id: str | None = "new",
        amount: Money | None = None,
    ) -> PaymentRecord:
        # drawn in this order, so that a seed replays the same case
        pid = self.uid("pay-")
        amount = amount or self.money()
        at = self.old() if at is None else at
        provider_id = self.uid("prov-") if provider_id == "new" else provider_id
        rec = payment_record(
            pid, status, at, provider_id, amount=amount, user_id=sub, description=""
        )
        st = self.states[sub]
        self.states[sub] = msgspec.structs.replace(st, payments={**st.payments, pid: rec})
        return rec

    def held(self, sub: str, *, at: int, held_at: int) -> PaymentRecord:
        """A two-stage payment held for capture since ``held_at``."""
        rec = self.record(sub, "waiting_for_capture", at=at)
        rec = msgspec.structs.replace(rec, held_at=held_at)
        st = self.states[sub]
        self.states[sub] = msgspec.structs.replace(
            st, payments={**st.payments, rec.payment_id: rec}
        )
        return rec

    def line(
        self,
        sub: str | None,
        rec: PaymentRecord | None,
        status: str,
        *,
        provider_id: str | None = None,
        amount: Money | None = None,
        created: int | None = None,
    ) -> PaymentLine:
        # drawn in this order, so that a seed replays the same case
        provider_id = (
            provider_id
            or (rec.provider_payment_id if rec is not None else None)
            or self.uid("prov-")
        )
        amount = amount or (rec.amount if rec is not None else self.money())
        created = created or self.after(rec.requested_at if rec is not None else W0)
        payment_id = rec.payment_id if rec is not None else self.uid("pay-")
        line = report_payment_line(sub, payment_id, provider_id, status, created, amount)
        self.lines.append(line)
        return line

    def expect(self, kind: str, key: str | None, repair: str) -> None:
        assert key is not None
        self.expected[(kind, key, repair)] += 1


def ours(rec: PaymentRecord) -> str:
    return rec.provider_payment_id or f"ours:{rec.payment_id}"


# --------------------------------------------------------- payment scenarios (one payment)
def clean_terminal(c: Case, sub: str) -> None:
    at = c.rng.choice([c.old(), c.fresh(), c.before()])  # reported: the window does not matter
    rec = c.record(sub, c.rng.choice(["succeeded", "canceled"]), at=at)
    c.line(sub, rec, rec.status)
    c.expect("matched", rec.provider_payment_id, "none")


def clean_never_created(c: Case, sub: str) -> None:
    rec = c.record(sub, "canceled", provider_id=None)
    c.expect("matched", ours(rec), "none")


def clean_in_flight(c: Case, sub: str) -> None:
    variant = c.rng.randrange(5)
    if variant == 0:  # the gateway has no answer yet, nothing at the provider
        rec = c.record(sub, c.rng.choice(["requested", "unknown"]), at=c.fresh(), provider_id=None)
    elif variant == 1:  # pending on both sides
        rec = c.record(sub, c.rng.choice(["pending", "waiting_for_capture"]), at=c.fresh())
        c.line(sub, rec, c.rng.choice(["pending", "waiting_for_capture"]))
    elif variant == 2:  # our terminal status is newer than the report's snapshot
        rec = c.record(sub, c.rng.choice(["succeeded", "canceled"]), at=c.fresh())
        c.line(sub, rec, "pending")
    elif variant == 3:  # pending at our side, the provider's list did not have it yet
        rec = c.record(sub, "pending", at=c.fresh())
    else:  # held for capture past the pending SLA but within the hold SLA
        at = c.old()
        rec = c.held(sub, at=at, held_at=at + c.rng.randint(0, HOUR))
        if c.rng.random() < 0.7:
            c.line(sub, rec, "waiting_for_capture")
    c.expect("in_flight", ours(rec), "none")


def clean_not_judged(c: Case, sub: str) -> None:
    statuses: list[PaymentStatus] = ["requested", "pending", "succeeded", "canceled"]
    c.record(sub, c.rng.choice(statuses), at=c.before())


def clean_second_canceled_object(c: Case, sub: str) -> None:
    rec = c.record(sub, "succeeded")
    c.line(sub, rec, "succeeded")
    sibling = c.line(sub, rec, "canceled", provider_id=c.uid("prov-"))
    c.expect("matched", rec.provider_payment_id, "none")
    c.expect("matched", sibling.provider_payment_id, "none")


def inj_missing_internal(c: Case, sub: str) -> None:
    at = c.rng.choice([c.old(), c.fresh()])
    if c.rng.random() < 0.5:
        rec = c.record(sub, c.rng.choice(["requested", "unknown"]), at=at, provider_id=None)
    else:
        rec = c.record(sub, c.rng.choice(["pending", "waiting_for_capture"]), at=at)
    line = c.line(sub, rec, "succeeded")
    c.expect("missing_internal", line.provider_payment_id, "apply_provider_status")


def inj_status_mismatch(c: Case, sub: str) -> None:
    pairs: list[tuple[PaymentStatus, str]] = [
        ("pending", "canceled"),
        ("requested", "canceled"),
        ("succeeded", "canceled"),
        ("canceled", "succeeded"),
        ("waiting_for_capture", "canceled"),
    ]
    ours_status, theirs = c.rng.choice(pairs)
    has_provider_id = ours_status != "requested" and c.rng.random() < 0.8
    rec = c.record(sub, ours_status, provider_id="new" if has_provider_id else None)
    line = c.line(sub, rec, theirs)
    c.expect("status_mismatch", line.provider_payment_id, "apply_provider_status")


def inj_missing_at_provider(c: Case, sub: str) -> None:
    variant = c.rng.randrange(6)
    if variant == 0:  # we say succeeded, the provider has nothing
        rec = c.record(sub, "succeeded", at=c.rng.choice([c.old(), c.fresh()]))
    elif variant == 1:  # in flight past the SLA, the provider has nothing
        rec = c.record(sub, "unknown", provider_id=None)
    elif variant == 2:  # pending on both sides past the SLA
        rec = c.record(sub, "pending")
        c.line(sub, rec, "pending")
    elif variant == 3:  # we say succeeded, the provider is still pending past the SLA
        rec = c.record(sub, "succeeded")
        c.line(sub, rec, "pending")
    elif variant == 4:  # we canceled an object the provider created, it never reported it
        rec = c.record(sub, "canceled")
    else:  # held for capture past the hold SLA (reported: the request is outside the window)
        at = NOW - CFG.hold_sla_ms - c.rng.randint(HOUR, 5 * 24 * HOUR)
        rec = c.held(sub, at=at, held_at=at + c.rng.randint(0, HOUR))
        c.line(sub, rec, "waiting_for_capture")
    c.expect("missing_at_provider", ours(rec), "escalate")


def inj_amount(c: Case, sub: str) -> None:
    rec = c.record(sub, c.rng.choice(["succeeded", "canceled", "pending"]))
    delta = c.rng.choice([-1, 1]) * c.rng.randint(1, 99)
    other = Money(rec.amount.amount_minor + delta, rec.amount.currency)
    c.line(sub, rec, c.rng.choice(["succeeded", "canceled"]), amount=other)
    c.expect("amount_mismatch", rec.provider_payment_id, "escalate")


def inj_currency(c: Case, sub: str) -> None:
    rec = c.record(sub, c.rng.choice(["succeeded", "canceled", "pending"]))
    currency = c.rng.choice([cur for cur in CURRENCIES if cur != rec.amount.currency])
    other = Money(c.rng.choice([rec.amount.amount_minor, c.rng.randint(100, 9999)]), currency)
    c.line(sub, rec, c.rng.choice(["succeeded", "canceled"]), amount=other)
    c.expect("currency_mismatch", rec.provider_payment_id, "escalate")


def inj_duplicate(c: Case, sub: str) -> None:
    rec = c.record(sub, "succeeded")
    recorded = c.line(sub, rec, "succeeded")
    assert recorded.created_at is not None
    extra_at = recorded.created_at + c.rng.choice([-1, 1]) * c.rng.randint(1, 100_000)
    extra = c.line(sub, rec, "succeeded", provider_id=c.uid("prov-"), created=extra_at)
    c.expect("matched", rec.provider_payment_id, "none")
    c.expect("duplicate_charge", extra.provider_payment_id, "refund_later_duplicate")


def inj_unknown_payment(c: Case, sub: str) -> None:
    line = c.line(sub, None, c.rng.choice(["succeeded", "canceled", "pending"]))
    c.expect("missing_internal", line.provider_payment_id, "escalate")


PAYMENT_SCENARIOS: list[Callable[[Case, str], None]] = [
    clean_terminal,
    clean_terminal,
    clean_terminal,
    clean_never_created,
    clean_in_flight,
    clean_not_judged,
    clean_second_canceled_object,
    inj_missing_internal,
    inj_status_mismatch,
    inj_missing_at_provider,
    inj_amount,
    inj_currency,
    inj_duplicate,
    inj_unknown_payment,
]


# ---------------------------------------------------------- refund scenarios (one refund)
def refund_scenario(c: Case, sub: str) -> None:
    rid = c.uid("ref-")
    amount = c.money()
    nonterminal: list[RefundStatus] = ["requested", "unknown", "pending"]
    variant = c.rng.randrange(9)
    at = c.rng.choice([c.old(), c.fresh()])
    theirs: str | None  # the provider's status; None: not in the report
    if variant == 0:
        ours, theirs, expected = "succeeded", "succeeded", ("matched", "none")
    elif variant == 1:  # the provider never reported it
        ours, theirs = c.rng.choice(["succeeded", "canceled"]), None
        expected = ("refund_mismatch", "escalate")
    elif variant == 2:  # amount differs: amounts are below
        ours, theirs, expected = "succeeded", "succeeded", ("refund_mismatch", "escalate")
    elif variant == 3:  # the provider's terminal status differs from ours
        ours = c.rng.choice([*nonterminal, "succeeded", "canceled"])
        theirs = c.rng.choice([s for s in ("succeeded", "canceled") if s != ours])
        expected = ("refund_mismatch", "apply_provider_status")
    elif variant == 4:  # a refund the ledger never made (no record)
        ours, theirs = None, c.rng.choice(["succeeded", "canceled"])
        expected = ("refund_mismatch", "escalate")
    elif variant == 5:  # canceled before the provider created it
        ours, theirs, expected = "canceled", None, ("matched", "none")
    elif variant == 6:  # in flight within the SLA
        at, ours, theirs = c.fresh(), c.rng.choice(nonterminal), c.rng.choice(["pending", None])
        expected = ("in_flight", "none")
    elif variant == 7:
        ours, theirs, expected = "canceled", "canceled", ("matched", "none")
    else:  # in flight past the SLA
        at, ours, theirs = c.old(), c.rng.choice(nonterminal), c.rng.choice(["pending", None])
        expected = ("refund_mismatch", "escalate")
    answered = variant != 5 and (ours not in ("requested", "unknown") or theirs is not None)
    provider_id = c.uid("prov-ref-") if answered else None
    pay_id = c.uid("pay-")
    if ours is not None:
        status: RefundStatus = ours  # type: ignore[assignment]
        record = refund_record(rid, pay_id, "prov-x", status, at, provider_id, amount=amount)
        st = c.states[sub]
        c.states[sub] = msgspec.structs.replace(st, refunds={**st.refunds, rid: record})
    if theirs is not None:
        c.lines.append(
            report_refund_line(
                sub,
                pay_id,
                "prov-x",
                rid if ours is not None else None,
                provider_id or "",
                theirs,
                c.after(at),
                Money(amount.amount_minor + 1, amount.currency) if variant == 2 else amount,
            )
        )
    c.expect(expected[0], provider_id or f"ours:{rid}", expected[1])


# --------------------------------------------------------------------------------- cases
def build(seed: int, index: int) -> Case:
    c = Case(rng=random.Random(f"{seed}/{index}"))
    for _ in range(c.rng.randint(1, 5)):
        sub = c.uid("sub-")
        c.states[sub] = SubscriptionState(subscription_id=sub, user_id=f"user-{sub}")
        for _ in range(c.rng.randint(0, 4)):
            c.rng.choice(PAYMENT_SCENARIOS)(c, sub)
        for _ in range(c.rng.randint(0, 2)):
            refund_scenario(c, sub)
    if c.rng.random() < 0.2:  # a provider payment without our metadata
        line = c.line(None, None, "succeeded")
        c.expect("missing_internal", line.provider_payment_id, "escalate")
    if c.rng.random() < 0.2:  # a subscription the ledger does not know
        line = c.line(c.uid("sub-"), None, c.rng.choice(["succeeded", "canceled"]))
        c.expect("missing_internal", line.provider_payment_id, "escalate")
    return c


def brief(item: MatchItem) -> Expected:
    key = item.provider_id or f"ours:{item.refund_id or item.payment_id}"
    return item.kind, key, item.repair


def totals(c: Case) -> dict[str, dict[str, int]]:
    """Succeeded money per currency, computed from the generated books, not from items."""
    out: dict[str, dict[str, int]] = {k: {} for k in ("p_ours", "p_theirs", "r_ours", "r_theirs")}

    def add(bucket: str, amount: Money) -> None:
        out[bucket][amount.currency] = out[bucket].get(amount.currency, 0) + amount.amount_minor

    reported = {line.payment_id for line in c.lines if isinstance(line, PaymentLine)}
    for st in c.states.values():
        for rec in st.payments.values():
            judged = CFG.in_window(rec.requested_at) or rec.payment_id in reported
            if rec.status == "succeeded" and judged:
                add("p_ours", rec.amount)
    for st in c.states.values():
        for ref in st.refunds.values():
            if ref.status == "succeeded":
                add("r_ours", ref.amount)
    for line in c.lines:
        if line.status == "succeeded":
            add("p_theirs" if isinstance(line, PaymentLine) else "r_theirs", line.amount)
    return out


def streamed(c: Case, rng: random.Random) -> list[MatchItem]:
    """The streaming path: each subscription's lines in a random order, some delivered twice,
    then the end-of-report step for each subscription."""
    by_sub: dict[str, list[ReportLine]] = {}
    for line in c.lines:
        by_sub.setdefault(line.subscription_id or "", []).append(line)
    items: list[MatchItem] = []
    runs: dict[str, SubscriptionRun] = {}
    for sub, lines in by_sub.items():
        delivered = lines + [line for line in lines if rng.random() < 0.3]
        rng.shuffle(delivered)
        run: SubscriptionRun | None = None
        for line in delivered:
            item, run = match_line(c.states.get(sub), line, CFG, run)
            if item is not None:
                items.append(item)
        assert run is not None
        runs[sub] = run
    for sub, st in c.states.items():
        items.extend(end_of_report(st, CFG, runs.get(sub)))
    return items


@pytest.mark.parametrize("seed", [FIXED_SEED, FRESH_SEED], ids=["fixed-seed", "fresh-seed"])
def test_exactly_the_injected_differences_are_reported(seed: int) -> None:
    print(f"matcher property seed={seed} (replay: MATCHER_PROPERTY_SEED={seed})")
    seen_classes: Counter[str] = Counter()
    for index in range(CASES):
        c = build(seed, index)
        where = f"seed={seed} case={index}"
        lines = c.lines + [line for line in c.lines if c.rng.random() < 0.1]  # redeliveries
        result = reconcile(c.states.values(), lines, CFG)

        got = Counter(brief(item) for item in result.items)
        assert got == c.expected, (
            f"{where}: unexpected {dict(got - c.expected)}, not reported {dict(c.expected - got)}"
        )
        # every provider object is "theirs" in exactly one item
        theirs = Counter(
            ("payment" if isinstance(line, PaymentLine) else "refund", provider_id_of(line))
            for line in c.lines
        )
        got_theirs = Counter(
            (i.object, i.provider_id) for i in result.items if i.theirs_status is not None
        )
        assert got_theirs == theirs, where
        # money: the summary equals the books, computed independently
        expected_totals = totals(c)
        s = result.summary
        for name, bucket in (
            ("p_ours", s.payments_ours),
            ("p_theirs", s.payments_theirs),
            ("r_ours", s.refunds_ours),
            ("r_theirs", s.refunds_theirs),
        ):
            assert {cur: m.amount_minor for cur, m in bucket.items()} == expected_totals[name], (
                f"{where}: {name}"
            )
        assert sum(s.counts.values()) == len(result.items), where
        # the streaming steps agree with the batch whatever the order and redeliveries
        stream = streamed(c, random.Random(f"{seed}/{index}/stream"))
        assert Counter(stream) == Counter(result.items), where
        seen_classes.update(kind for kind, _, _ in c.expected.elements())

    # the generator exercised every class, so a class that is never reported cannot pass
    assert set(seen_classes) == {
        "matched",
        "in_flight",
        "missing_internal",
        "status_mismatch",
        "missing_at_provider",
        "amount_mismatch",
        "currency_mismatch",
        "duplicate_charge",
        "refund_mismatch",
    }, seen_classes
