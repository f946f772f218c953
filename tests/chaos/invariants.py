"""What must hold after the chaos, checked against independent sources.

:func:`collect` takes a :class:`Snapshot` of every store (the provider emulator, the ledger's
changelog, ``billing.events``, PostgreSQL); :func:`check` is pure and returns the list of
problems, so it can be polled until the system settles and is itself tested on corrupted
snapshots (tests/chaos/test_invariants.py). The expected outcome of every payment is known up
front (:class:`Expected`), so no check can pass vacuously: counts are compared exactly.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import httpx
import msgspec
import psycopg

from schemas.messages import AnyEvent, SubscriptionActivated, decode_event
from schemas.periods import period_end_ms
from schemas.state import SubscriptionState, decode_state
from schemas.topics import EVENTS
from streams.ledger.machine import evolve

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_PROBLEMS_SHOWN = 25


def to_ms(value: datetime | None) -> int | None:
    """Exact epoch milliseconds of a PostgreSQL timestamptz (integer arithmetic, no float)."""
    if value is None:
        return None
    return (value - _EPOCH) // timedelta(milliseconds=1)


# ------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Expected:
    """One payment of the run and the outcome it must reach."""

    user_id: str
    idem_key: str
    subscription_id: str
    command_id: str
    payment_id: str
    plan_id: str
    period_months: int
    amount_minor: int
    decline: bool  # the "user" declines it at the provider
    via: Literal["api", "dropped"]  # dropped: intake without publish (outbox row only)
    resend: bool = False  # the client retries the same request (same key) through the API

    @property
    def outcome(self) -> Literal["succeeded", "canceled"]:
        return "canceled" if self.decline else "succeeded"


@dataclass(frozen=True)
class SubRow:
    user_id: str
    status: str
    plan_id: str | None
    period_start: int | None
    period_end: int | None


@dataclass(frozen=True)
class PayRow:
    subscription_id: str
    status: str
    provider_payment_id: str | None
    plan_id: str
    amount_minor: int
    period_start: int | None
    period_end: int | None


@dataclass(frozen=True)
class ProviderRow:
    provider_payment_id: str
    status: str
    amount_minor: int


@dataclass
class Snapshot:
    outbox: dict[str, str] = field(default_factory=dict)  # command id -> status
    pg_subscriptions: dict[str, SubRow] = field(default_factory=dict)
    pg_payments: dict[str, PayRow] = field(default_factory=dict)
    pg_versions: dict[str, int] = field(default_factory=dict)
    pg_event_ids: set[str] = field(default_factory=set)
    provider_by_payment_id: dict[str, int] = field(default_factory=dict)  # emulator stats
    provider_payments_created: int = 0
    provider_objects: dict[str, list[ProviderRow]] = field(default_factory=dict)  # by our id
    ledger: dict[str, SubscriptionState] = field(default_factory=dict)  # changelog, last value
    events: list[AnyEvent] = field(default_factory=list)  # billing.events, every record
    changelog_records: list[Record] = field(default_factory=list)  # for the evidence dump
    event_records: list[Record] = field(default_factory=list)


# ----------------------------------------------------------------------------- analysis
@dataclass
class EventLog:
    records: int
    distinct: dict[str, AnyEvent]  # event id -> event
    by_subscription: dict[str, dict[int, list[AnyEvent]]]  # sub -> version -> distinct events
    redelivered: int  # records whose event id was seen before (replays: harmless)
    mismatched_ids: list[str]  # one event id, two different events: never harmless


def analyse_events(events: list[AnyEvent]) -> EventLog:
    distinct: dict[str, AnyEvent] = {}
    mismatched: list[str] = []
    redelivered = 0
    for e in events:
        seen = distinct.get(e.event_id)
        if seen is None:
            distinct[e.event_id] = e
            continue
        redelivered += 1
        if seen != e:
            mismatched.append(e.event_id)
    by_sub: dict[str, dict[int, list[AnyEvent]]] = defaultdict(lambda: defaultdict(list))
    for e in distinct.values():
        by_sub[e.subscription_id][e.version].append(e)
    return EventLog(len(events), distinct, by_sub, redelivered, mismatched)


def fold(subscription_id: str, user_id: str, events: list[AnyEvent]) -> SubscriptionState:
    state = SubscriptionState(subscription_id=subscription_id, user_id=user_id)
    for e in sorted(events, key=lambda x: x.version):
        state = evolve(state, e)
    return state


def _without_recent(state: SubscriptionState) -> SubscriptionState:
    """The state less the transport memory (replay window, answered command ids), which no
    event carries."""
    return msgspec.structs.replace(state, recent={}, answered=[])


def check(expected: list[Expected], snap: Snapshot) -> list[str]:
    """Every invariant; an empty list means all hold."""
    problems: list[str] = []
    add = problems.append
    by_payment = {e.payment_id: e for e in expected}
    by_sub = {e.subscription_id: e for e in expected}
    if len(by_payment) != len(expected) or len(by_sub) != len(expected):
        add("the run itself is malformed: payment or subscription ids repeat")

    # 1. Every accepted command is done (invariant 3, no command pending at the end).
    commands = {e.command_id for e in expected}
    if set(snap.outbox) != commands:
        add(
            f"outbox holds {len(snap.outbox)} commands, expected {len(commands)}"
            f" (missing {len(commands - set(snap.outbox))},"
            f" unexpected {len(set(snap.outbox) - commands)})"
        )
    not_done = Counter(s for c, s in snap.outbox.items() if s != "done")
    if not_done:
        add(f"commands not done: {dict(not_done)}")

    # 2. Exactly one provider charge per payment, counted by the provider (invariant 1).
    if set(snap.provider_by_payment_id) != set(by_payment):
        add(
            f"provider saw creates for {len(snap.provider_by_payment_id)} payment ids,"
            f" expected {len(by_payment)}"
            f" (missing {len(set(by_payment) - set(snap.provider_by_payment_id))})"
        )
    for pid, n in snap.provider_by_payment_id.items():
        if n != 1:
            add(f"payment {pid}: the provider created {n} payments for it")
    if snap.provider_payments_created != len(expected):
        add(f"provider created {snap.provider_payments_created} payments, expected {len(expected)}")
    for pid, e in by_payment.items():
        objs = snap.provider_objects.get(pid, [])
        if len(objs) != 1:
            add(f"payment {pid}: {len(objs)} provider objects carry it")
            continue
        (obj,) = objs
        if obj.status != e.outcome:
            add(f"payment {pid}: provider status {obj.status}, expected {e.outcome}")
        if obj.amount_minor != e.amount_minor:
            add(f"payment {pid}: provider amount {obj.amount_minor}, plan {e.amount_minor}")

    # 3. The ledger (last value of each key in the changelog) reached the expected outcome and
    # agrees with the provider.
    if set(snap.ledger) != set(by_sub):
        add(f"ledger holds {len(snap.ledger)} subscriptions, expected {len(by_sub)}")
    for sub, e in by_sub.items():
        st = snap.ledger.get(sub)
        if st is None:
            continue
        if set(st.payments) != {e.payment_id}:
            add(f"ledger {sub}: payments {sorted(st.payments)}, expected [{e.payment_id}]")
            continue
        rec = st.payments[e.payment_id]
        if rec.status != e.outcome:
            add(f"ledger {sub}: payment {rec.status}, expected {e.outcome}")
        objs = snap.provider_objects.get(e.payment_id, [])
        if len(objs) == 1 and rec.provider_payment_id != objs[0].provider_payment_id:
            add(
                f"ledger {sub}: provider id {rec.provider_payment_id},"
                f" provider has {objs[0].provider_payment_id}"
            )
        want_status = "active" if e.outcome == "succeeded" else "inactive"
        if st.status != want_status:
            add(f"ledger {sub}: subscription {st.status}, expected {want_status}")
        if e.outcome == "succeeded":
            if st.plan_id != e.plan_id or st.period_start is None or st.period_end is None:
                add(f"ledger {sub}: plan {st.plan_id} period {st.period_start}..{st.period_end}")
            elif st.period_end != period_end_ms(st.period_start, e.period_months):
                add(f"ledger {sub}: period end is not {e.period_months} months after start")
            elif (rec.period_start, rec.period_end) != (st.period_start, st.period_end):
                add(f"ledger {sub}: payment period differs from the subscription's")

    # 4. The read model equals the ledger state.
    if len(snap.pg_subscriptions) != len(snap.ledger):
        add(f"read model has {len(snap.pg_subscriptions)} subscriptions, ledger {len(snap.ledger)}")
    if len(snap.pg_payments) != sum(len(s.payments) for s in snap.ledger.values()):
        add(f"read model has {len(snap.pg_payments)} payments, ledger a different count")
    for sub, st in snap.ledger.items():
        row = snap.pg_subscriptions.get(sub)
        if row is None:
            add(f"read model lacks subscription {sub}")
            continue
        mine = (st.user_id, st.status, st.plan_id, st.period_start, st.period_end)
        theirs = (row.user_id, row.status, row.plan_id, row.period_start, row.period_end)
        if mine != theirs:
            add(f"subscription {sub}: ledger {mine} != read model {theirs}")
        if snap.pg_versions.get(sub) != st.version:
            projected = snap.pg_versions.get(sub)
            add(f"subscription {sub}: ledger version {st.version}, projected {projected}")
        for pid, rec in st.payments.items():
            prow = snap.pg_payments.get(pid)
            if prow is None:
                add(f"read model lacks payment {pid}")
                continue
            mine_p = (
                sub,
                rec.status,
                rec.provider_payment_id,
                rec.plan_id,
                rec.amount.amount_minor,
                rec.period_start,
                rec.period_end,
            )
            theirs_p = (
                prow.subscription_id,
                prow.status,
                prow.provider_payment_id,
                prow.plan_id,
                prow.amount_minor,
                prow.period_start,
                prow.period_end,
            )
            if mine_p != theirs_p:
                add(f"payment {pid}: ledger {mine_p} != read model {theirs_p}")

    # 5. The event log: one event per (subscription, version), ids never reused for other
    # content, versions without gaps, the log folds to the ledger state, and no subscription
    # activated twice for one period (one activation per succeeded payment, none otherwise).
    log = analyse_events(snap.events)
    for eid in sorted(set(log.mismatched_ids))[:MAX_PROBLEMS_SHOWN]:
        add(f"event id {eid} was emitted with two different contents")
    for sub, versions in log.by_subscription.items():
        forks = {v: [e.event_id for e in es] for v, es in versions.items() if len(es) > 1}
        if forks:
            add(f"subscription {sub}: different events share a version: {forks}")
    for sub, st in snap.ledger.items():
        versions = log.by_subscription.get(sub, {})
        if sorted(versions) != list(range(1, st.version + 1)):
            missing = sorted(set(range(1, st.version + 1)) - set(versions))
            beyond = sorted(v for v in versions if v > st.version)
            add(
                f"subscription {sub}: billing.events versions are not 1..{st.version}"
                f" (the ledger's): missing {missing[:8]}, beyond the changelog {beyond[:8]}"
            )
            continue
        folded = fold(sub, st.user_id, [es[0] for es in versions.values()])
        if _without_recent(folded) != _without_recent(st):
            add(f"subscription {sub}: its events do not fold to the ledger state")
    activations: dict[str, Counter[tuple[int, int]]] = defaultdict(Counter)
    for ev in log.distinct.values():
        if isinstance(ev, SubscriptionActivated):
            activations[ev.subscription_id][(ev.period_start, ev.period_end)] += 1
    for sub, e in by_sub.items():
        periods = activations.get(sub, Counter())
        twice = {p: n for p, n in periods.items() if n > 1}
        if twice:
            add(f"subscription {sub} activated more than once for one period: {twice}")
        want = 1 if e.outcome == "succeeded" else 0
        if sum(periods.values()) != want:
            add(f"subscription {sub}: {sum(periods.values())} activations, expected {want}")
    for sub in set(activations) - set(by_sub):
        add(f"activation of a subscription nobody paid for: {sub}")

    # 6. The audit trail in PostgreSQL holds exactly the events of the log.
    kafka_ids = set(log.distinct)
    if snap.pg_event_ids != kafka_ids:
        add(
            f"subscription_events has {len(snap.pg_event_ids)} events, billing.events"
            f" {len(kafka_ids)} distinct (only in PG {len(snap.pg_event_ids - kafka_ids)},"
            f" only in Kafka {len(kafka_ids - snap.pg_event_ids)})"
        )
        for eid in sorted(kafka_ids - snap.pg_event_ids)[:MAX_PROBLEMS_SHOWN]:
            ev = log.distinct[eid]
            add(
                f"event {eid} ({type(ev).__name__} v{ev.version} of {ev.subscription_id})"
                " is in billing.events but was never projected"
            )
    return problems


def summary(problems: list[str]) -> str:
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = len(problems) - len(shown)
    return "\n".join(shown) + (f"\n... and {more} more" if more > 0 else "")


# ------------------------------------------------------------------------------ collect
@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


async def read_topic(bootstrap: str, topic: str) -> list[Record]:
    """Every record of a topic, partition by partition in offset order, up to the end
    offsets taken at the start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        (desc,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if desc["error_code"] != 0 or not desc["partitions"]:
        raise AssertionError(f"topic {topic} cannot be read: {desc}")
    parts = [p["partition"] for p in desc["partitions"]]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end: dict[Any, int] = await consumer.end_offsets(tps)
        out: dict[int, list[Record]] = {tp.partition: [] for tp in tps}
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=2000)
            for tp, records in batches.items():
                for r in records:
                    if r.offset < end[tp]:
                        out[tp.partition].append(Record(tp.partition, r.offset, r.key, r.value))
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return [rec for p in sorted(out) for rec in out[p]]
    finally:
        await consumer.stop()


