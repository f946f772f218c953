"""The model of one subscription's world, for model-based tests of the pure ledger machine
(tests/unit/test_machine_model.py) and of what sinks make of its events
(tests/integration/test_projection_agrees.py): random sequences, invariants after every step.

Hypothesis drives ``decide``/``evolve`` with what the world can throw at one subscription:
payments confirmed, declined, lost, duplicated and reordered; renewals, retries and dunning;
full, partial and concurrent refunds; upgrades and downgrades; auto-renew off and on; admin
refunds, extensions, grants and cancels; two-stage holds; promo codes (percent and fixed,
once, for N periods or forever, 100 % included); free trials (a card check held and
released, the first charge at the trial's end) and the wallet (cards added by a card check,
made the default, deleted); clock jumps of seconds to weeks
(across the provider's key window too, and past the retention window, so closed records are
dropped from the state: issue 13). A small provider model keeps the provider's truth, so
observations are consistent with one another except for order and repetition.

After every step (ARCHITECTURE.md invariants 1, 2, 4, 7 at the machine's level):
- refunded + refunding + credited <= captured for every payment;
- at most one charge per period: the periods of payments with money still in them do not
  overlap;
- access exactly when such a payment (or an admin's grant, or the one free trial, with its
  short wait for the first charge's outcome) covers now;
- charged = plan price less the discount, per period: every discounted request asks exactly
  ``charge_for(full price, discount)`` (never below the minimum, never negative), a renewal
  carries the state's discount whenever it applies, and no code discounts more periods than
  it was redeemed for;
- one trial per user, ever; a card check is never captured by us; no charge is ever asked
  with a method the user deleted; the wallet's default is one of its methods;
- the emitted events fold to the state; a replayed input changes nothing and re-emits the
  same events; an input applied long ago (evicted from the replay memory) moves no money;
- every request event carries its request's first time, so the gateway's key-window guard
  (streams/gateway) sees the true age and never creates past the window;
- across compaction (records dropped past the retention window): only closed records past
  the window leave the state; over the whole event log no payment id and no refund id is
  requested twice, and what was refunded of a payment never exceeds what it captured; the
  person's own records stay within the limits and the replay memory within its bound;
- 54-FZ receipts: once a contact is known, every payment and refund request carries it
  (renewals, retries, upgrades included), and the receipt built from any request adds up to
  its amount exactly.

A failure prints the shrunk sequence of steps and the seed (``--hypothesis-seed`` replays it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import msgspec
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from schemas.ids import derived_id, observation_id_for
from schemas.messages import (
    KEY_WINDOW_EXPIRED,
    TERMINAL_PAYMENT_STATUSES,
    AccessShortened,
    AddPaymentMethod,
    AdminAdjust,
    AnyEvent,
    ChangePlan,
    ManagePaymentMethod,
    PaymentCallFailed,
    PaymentMethodChanged,
    PaymentObserved,
    PaymentRedriven,
    PaymentRequest,
    PaymentRequested,
    PaymentSettleRequested,
    PaymentSucceeded,
    PaySubscription,
    PeriodAdjusted,
    PriceQuote,
    ReceiptCustomer,
    RefundCallFailed,
    RefundObserved,
    RefundPayment,
    RefundRedriven,
    RefundRequested,
    RefundSucceeded,
    RetryPayment,
    SetAutoRenew,
    SettlePayment,
    SubscriptionActivated,
    SubscriptionCanceled,
    TrialStarted,
)
from schemas.money import Money
from schemas.promo import MIN_CHARGE_MINOR, Discount, applies_to, charge_for
from schemas.receipts import ReceiptPolicy, payment_receipt, refund_receipt
from schemas.state import PaymentRecord, SubscriptionState
from streams.ledger.machine import (
    PERSON_COMMANDS,
    VERIFYING,
    WALLET_SIZE,
    LedgerInput,
    Policy,
    compact,
    decide,
    due_commands,
    evolve,
    past_window,
    time_of,
)

DAY = 86_400_000
HOUR = 3_600_000
KEY_WINDOW_MS = 20 * HOUR  # the gateway's safe window (BILLING_PROVIDER_KEY_SAFE_WINDOW_S)
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SUB = "00000000-0000-5000-8000-00000000000a"
USER = "model-user"
POLICY = Policy(
    payment_deadline_ms=60_000,
    redrive_max_backoff_ms=HOUR,
    renew_lead_ms=DAY,
    dunning_schedule_ms=(DAY, 3 * DAY),
    remind_ms=3 * DAY,
    capture_delay_ms=None,  # holds wait for an admin (or are released before expiry)
    hold_ms=6 * DAY,
    recent_sources=8,  # small, so eviction from the replay memory is exercised
    recent_events=3,
    # Short, so that closed records are dropped within a run (the clock jumps up to 90 days),
    # and small limits, so refusals past them are exercised too.
    closed_retention_ms=20 * DAY,
    max_payments=3,
    max_refunds=2,
)
PLANS: dict[str, PriceQuote] = {
    "monthly": PriceQuote(plan_id="monthly", amount=Money(29900, "RUB"), period_months=1),
    "cheap": PriceQuote(plan_id="cheap", amount=Money(19900, "RUB"), period_months=1),
    "premium": PriceQuote(plan_id="premium", amount=Money(49900, "RUB"), period_months=1),
    "yearly": PriceQuote(plan_id="yearly", amount=Money(299000, "RUB"), period_months=12),
}
PLAN_NAMES = sorted(PLANS)
CONTACT = ReceiptCustomer(email="viewer@example.com")  # a 54-FZ receipt's contact
RECEIPTS = ReceiptPolicy(enabled=True, tax_system_code=1, vat_code=1)
# Promo codes a purchase may carry (their plan is the one bought): code -> the discount.
PROMOS: dict[str, Discount] = {
    "P20X2": Discount(code="P20X2", kind="percent", value=20, plan_id="", periods=2),
    "FREE1": Discount(code="FREE1", kind="percent", value=100, plan_id="", periods=1),
    "FIXED": Discount(code="FIXED", kind="fixed", value=5000, plan_id="", currency="RUB"),
    "HUGE3": Discount(
        code="HUGE3", kind="fixed", value=10**7, plan_id="", currency="RUB", periods=3
    ),
}
_BOUND_REFUSALS = (
    "refund_window_closed",
    "command_expired",
    "too_many_payments",
    "too_many_refunds",
    "trial_already_used",
    "not_first_subscription",
    "too_many_payment_methods",
)


@dataclass
class ProviderObject:
    """What the provider holds for one of our payments (its truth, never rolled back)."""

    provider_id: str
    status: str  # pending | waiting_for_capture | succeeded | canceled
    amount: Money
    saved: bool = False


@dataclass
class World:
    provider: dict[str, ProviderObject] = field(default_factory=dict)
    refunds_at_provider: dict[str, str] = field(default_factory=dict)  # refund id -> status
    admin_cover: list[tuple[int, int]] = field(default_factory=list)
    admin_canceled_at: int | None = None
    # Credit an upgrade took from a payment (upgrade payment id -> (source payment id, minor)):
    # the model's own bookkeeping, from the upgrade's price and the period it replaces.
    credits: dict[str, tuple[str, int]] = field(default_factory=dict)
    # The free trial's window, with the wait for its first charge's outcome after it.
    trial_cover: list[tuple[int, int]] = field(default_factory=list)
    trials: int = 0
    deleted_methods: set[str] = field(default_factory=set)
    # Promo code -> the payments whose period it discounted (activated).
    discounted: dict[str, set[str]] = field(default_factory=dict)


def _covering(state: SubscriptionState, at: int) -> PaymentRecord | None:
    for p in state.payments.values():
        if (
            p.status == "succeeded"
            and p.period_start is not None
            and p.period_end is not None
            and p.period_start <= at < p.period_end
        ):
            return p
    return None


def _request(rec: PaymentRecord) -> PaymentRequest:
    """The request of an open payment (a closed one keeps none)."""
    assert rec.request is not None, f"open payment {rec.payment_id[:8]} without its request"
    return rec.request


def _has_access(state: SubscriptionState, now: int) -> bool:
    return state.status in ("active", "past_due") and (state.period_end or 0) > now


class LedgerModel(RuleBasedStateMachine):
    """One subscription, one provider, one clock."""

    def __init__(self) -> None:
        super().__init__()
        self.state: SubscriptionState | None = None
        self.folded: SubscriptionState | None = None
        self.now = T0
        self.world = World()
        self.inputs: list[LedgerInput] = []
        self.seq = 0
        self.first_requested: dict[str, int] = {}
        self.log: list[AnyEvent] = []  # every event emitted, in order (for the sinks' tests)
        # The last record of every payment the state held (dropped ones included), and what
        # the log says each payment captured and had refunded (dropped or not).
        self.last_seen: dict[str, PaymentRecord] = {}
        self.captured: dict[str, int] = {}
        self.refunded: dict[str, int] = {}
        self.dropped = 0

    # ----------------------------------------------------------------------- plumbing
    def _id(self, name: str) -> str:
        self.seq += 1
        return derived_id(SUB, f"{name}-{self.seq}")

    def _purchase(self, name: str, plan: str, **extra: Any) -> str:
        """A PaySubscription for ``plan`` at its catalogue price (``extra``: the variant);
        returns its command id."""
        cid = self._id(name)
        price = PLANS[plan]
        self.feed(
            PaySubscription(
                command_id=cid,
                subscription_id=SUB,
                issued_at=self.now,
                user_id=USER,
                payment_id=derived_id(cid, "payment"),
                plan_id=plan,
                amount=price.amount,
                period_months=price.period_months,
                return_url="https://cinema.example/back",
                description=plan,
                **extra,
            )
        )
        return cid

    def feed(self, msg: LedgerInput) -> list[AnyEvent]:
        """Apply one input; check replay and fold, record what the gateway would see."""
        before = self.state
        d = decide(self.state, msg, POLICY)
        self.inputs.append(msg)
        if d.duplicate:
            assert d.state == before or (before is None and d.state is None), (
                "an input that applied nothing changed the state"
            )
            return []
        assert d.state is not None
        if self.folded is None:
            self.folded = SubscriptionState(subscription_id=SUB, user_id=USER)
        self.log += d.events
        now = time_of(msg)
        self.folded = compact(self.folded, now, POLICY)  # as decide does before it judges
        for event in d.events:
            assert event.version == self.folded.version + 1, "events must be consecutive"
            self.folded = evolve(self.folded, event)
            self._gateway_sees(event)
        if before is not None:
            for pid in set(before.payments) - set(d.state.payments):
                gone = before.payments[pid]
                assert past_window(gone, now, POLICY), f"payment {pid[:8]} dropped while needed"
                self.dropped += 1
                hypothesis.event(f"a closed payment dropped past the window ({gone.status})")
            for rid in set(before.refunds) - set(d.state.refunds):
                ref = before.refunds[rid]
                assert ref.status in TERMINAL_PAYMENT_STATUSES, f"open refund {rid[:8]} dropped"
        for e in d.events:
            reason = getattr(e, "reason", "")
            if reason in _BOUND_REFUSALS:
                hypothesis.event(f"refused: {reason}")
        self.last_seen.update(d.state.payments)
        self.state = d.state
        # Replayed at once (a crash before the offset commit): same events, same state.
        again = decide(self.state, msg, POLICY)
        assert again.duplicate and again.events == d.events and again.state == self.state
        return d.events

    def _gateway_sees(self, event: AnyEvent) -> None:
        """Every request event carries the time of its request's first attempt."""
        if isinstance(event, PaymentSucceeded):
            self.captured[event.payment_id] = event.amount.amount_minor
        elif (
            isinstance(event, RefundSucceeded)
            and self.folded is not None
            and not self.folded.refunds[event.refund_id].duplicate
        ):
            self.refunded[event.payment_id] = (
                self.refunded.get(event.payment_id, 0) + event.amount.amount_minor
            )
        if isinstance(event, PaymentRequested | RefundRequested):
            self._receipt_sound(event)
        if isinstance(event, PaymentRequested):
            pid = event.request.payment_id
            charged = event.request.payment_method_id
            assert charged not in self.world.deleted_methods, f"deleted {charged} charged"
            assert pid not in self.first_requested, f"payment {pid} requested twice"
            self.first_requested[pid] = event.occurred_at
            self._priced_right(event.request)
            full = event.request.plan_amount
            if event.request.kind == "upgrade" and full is not None and self.state is not None:
                source = _covering(self.state, event.occurred_at)
                if source is not None:
                    credit = full.amount_minor - event.request.amount.amount_minor
                    self.world.credits[pid] = (source.payment_id, credit)
        elif isinstance(event, PaymentRedriven):
            pid = event.request.payment_id
            assert event.requested_at == self.first_requested[pid], "re-drive lost its age"
        elif isinstance(event, RefundRequested):
            rid = event.request.refund_id
            assert rid not in self.first_requested, f"refund {rid} requested twice"
            self.first_requested[rid] = event.occurred_at
        elif isinstance(event, RefundRedriven):
            rid = event.request.refund_id
            assert event.requested_at == self.first_requested[rid], "re-drive lost its age"
        elif isinstance(event, SubscriptionActivated) and self.folded is not None:
            promo = self.folded.payments[event.payment_id].promo
            if promo is not None:
                self.world.discounted.setdefault(promo.code, set()).add(event.payment_id)
        elif isinstance(event, PeriodAdjusted):
            self.world.admin_cover.append((event.period_start, event.period_end))
        elif isinstance(event, TrialStarted):
            self.world.trials += 1
            grace = event.period_end + POLICY.renew_margin_ms
            self.world.trial_cover.append((event.period_start, grace))
        elif isinstance(event, PaymentMethodChanged) and event.action == "delete":
            self.world.deleted_methods.add(event.method_id)
        elif isinstance(event, PaymentSettleRequested) and self.state is not None:
            rec = self.state.payments[event.payment_id]
            assert not (rec.kind in VERIFYING and event.action == "capture"), "check captured"
        elif isinstance(event, SubscriptionCanceled) and event.actor != "system":
            self.world.admin_canceled_at = event.occurred_at
        elif isinstance(event, AccessShortened) and self.state is not None:
            # Days granted after the returned period move up with the paid ones.
            returned = self.state.payments[event.payment_id]
            delta = (self.state.period_end or 0) - event.period_end
            self.world.admin_cover = [
                (s - delta, e - delta)
                if returned.period_end is not None and s >= returned.period_end
                else (s, e)
                for s, e in self.world.admin_cover
            ]

    def _receipt_sound(self, event: PaymentRequested | RefundRequested) -> None:
        """A contact once given is never dropped, and a receipt always adds up."""
        req = event.request
        if self.folded is not None and self.folded.customer is not None:
            assert req.customer is not None, "a request lost the receipt contact"
        if req.customer is not None:  # raises ReceiptError if the items did not add up
            if isinstance(req, PaymentRequest):
                receipt = payment_receipt(req, RECEIPTS)
            else:
                receipt = refund_receipt(req, RECEIPTS)
            assert receipt is None or receipt.total_minor() == req.amount.amount_minor

    def _priced_right(self, req: PaymentRequest) -> None:
        """Charged = plan price less the discount: a discounted request asks exactly
        ``charge_for`` of its full price; a renewal carries the state's discount whenever
        it applies to the plan renewed, and none otherwise."""
        if req.promo is not None:
            full = req.plan_amount
            assert full is not None, "a discounted charge without its full price"
            assert req.amount == charge_for(full, req.promo), f"{req.amount} for {full}"
            floor = min(full.amount_minor, MIN_CHARGE_MINOR)
            assert floor <= req.amount.amount_minor <= full.amount_minor
            hypothesis.event(f"discounted {req.kind}: {req.promo.code}")
        if req.kind == "renewal" and self.state is not None:
            hypothesis.event("renewal requested")
            held = self.state.promo
            expected = held if applies_to(held, req.plan_id) else None
            assert req.promo == expected, f"renewal discount {req.promo}, state {held}"

    def credited(self, rec: PaymentRecord, *, settled: bool = False) -> int:
        """What upgrades took from ``rec`` as credit: reserved while the upgrade is open
        (only the upgrades that succeeded when ``settled``), given back when the upgrade
        failed or was refunded in full."""
        total = 0
        assert self.state is not None
        for upgrade_id, (source, minor) in self.world.credits.items():
            upgrade = self.state.payments.get(upgrade_id) or self.last_seen.get(upgrade_id)
            if (
                source == rec.payment_id
                and upgrade is not None
                and upgrade.status != "canceled"
                and (upgrade.status == "succeeded" or not settled)
                and upgrade.refunded_minor < upgrade.amount.amount_minor
            ):
                total += minor
        return total

    def net(self, rec: PaymentRecord) -> int:
        """Money still paying for a payment's period: captured less refunded and the credit
        of upgrades that replaced it (a refund or an upgrade in flight has moved nothing)."""
        if rec.status != "succeeded":
            return 0
        return rec.amount.amount_minor - rec.refunded_minor - self.credited(rec, settled=True)

    def _payments(self, *statuses: str) -> list[PaymentRecord]:
        if self.state is None:
            return []
        return [p for p in self.state.payments.values() if not statuses or p.status in statuses]

    @staticmethod
    def _pick(data: st.DataObject, records: list[PaymentRecord]) -> PaymentRecord:
        """One of ``records``, drawn by position (a short line in a failing example)."""
        return records[data.draw(st.integers(0, len(records) - 1), label="payment #")]

    # -------------------------------------------------------------------------- rules
    @initialize()
    def start(self) -> None:
        self.now = T0

    @rule(plan=st.sampled_from(PLAN_NAMES), two_stage=st.booleans(), contact=st.booleans())
    def pay(self, plan: str, two_stage: bool, contact: bool) -> None:
        self._purchase("pay", plan, capture=not two_stage, customer=CONTACT if contact else None)

    @rule(
        plan=st.sampled_from(PLAN_NAMES),
        code=st.sampled_from(sorted(PROMOS)),
        paid_at_once=st.booleans(),
    )
    def pay_with_promo(self, plan: str, code: str, paid_at_once: bool) -> None:
        """A purchase with a promo code redeemed at intake (for the plan bought);
        ``paid_at_once``: the provider takes it at once and saves the card, so that the time
        rules reach its discounted renewals and the full-price ones after them."""
        cid = self._purchase(
            "promo", plan, promo=msgspec.structs.replace(PROMOS[code], plan_id=plan)
        )
        rec = self.state.payments.get(derived_id(cid, "payment")) if self.state else None
        if paid_at_once and rec is not None and rec.status == "requested":
            obj = ProviderObject(f"prov-{rec.payment_id[:8]}", "succeeded", rec.amount)
            self.world.provider[rec.payment_id] = obj
            self._observe(rec, obj, "gateway")

    @rule(plan=st.sampled_from(PLAN_NAMES), days=st.sampled_from([1, 7, 14]))
    def trial(self, plan: str, days: int) -> None:
        """The user asks for a plan's free trial (refused after the first one, ever)."""
        self._purchase("trial", plan, trial_days=days)

    @rule()
    def add_card(self) -> None:
        cid = self._id("card")
        self.feed(
            AddPaymentMethod(
                command_id=cid,
                subscription_id=SUB,
                issued_at=self.now,
                user_id=USER,
                payment_id=derived_id(cid, "payment"),
                return_url="https://cinema.example/wallet",
            )
        )

    @rule(data=st.data(), action=st.sampled_from(["default", "delete"]))
    def manage_card(self, data: st.DataObject, action: str) -> None:
        methods = [*(self.state.payment_methods if self.state else []), "pm-unknown"]
        method = methods[data.draw(st.integers(0, len(methods) - 1), label="method #")]
        self.feed(
            ManagePaymentMethod(
                command_id=self._id("manage"),
                subscription_id=SUB,
                issued_at=self.now,
                user_id=USER,
                method_id=method,
                action=action,  # type: ignore[arg-type]
            )
        )

    @rule(
        data=st.data(),
        step=st.sampled_from(["pending", "hold", "succeeded", "canceled"]),
        odd_amount=st.integers(0, 19),
        source=st.sampled_from(["gateway", "webhook", "poll"]),
    )
    def provider_moves(self, data: st.DataObject, step: str, odd_amount: int, source: str) -> None:
        """The provider advances one of our open payments and tells us (maybe twice)."""
        open_ = [p for p in self._payments() if p.status not in TERMINAL_PAYMENT_STATUSES]
        if not open_:
            return
        rec = self._pick(data, open_)
        obj = self.world.provider.get(rec.payment_id)
        if obj is None:
            amount = rec.amount
            if odd_amount == 0:  # rarely the provider captures another amount
                amount = Money(rec.amount.amount_minor - 1, rec.amount.currency)
            obj = ProviderObject(f"prov-{rec.payment_id[:8]}", "pending", amount)
            self.world.provider[rec.payment_id] = obj
        capture = _request(rec).capture
        if obj.status in TERMINAL_PAYMENT_STATUSES:
            pass  # already final: redeliver it
        elif step == "hold" and not capture and obj.status == "pending":
            obj.status = "waiting_for_capture"
        elif step == "succeeded" and rec.kind in VERIFYING:
            pass  # a card check is only ever held, then released or expired
        elif step == "succeeded" and (capture or obj.status == "waiting_for_capture"):
            obj.status = "succeeded"
        elif step == "canceled":
            obj.status = "canceled"
        self._observe(rec, obj, source)

    def _observe(self, rec: PaymentRecord, obj: ProviderObject, source: str) -> None:
        self.feed(
            PaymentObserved(
                observation_id=observation_id_for(obj.provider_id, obj.status),
                subscription_id=SUB,
                observed_at=self.now,
                source=source,  # type: ignore[arg-type]
                payment_id=rec.payment_id,
                provider_payment_id=obj.provider_id,
                status=obj.status,  # type: ignore[arg-type]
                amount=obj.amount,
                paid=obj.status in ("succeeded", "waiting_for_capture"),
                confirmation_url="https://emu/confirm" if obj.status == "pending" else None,
                cancellation_reason="insufficient_funds" if obj.status == "canceled" else None,
                payment_method_id=_request(rec).payment_method_id or f"pm-{rec.payment_id[:8]}",
                payment_method_saved=_request(rec).save_payment_method
                or _request(rec).payment_method_id is not None,
            )
        )

    @rule(data=st.data(), outcome=st.sampled_from(["unknown", "unknown", "rejected"]))
    def provider_call_fails(self, data: st.DataObject, outcome: str) -> None:
        open_ = [p for p in self._payments("requested", "unknown")]
        if not open_:
            return
        rec = self._pick(data, open_)
        if outcome == "rejected" and rec.payment_id in self.world.provider:
            outcome = "unknown"  # a definite 4xx only when nothing was created
        if outcome == "rejected":
            self.world.provider[rec.payment_id] = ProviderObject("", "canceled", rec.amount)
        self.feed(
            PaymentCallFailed(
                observation_id=derived_id(rec.payment_id, f"callfail-{self.seq}-{outcome}"),
                subscription_id=SUB,
                observed_at=self.now,
                source="gateway",
                payment_id=rec.payment_id,
                outcome=outcome,  # type: ignore[arg-type]
                error_code="timeout" if outcome == "unknown" else "invalid_request",
                error="model",
                attempt=rec.attempts,
            )
        )

    @rule()
    def gateway_gives_up_past_the_key_window(self) -> None:
        """What the gateway answers for a request past the key window that no provider
        object carries (streams/gateway/window.py): unknown, never a create."""
        if self.state is None:
            return
        for rec in self._payments("requested", "unknown"):
            old = self.now - rec.requested_at >= KEY_WINDOW_MS
            if old and rec.payment_id not in self.world.provider and rec.deadline_at is not None:
                self.feed(
                    PaymentCallFailed(
                        observation_id=derived_id(rec.payment_id, f"expired-{self.seq}"),
                        subscription_id=SUB,
                        observed_at=self.now,
                        source="gateway",
                        payment_id=rec.payment_id,
                        outcome="unknown",
                        error_code=KEY_WINDOW_EXPIRED,
                        error="nothing found",
                        attempt=rec.attempts,
                    )
                )
                handed = self.state.payments[rec.payment_id]
                assert handed.deadline_at is None, "handed to reconciliation, yet re-driven"
                assert handed.status_reason and KEY_WINDOW_EXPIRED in handed.status_reason

    @rule(data=st.data(), part=st.sampled_from(["full", "half", "one", "all_of_it"]))
    def refund(self, data: st.DataObject, part: str) -> None:
        """A refund of a paid payment, possibly one the state no longer holds (closed past
        the window; the API still finds it in the read model): that one is refused with a
        clear reason and moves nothing."""
        if self.state is None:
            return
        held = set(self.state.payments)
        gone = [p for k, p in self.last_seen.items() if k not in held and p.status == "succeeded"]
        paid = self._payments("succeeded") + gone
        if not paid:
            return
        rec = self._pick(data, paid)
        amount: Money | None = None
        if part == "half":
            amount = Money(max(rec.amount.amount_minor // 2, 1), rec.amount.currency)
        elif part == "one":
            amount = Money(1, rec.amount.currency)
        elif part == "all_of_it":  # the captured amount, whatever was refunded or credited
            amount = rec.amount
        rid = self._id("refund")
        events = self.feed(
            RefundPayment(
                command_id=derived_id(rid, "command"),
                subscription_id=SUB,
                issued_at=self.now,
                user_id=USER,
                refund_id=rid,
                payment_id=rec.payment_id,
                amount=amount,
                reason="model",
                actor=data.draw(st.sampled_from(["user", "admin:ops"])),
            )
        )
        if rec in gone:
            assert [(type(e).__name__, getattr(e, "reason", "")) for e in events] == [
                ("RefundRejected", "refund_window_closed")
            ]

    @rule(data=st.data(), ok=st.booleans(), lost=st.booleans())
    def refund_outcome(self, data: st.DataObject, ok: bool, lost: bool) -> None:
        if self.state is None:
            return
        refunds = self.state.refunds.values()
        open_ = [r for r in refunds if r.status not in TERMINAL_PAYMENT_STATUSES]
        if not open_:
            return
        ref = open_[data.draw(st.integers(0, len(open_) - 1), label="refund #")]
        if lost:
            self.feed(
                RefundCallFailed(
                    observation_id=derived_id(ref.refund_id, f"callfail-{self.seq}"),
                    subscription_id=SUB,
                    observed_at=self.now,
                    source="gateway",
                    refund_id=ref.refund_id,
                    payment_id=ref.payment_id,
                    outcome="unknown",
                    error_code="timeout",
                    error="model",
                    attempt=ref.attempts,
                )
            )
            return
        status = self.world.refunds_at_provider.setdefault(
            ref.refund_id, "succeeded" if ok else "canceled"
        )
        self.feed(
            RefundObserved(
                observation_id=observation_id_for(f"r-{ref.refund_id[:8]}", status),
                subscription_id=SUB,
                observed_at=self.now,
                source="gateway",
                refund_id=ref.refund_id,
                payment_id=ref.payment_id,
                provider_refund_id=f"r-{ref.refund_id[:8]}",
                status=status,  # type: ignore[arg-type]
                amount=ref.amount,
            )
        )

    @rule(plan=st.sampled_from(PLAN_NAMES))
    def change_plan(self, plan: str) -> None:
        cid = self._id("change")
        self.feed(
            ChangePlan(
                command_id=cid,
                subscription_id=SUB,
                issued_at=self.now,
                user_id=USER,
                payment_id=derived_id(cid, "payment"),
                price=PLANS[plan],
                return_url="https://cinema.example/back",
                description=f"change to {plan}",
            )
        )

    @rule(enabled=st.booleans())
    def auto_renew(self, enabled: bool) -> None:
        self.feed(
            SetAutoRenew(
                command_id=self._id("auto"),
                subscription_id=SUB,
                issued_at=self.now,
                user_id=USER,
                enabled=enabled,
            )
        )

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        failed = self._payments("canceled")
        if not failed:
            return
        rec = self._pick(data, failed)
        cid = self._id("retry")
        self.feed(
            RetryPayment(
                command_id=cid,
                subscription_id=SUB,
                issued_at=self.now,
                user_id=USER,
                retry_of=rec.payment_id,
                payment_id=derived_id(cid, "payment"),
                price=PLANS["monthly"],
                return_url="https://cinema.example/back",
                description="retry",
            )
        )

    @rule(
        action=st.sampled_from(["extend", "grant", "cancel"]),
        days=st.integers(-1, 10),
    )
    def admin(self, action: str, days: int) -> None:
        self.feed(
            AdminAdjust(
                command_id=self._id("admin"),
                subscription_id=SUB,
                issued_at=self.now,
                user_id=USER,
                action=action,  # type: ignore[arg-type]
                actor="admin:ops",
                reason="model",
                days=days,
                plan_id="monthly" if action == "grant" else None,
                period_months=1 if action == "grant" else 0,
            )
        )

    @rule(data=st.data(), action=st.sampled_from(["capture", "cancel"]))
    def settle(self, data: st.DataObject, action: str) -> None:
        held = self._payments("waiting_for_capture")
        if not held:
            return
        rec = self._pick(data, held)
        events = self.feed(
            SettlePayment(
                command_id=self._id("settle"),
                subscription_id=SUB,
                issued_at=self.now,
                user_id=USER,
                payment_id=rec.payment_id,
                action=action,  # type: ignore[arg-type]
                actor="admin:ops",
            )
        )
        asked = any(isinstance(e, PaymentSettleRequested) and e.action == action for e in events)
        obj = self.world.provider.get(rec.payment_id)
        if asked and obj is not None and obj.status == "waiting_for_capture":
            obj.status = "succeeded" if action == "capture" else "canceled"
            self._observe(rec, obj, "gateway")

    @rule(
        dt=st.sampled_from(
            [
                *(1_000, 30_000, 61_000, 10 * 60_000, 2 * HOUR, 23 * HOUR, 25 * HOUR),
                *(3 * DAY, 9 * DAY),
                # Past the retention window (closed records are dropped), drawn often enough
                # that refunds and replays after it are common.
                *(30 * DAY, 45 * DAY, 90 * DAY, 90 * DAY),
            ]
        )
    )
    def time_passes(self, dt: int) -> None:
        """The clock moves and the timer sends whatever is due (as the ledger's sweeper)."""
        self.now += dt
        for _ in range(12):  # due work can unlock more due work (a lapse after a sweep)
            if self.state is None:
                return
            due = due_commands(self.state, self.now, POLICY, lambda plan, at: None)
            if not due:
                return
            for cmd in due:
                self.feed(cmd)
                # A renewal charge with the saved card is answered at once by the provider.
                for rec in self._payments("requested"):
                    saved = _request(rec).payment_method_id
                    if saved and rec.payment_id not in self.world.provider:
                        self.world.provider[rec.payment_id] = ProviderObject(
                            f"prov-{rec.payment_id[:8]}", "succeeded", rec.amount
                        )
                        self._observe(rec, self.world.provider[rec.payment_id], "gateway")

    @rule(data=st.data())
    def replay_old_input(self, data: st.DataObject) -> None:
        """A redelivery of any earlier input: never new money movement."""
        if not self.inputs or self.state is None:
            return
        msg = self.inputs[data.draw(st.integers(0, len(self.inputs) - 1), label="input #")]
        d = decide(self.state, msg, POLICY)
        if d.duplicate:
            assert d.state == self.state
            return
        money = PaymentRequested | RefundRequested | PeriodAdjusted
        moved = [e for e in d.events if isinstance(e, money)]
        assert not moved, f"a replay of {type(msg).__name__} moved money: {moved}"
        self.feed(msg)

    @rule(data=st.data())
    def replay_from_before_the_horizon(self, data: st.DataObject) -> None:
        """A person's command from before the dropped records, redelivered after it left every
        replay memory too (a topic replayed from long ago): refused, nothing applied."""
        if self.state is None or not self.state.horizon:
            return
        old = [
            m
            for m in self.inputs
            if isinstance(m, PERSON_COMMANDS) and m.issued_at < self.state.horizon
        ]
        if not old:
            return
        msg = old[data.draw(st.integers(0, len(old) - 1), label="old command #")]
        forgotten = msgspec.structs.replace(self.state, recent={}, answered=[])
        d = decide(forgotten, msg, POLICY)
        if isinstance(msg, SetAutoRenew):
            assert d.duplicate and d.state == forgotten
            return
        assert [getattr(e, "reason", None) for e in d.events] == ["command_expired"]
        assert d.state is not None
        assert msgspec.structs.replace(d.state, version=0, recent={}, answered=[]) == (
            msgspec.structs.replace(forgotten, version=0)
        ), "a refused command changed the state"
        hypothesis.event("refused: command_expired")

    # ---------------------------------------------------------------------- invariants
    @invariant()
    def money_adds_up(self) -> None:
        for rec in self._payments():
            captured = rec.amount.amount_minor if rec.status == "succeeded" else 0
            credited = self.credited(rec)
            spent = rec.refunded_minor + rec.refunding_minor + credited
            assert spent <= captured, (
                f"payment {rec.payment_id[:8]} ({rec.kind}): refunded {rec.refunded_minor} "
                f"+ refunding {rec.refunding_minor} + credited {credited} > captured {captured}"
            )
            recorded = getattr(rec, "credited_minor", None)
            if recorded is not None:
                assert recorded == credited, f"credit on {rec.payment_id[:8]}: {recorded}"

    @invariant()
    def one_charge_per_period(self) -> None:
        live = sorted(
            (p.period_start, p.period_end, p.payment_id)
            for p in self._payments("succeeded")
            if self.net(p) > 0
            and p.period_start is not None
            and p.period_end is not None
            and p.period_end > p.period_start  # an empty period (canceled before it) pays nothing
        )
        for (_s1, e1, p1), (s2, e2, p2) in itertools.pairwise(live):
            assert e1 <= s2, f"payments {p1[:8]} and {p2[:8]} both pay for [{s2}, {min(e1, e2)})"

    @invariant()
    def access_follows_money(self) -> None:
        if self.state is None:
            return
        now = self.now
        paying = [
            p
            for p in self._payments("succeeded")
            if self.net(p) > 0
            and p.period_start is not None
            and p.period_end is not None
            and p.period_start <= now < p.period_end
        ]
        granted = any(s <= now < e for s, e in self.world.admin_cover + self.world.trial_cover)
        access = _has_access(self.state, now)
        if access:
            assert paying or granted, (
                f"access until {self.state.period_end} with no payment covering {now}"
            )
        canceled_at = self.world.admin_canceled_at
        owed = [p for p in paying if canceled_at is None or (p.succeeded_at or 0) > canceled_at]
        if owed and self.state.status not in ("active", "past_due"):
            raise AssertionError(
                f"payment {owed[0].payment_id[:8]} covers now but the subscription is "
                f"{self.state.status}"
            )
        if owed:
            assert access, f"payment {owed[0].payment_id[:8]} covers now, access ended"

    @invariant()
    def one_trial_and_a_sound_wallet(self) -> None:
        assert self.world.trials <= 1, f"{self.world.trials} trials"
        if self.state is None:
            return
        methods = self.state.payment_methods
        assert len(methods) <= WALLET_SIZE and len(set(methods)) == len(methods)
        default = self.state.payment_method_id
        assert default is None or default in methods, f"default {default} not in {methods}"
        assert not set(methods) & self.world.deleted_methods, "a deleted method came back"
        for rec in self._payments():
            if rec.kind in VERIFYING:
                assert rec.status != "succeeded", "a card check was captured"

    @invariant()
    def no_code_discounts_more_periods_than_redeemed(self) -> None:
        for code, payments in self.world.discounted.items():
            periods = PROMOS[code].periods
            # Each redemption (one purchase) is for at most ``periods`` periods; the model
            # may redeem a code more than once (intake's per-user rule is not the machine's).
            redeemed = sum(
                1
                for m in self.inputs
                if isinstance(m, PaySubscription) and m.promo is not None and m.promo.code == code
            )
            if periods is not None:
                assert len(payments) <= periods * redeemed, f"{code}: {len(payments)} periods"

    @invariant()
    def the_log_never_moves_money_twice(self) -> None:
        """Over the whole log, dropped records included: what was refunded of a payment never
        exceeds what it captured (a refund past the window is refused, not re-applied)."""
        for pid, refunded in self.refunded.items():
            captured = self.captured.get(pid, 0)
            assert refunded <= captured, f"payment {pid[:8]}: refunded {refunded} > {captured}"

    @invariant()
    def the_state_stays_bounded(self) -> None:
        if self.state is None:
            return
        mine = [p for p in self.state.payments.values() if p.kind != "renewal"]
        assert len(mine) <= POLICY.max_payments, f"{len(mine)} payments kept"
        refunds = [r for r in self.state.refunds.values() if not r.duplicate]
        assert len(refunds) <= POLICY.max_refunds, f"{len(refunds)} refunds kept"
        assert len(self.state.recent) <= POLICY.recent_sources
        with_events = [k for k, v in self.state.recent.items() if v]
        assert len(with_events) <= POLICY.recent_events
        assert len(self.state.answered) <= POLICY.answered_commands
        for rec in self.state.payments.values():
            if rec.status in TERMINAL_PAYMENT_STATUSES:
                assert rec.request is None, f"closed payment {rec.payment_id[:8]} keeps a copy"
            else:
                assert rec.request is not None, f"open payment {rec.payment_id[:8]} lost it"

    @invariant()
    def events_fold_to_the_state(self) -> None:
        if self.state is None:
            return
        assert self.folded is not None
        transport_memory: dict[str, object] = {"recent": {}, "answered": []}
        assert msgspec.structs.replace(self.folded, **transport_memory) == msgspec.structs.replace(
            self.state, **transport_memory
        )
