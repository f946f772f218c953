"""Builders for reconciliation tests: ledger states and report lines with unique ids, and
a small "day" that has one item of every kind the matcher tells apart."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection

from reconciler import store
from reconciler.matcher import reconcile
from schemas.messages import PaymentRequest, PaymentStatus, RefundRequest
from schemas.money import Money
from schemas.periods import dt_to_ms
from schemas.recon import PaymentLine, RefundLine, ReportLine
from schemas.recon_match import MatchConfig, MatchItem
from schemas.recon_runs import RunSpec
from schemas.state import PaymentRecord, RefundRecord, RefundStatus, SubscriptionState

HOUR = 3_600_000
PRICE = Money(29900, "RUB")


def uid(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4()}"


def record(
    payment_id: str,
    status: PaymentStatus,
    at: int,
    provider_id: str | None = None,
    *,
    amount: Money = PRICE,
    user_id: str = "user",
) -> PaymentRecord:
    request = PaymentRequest(
        payment_id=payment_id,
        command_id=f"cmd-{payment_id}",
        user_id=user_id,
        plan_id="monthly",
        amount=amount,
        period_months=1,
        return_url="https://cinema.example/return",
        description="Cinema monthly",
    )
    return PaymentRecord(
        payment_id=payment_id,
        command_id=f"cmd-{payment_id}",
        plan_id="monthly",
        amount=amount,
        period_months=1,
        status=status,
        request=request,
        requested_at=at,
        deadline_at=None,
        provider_payment_id=provider_id,
        succeeded_at=at + 1000 if status == "succeeded" else None,
    )


def refund_record(
    refund_id: str,
    payment: PaymentRecord,
    status: RefundStatus,
    at: int,
    provider_id: str | None,
    amount: Money = PRICE,
) -> RefundRecord:
    request = RefundRequest(
        refund_id=refund_id,
        command_id=f"cmd-{refund_id}",
        payment_id=payment.payment_id,
        provider_payment_id=payment.provider_payment_id or "",
        amount=amount,
    )
    return RefundRecord(
        refund_id=refund_id,
        command_id=f"cmd-{refund_id}",
        payment_id=payment.payment_id,
        amount=amount,
        status=status,
        request=request,
        requested_at=at,
        deadline_at=None,
        provider_refund_id=provider_id,
    )


def payment_line(
    sub: str | None,
    payment_id: str | None,
    provider_id: str,
    status: str,
    created: int,
    amount: Money = PRICE,
) -> PaymentLine:
    return PaymentLine(
        provider_payment_id=provider_id,
        status=status,  # type: ignore[arg-type]
        amount=amount,
        paid=status == "succeeded",
        created_at=created,
        subscription_id=sub,
        payment_id=payment_id,
    )


def refund_line(
    sub: str,
    payment_id: str,
    provider_payment_id: str,
    refund_id: str | None,
    provider_id: str,
    status: str,
    created: int,
    amount: Money = PRICE,
) -> RefundLine:
    return RefundLine(
        provider_refund_id=provider_id,
        provider_payment_id=provider_payment_id,
        status=status,  # type: ignore[arg-type]
        amount=amount,
        created_at=created,
        subscription_id=sub,
        payment_id=payment_id,
        refund_id=refund_id,
    )


@dataclass
class Day:
    """A ledger and a provider report for one window, with the expected class per object."""

    cfg: MatchConfig
    states: list[SubscriptionState] = field(default_factory=list)
    lines: list[ReportLine] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)  # provider or our id -> class

    def sub(self, *records: PaymentRecord, refunds: tuple[RefundRecord, ...] = ()) -> str:
        sub_id = uid("sub-")
        self.states.append(
            SubscriptionState(
                subscription_id=sub_id,
                user_id=uid("user-"),
                payments={r.payment_id: r for r in records},
                refunds={r.refund_id: r for r in refunds},
            )
        )
        return sub_id


def make_day(window_start: int, matched: int = 3) -> Day:
    """One window of a day with every kind of item: ``matched`` plain matches, a missed
    webhook, a status mismatch, a double charge, an amount mismatch, a payment the provider
    never reported, a provider payment we never requested, a refund made outside our
    system, a matched refund, and a payment still in flight within the SLA."""
    w0, w1 = window_start, window_start + 24 * HOUR
    cfg = MatchConfig(window_start=w0, window_end=w1, now=w1 + HOUR // 2, pending_sla_ms=2 * HOUR)
    day = Day(cfg)
    t = w0 + HOUR
    for _ in range(matched):
        pid, prov = uid("pay-"), uid("prov-")
        sub = day.sub(record(pid, "succeeded", t, prov))
        day.lines.append(payment_line(sub, pid, prov, "succeeded", t + 100))
        day.expected[prov] = "matched"
    # missed webhook
    pid, prov = uid("pay-"), uid("prov-")
    sub = day.sub(record(pid, "pending", t, prov))
    day.lines.append(payment_line(sub, pid, prov, "succeeded", t + 100))
    day.expected[prov] = "missing_internal"
    # ours canceled, theirs succeeded
    pid, prov = uid("pay-"), uid("prov-")
    sub = day.sub(record(pid, "canceled", t, prov))
    day.lines.append(payment_line(sub, pid, prov, "succeeded", t + 100))
    day.expected[prov] = "status_mismatch"
    # double charge: the recorded one is kept, the second refunded
    pid, prov, dup = uid("pay-"), uid("prov-"), uid("prov-dup-")
    sub = day.sub(record(pid, "succeeded", t, prov))
    day.lines.append(payment_line(sub, pid, prov, "succeeded", t + 100))
    day.lines.append(payment_line(sub, pid, dup, "succeeded", t + 200))
    day.expected[prov] = "matched"
    day.expected[dup] = "duplicate_charge"
    # amount mismatch (a second provider object under our payment, another amount)
    pid, prov, odd = uid("pay-"), uid("prov-"), uid("prov-odd-")
    sub = day.sub(record(pid, "succeeded", t, prov))
    day.lines.append(payment_line(sub, pid, prov, "succeeded", t + 100))
    day.lines.append(payment_line(sub, pid, odd, "succeeded", t + 300, Money(19900, "RUB")))
    day.expected[prov] = "matched"
    day.expected[odd] = "amount_mismatch"
    # ours succeeded, never reported
    pid, prov = uid("pay-"), uid("prov-")
    day.sub(record(pid, "succeeded", t, prov))
    day.expected[prov] = "missing_at_provider"
    # a provider payment naming a subscription we never billed
    prov = uid("prov-stranger-")
    day.lines.append(payment_line(uid("sub-"), uid("pay-"), prov, "succeeded", t + 100))
    day.expected[prov] = "missing_internal"
    # a matched refund, and a refund made outside our system on the same payment
    pid, prov = uid("pay-"), uid("prov-")
    rec = record(pid, "succeeded", t, prov)
    rid, rprov, outside = uid("ref-"), uid("prov-ref-"), uid("prov-outside-")
    sub = day.sub(rec, refunds=(refund_record(rid, rec, "succeeded", t + 500, rprov),))
    day.lines.append(payment_line(sub, pid, prov, "succeeded", t + 100))
    day.lines.append(refund_line(sub, pid, prov, rid, rprov, "succeeded", t + 600))
    day.lines.append(
        refund_line(sub, pid, prov, None, outside, "succeeded", t + 700, Money(5000, "RUB"))
    )
    day.expected[prov] = "matched"
    day.expected[rprov] = "matched"
    day.expected[outside] = "refund_mismatch"
    # in flight within the SLA
    pid, prov = uid("pay-"), uid("prov-")
    late = w1 - HOUR // 2
    sub = day.sub(record(pid, "pending", late, prov))
    day.lines.append(payment_line(sub, pid, prov, "pending", late + 100))
    day.expected[prov] = "in_flight"
    return day


# ------------------------------------------------------------- runs in PostgreSQL
W0 = dt_to_ms(datetime(2026, 11, 24, tzinfo=UTC))
NOW = W0 + 30 * HOUR


async def new_run(
    conn: AsyncConnection[Any],
    *,
    window_start: int = W0,
    window_end: int = W0 + 24 * HOUR,
    **kw: Any,
) -> RunSpec:
    spec = await store.create_run(
        conn,
        run_id=str(uuid.uuid4()),
        window_start=window_start,
        window_end=window_end,
        source="provider_api",
        taken_at=kw.pop("taken_at", NOW),
        pending_sla_ms=2 * HOUR,
        **kw,
    )
    assert spec is not None
    return spec


async def record_run(
    conn: AsyncConnection[Any], items: list[MatchItem], partitions: int = 2, taken_at: int = NOW
) -> RunSpec:
    """A run that found ``items``, spread over ``partitions``, every partition done."""
    run = await new_run(conn, taken_at=taken_at)
    await store.start_feeding(conn, run.run_id, lines=len(items), partitions=partitions)
    found = [(i % partitions, it) for i, it in enumerate(items)]
    await store.record_items(conn, run.run_id, found, NOW)
    for p in range(partitions):
        assert not await store.finish_if_complete(conn, run.run_id, NOW)
        await store.mark_partition_done(
            conn, run.run_id, p, lines_sent=1, lines_matched=1, complete=True, items=0, at=NOW
        )
    assert await store.finish_if_complete(conn, run.run_id, NOW + 1000)  # finished now
    return run


def day_items() -> tuple[Day, list[MatchItem]]:
    day = make_day(W0)
    return day, reconcile(day.states, day.lines, day.cfg).items