def last_values(records: list[Record]) -> dict[str, SubscriptionState]:
    """The table as a restore would rebuild it: the last value of each key."""
    latest: dict[bytes, bytes | None] = {}
    for r in records:
        if r.key is not None:
            latest[r.key] = r.value
    return {k.decode(): decode_state(v) for k, v in latest.items() if v is not None}


def _amount_minor(amount: dict[str, Any]) -> int:
    return int(Decimal(str(amount["value"])) * 100)


async def read_provider(
    emulator_url: str,
) -> tuple[dict[str, int], int, dict[str, list[ProviderRow]]]:
    async with httpx.AsyncClient(base_url=f"{emulator_url}/__emulator", timeout=60) as http:
        stats = (await http.get("/stats")).raise_for_status().json()
        objects = (await http.get("/objects")).raise_for_status().json()
    rows: dict[str, list[ProviderRow]] = defaultdict(list)
    for p in objects["payments"]:
        ours = (p.get("metadata") or {}).get("payment_id")
        if ours:
            rows[ours].append(ProviderRow(p["id"], p["status"], _amount_minor(p["amount"])))
    return dict(stats["by_payment_id"]), int(stats["payments_created"]), dict(rows)


async def read_postgres(dsn: str, snap: Snapshot) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT command_id::text, status FROM command_outbox")
        snap.outbox = {r[0]: r[1] for r in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT subscription_id::text, user_id, status, plan_id, period_start, period_end"
            " FROM subscriptions"
        )
        snap.pg_subscriptions = {
            r[0]: SubRow(r[1], r[2], r[3], to_ms(r[4]), to_ms(r[5])) for r in await cur.fetchall()
        }
        cur = await conn.execute(
            "SELECT payment_id::text, subscription_id::text, status, provider_payment_id,"
            " plan_id, amount_minor, period_start, period_end FROM payments"
        )
        snap.pg_payments = {
            r[0]: PayRow(r[1], r[2], r[3], r[4], int(r[5]), to_ms(r[6]), to_ms(r[7]))
            for r in await cur.fetchall()
        }
        cur = await conn.execute("SELECT subscription_id::text, version FROM projection_versions")
        snap.pg_versions = {r[0]: int(r[1]) for r in await cur.fetchall()}
        cur = await conn.execute("SELECT event_id::text FROM subscription_events")
        snap.pg_event_ids = {r[0] for r in await cur.fetchall()}


