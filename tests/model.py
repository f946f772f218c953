"""The model of one subscription's world, for model-based tests of the pure ledger machine
(tests/unit/test_machine_model.py) and of what sinks make of its events
(tests/integration/test_projection_agrees.py): random sequences, invariants after every step.

Hypothesis drives ``decide``/``evolve`` with what the world can throw at one subscription:
payments confirmed, declined, lost, duplicated and reordered; renewals, retries and dunning;
full, partial and concurrent refunds; upgrades and downgrades; auto-renew off and on; admin
refunds, extensions, grants and cancels; two-stage holds; clock jumps of seconds to weeks
(across the provider's key window too). A small provider model keeps the provider's truth, so
observations are consistent with one another except for order and repetition.

After every step (ARCHITECTURE.md invariants 1, 2, 4, 7 at the machine's level):
- refunded + refunding + credited <= captured for every payment;
- at most one charge per period: the periods of payments with money still in them do not
  overlap;
- access exactly when such a payment (or an admin's grant) covers now;
- the emitted events fold to the state; a replayed input changes nothing and re-emits the
  same events; an input applied long ago (evicted from the replay memory) moves no money;
- every request event carries its request's first time, so the gateway's key-window guard
  (streams/gateway) sees the true age and never creates past the window.

A failure prints the shrunk sequence of steps and the seed (``--hypothesis-seed`` replays it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import msgspec
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from schemas.ids import derived_id, observation_id_for
from schemas.messages import (
    KEY_WINDOW_EXPIRED,
    TERMINAL_PAYMENT_STATUSES,
    AccessShortened,
    AdminAdjust,
    AnyEvent,
    ChangePlan,
    PaymentCallFailed,
    PaymentObserved,
    PaymentRedriven,
    PaymentRequested,
    PaySubscription,
    PeriodAdjusted,
    PriceQuote,
    RefundCallFailed,
    RefundObserved,
    RefundPayment,
    RefundRedriven,
    RefundRequested,
    RetryPayment,
    SetAutoRenew,
    SettlePayment,
    SubscriptionCanceled,
)
from schemas.money import Money
from schemas.state import PaymentRecord, SubscriptionState
from streams.ledger.machine import LedgerInput, Policy, decide, due_commands, evolve

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
)
PLANS: dict[str, PriceQuote] = {
    "monthly": PriceQuote(plan_id="monthly", amount=Money(29900, "RUB"), period_months=1),
    "cheap": PriceQuote(plan_id="cheap", amount=Money(19900, "RUB"), period_months=1),
    "premium": PriceQuote(plan_id="premium", amount=Money(49900, "RUB"), period_months=1),
    "yearly": PriceQuote(plan_id="yearly", amount=Money(299000, "RUB"), period_months=12),
}
PLAN_NAMES = sorted(PLANS)


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

    # ----------------------------------------------------------------------- plumbing
    def _id(self, name: str) -> str:
        self.seq += 1
        return derived_id(SUB, f"{name}-{self.seq}")

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
        for event in d.events:
            assert event.version == self.folded.version + 1, "events must be consecutive"
            self.folded = evolve(self.folded, event)
            self._gateway_sees(event)
        self.state = d.state
        # Replayed at once (a crash before the offset commit): same events, same state.
        again = decide(self.state, msg, POLICY)
        assert again.duplicate and again.events == d.events and again.state == self.state
        return d.events

    def _gateway_sees(self, event: AnyEvent) -> None:
        """Every request event carries the time of its request's first attempt."""
        if isinstance(event, PaymentRequested):
            pid = event.request.payment_id
            assert pid not in self.first_requested, f"payment {pid} requested twice"
            self.first_requested[pid] = event.occurred_at
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
        elif isinstance(event, PeriodAdjusted):
            self.world.admin_cover.append((event.period_start, event.period_end))
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

    def credited(self, rec: PaymentRecord, *, settled: bool = False) -> int:
        """What upgrades took from ``rec`` as credit: reserved while the upgrade is open
        (only the upgrades that succeeded when ``settled``), given back when the upgrade
        failed or was refunded in full."""
        total = 0
        assert self.state is not None
        for upgrade_id, (source, minor) in self.world.credits.items():
            upgrade = self.state.payments.get(upgrade_id)
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

    @rule(plan=st.sampled_from(PLAN_NAMES), two_stage=st.booleans())
    def pay(self, plan: str, two_stage: bool) -> None:
        cid = self._id("pay")
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
                capture=not two_stage,
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
        if obj.status in TERMINAL_PAYMENT_STATUSES:
            pass  # already final: redeliver it
        elif step == "hold" and not rec.request.capture and obj.status == "pending":
            obj.status = "waiting_for_capture"
        elif step == "succeeded" and (rec.request.capture or obj.status == "waiting_for_capture"):
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
                payment_method_id="pm-1" if rec.request.save_payment_method else None,
                payment_method_saved=rec.request.save_payment_method,
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
        paid = self._payments("succeeded")
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
        self.feed(
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
        self.feed(
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
        obj = self.world.provider.get(rec.payment_id)
        if obj is not None and obj.status == "waiting_for_capture":
            obj.status = "succeeded" if action == "capture" else "canceled"
            self._observe(rec, obj, "gateway")

    @rule(
        dt=st.sampled_from(
            [1_000, 30_000, 61_000, 10 * 60_000, 2 * HOUR, 23 * HOUR, 25 * HOUR, 3 * DAY, 9 * DAY]
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
                    if rec.request.payment_method_id and rec.payment_id not in self.world.provider:
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
        granted = any(s <= now < e for s, e in self.world.admin_cover)
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
    def events_fold_to_the_state(self) -> None:
        if self.state is None:
            return
        assert self.folded is not None
        transport_memory: dict[str, object] = {"recent": {}, "answered": []}
        assert msgspec.structs.replace(self.folded, **transport_memory) == msgspec.structs.replace(
            self.state, **transport_memory
        )