async def collect(*, dsn: str, bootstrap: str, changelog: str, emulator_url: str) -> Snapshot:
    snap = Snapshot()
    await read_postgres(dsn, snap)
    (
        snap.provider_by_payment_id,
        snap.provider_payments_created,
        snap.provider_objects,
    ) = await read_provider(emulator_url)
    snap.changelog_records = await read_topic(bootstrap, changelog)
    snap.ledger = last_values(snap.changelog_records)
    snap.event_records = [r for r in await read_topic(bootstrap, EVENTS) if r.value is not None]
    snap.events = [decode_event(r.value) for r in snap.event_records if r.value is not None]
    return snap


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def evidence(snap: Snapshot, problems: list[str], limit: int = 6) -> str:
    """For the first subscriptions named in the problems: every changelog record of the key
    and every billing.events record, with partition and offset, in log order."""
    subs: list[str] = []
    known = set(snap.ledger) | {e.subscription_id for e in snap.events}
    for p in problems:
        for u in _UUID.findall(p):
            if u in known and u not in subs:
                subs.append(u)
    out: list[str] = []
    for sub in subs[:limit]:
        out.append(f"=== subscription {sub}")
        out.append("--- changelog (partition@offset version status payments recent-sources)")
        for r in snap.changelog_records:
            if r.key == sub.encode() and r.value is not None:
                st = decode_state(r.value)
                pays = {k: v.status for k, v in st.payments.items()}
                out.append(
                    f"{r.partition}@{r.offset} v{st.version} {st.status} {pays} {list(st.recent)}"
                )
        out.append("--- billing.events (partition@offset raw)")
        for r in snap.event_records:
            if r.key == sub.encode() and r.value is not None:
                out.append(f"{r.partition}@{r.offset} {r.value.decode()}")
    return "\n".join(out)
