"""billing.events -> ClickHouse history (schemas/clickhouse.py), idempotent: the sink core.

Here, under the history's queries, because both writers use it: the history worker's consumer
(streams/history/sink.py) and ``billing rebuild-history`` (analytics/rebuild.py). Nothing here
reads Kafka or commits offsets; the callers do.

``rows_from_events`` is pure: raw event values in, rows per table out (tuples in
``schemas.clickhouse.COLUMNS`` order). ``write_batch`` inserts them, one block per table, each
under an ``insert_deduplication_token`` derived from the event ids of its rows: a batch
delivered again (a replay after a crash) is dropped by the engine, and rows that slip through
in differently cut batches are duplicates of the same ``event_id`` key, which the
ReplacingMergeTree tables merge away and the queries ignore (analytics/queries.py).

Fast path: each block goes to the engine as Arrow (``arrow_batch``: pyarrow converts the row
tuples in C; no per-value serialisation in Python), and a batch's blocks are stored two at a
time on connections of their own while this thread builds the next (``write_rows``). What is
left is the decoding and mapping above, and the engine's own work (sorting, compressing and
writing the parts, a few milliseconds per block whatever its size: batches of thousands).

Extending it (a new event): write a mapper returning ``(table, row)`` pairs, build the rows
with ``payment_row``/``refund_row``/``access_row``/``change_row`` and register it with
``@maps(TheEvent)``; an event without a mapper still gets its ``events`` row. So does an event
this build cannot decode (a newer producer), with its raw body: the history stays complete and
derived rows can be backfilled from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import msgspec
import pyarrow as pa

from billing.clickhouse import INSERT_CONNECTIONS, ClickHouse
from schemas.clickhouse import COLUMNS, EVENT_TABLES
from schemas.messages import (
    AccessShortened,
    AdminActionRejected,
    AutoRenewChanged,
    Event,
    PaymentCanceled,
    PaymentMethodChanged,
    PaymentMethodRejected,
    PaymentMethodSaved,
    PaymentOutcomeUnknown,
    PaymentPending,
    PaymentRedriven,
    PaymentRejected,
    PaymentRequest,
    PaymentRequested,
    PaymentSettleRejected,
    PaymentSettleRequested,
    PaymentSucceeded,
    PeriodAdjusted,
    PlanChangeRejected,
    PlanChangeScheduled,
    RefundFailed,
    RefundOutcomeUnknown,
    RefundRedriven,
    RefundRejected,
    RefundRequest,
    RefundRequested,
    RefundSucceeded,
    RenewalFailed,
    RenewalUpcoming,
    SubscriptionActivated,
    SubscriptionCanceled,
    SubscriptionExpired,
    SubscriptionPastDue,
    TrialStarted,
    decode_event,
)
from schemas.money import Money

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
TableRows = dict[str, list[Row]]
Mapper = Callable[[Any], Iterable[tuple[str, Row]]]

E = TypeVar("E", bound=Event)

MAPPERS: dict[type[Event], Mapper] = {}

# Events kept in ``events`` only, on purpose (nothing the analytics count).
EVENTS_ONLY: frozenset[type[Event]] = frozenset(
    {
        RenewalUpcoming,
        PlanChangeRejected,
        AdminActionRejected,
        # The wallet's changes: the payments rows already say which payment saved a method.
        PaymentMethodSaved,
        PaymentMethodChanged,
        PaymentMethodRejected,
    }
)


def maps(
    cls: type[E],
) -> Callable[[Callable[[E], Iterable[tuple[str, Row]]]], Callable[[E], Iterable[tuple[str, Row]]]]:
    """Register the mapper of an event class (its rows beyond the ``events`` row)."""

    def register(
        fn: Callable[[E], Iterable[tuple[str, Row]]],
    ) -> Callable[[E], Iterable[tuple[str, Row]]]:
        MAPPERS[cls] = fn
        return fn

    return register


# ------------------------------------------------------------------------------ row builders
def payment_row(
    e: Event,
    *,
    status: str,
    payment_id: str,
    command_id: str = "",
    kind: str = "",
    plan_id: str = "",
    amount: Money | None = None,
    period_months: int = 0,
    list_amount: Money | None = None,
    provider_payment_id: str | None = None,
    attempt: int = 0,
    reason: str = "",
    party: str | None = None,
) -> Row:
    """A ``payments`` row, in COLUMNS["payments"] order."""
    return (
        e.event_id,
        payment_id,
        e.subscription_id,
        e.user_id,
        status,
        e.occurred_at,
        e.version,
        command_id,
        kind,
        plan_id,
        amount.amount_minor if amount is not None else 0,
        amount.currency if amount is not None else "",
        period_months,
        list_amount.amount_minor if list_amount is not None else 0,
        provider_payment_id or "",
        attempt,
        reason,
        party or "",
    )


def refund_row(
    e: Event,
    *,
    status: str,
    refund_id: str,
    payment_id: str,
    command_id: str = "",
    amount: Money | None = None,
    provider_refund_id: str | None = None,
    attempt: int = 0,
    reason: str = "",
    actor: str = "",
    fully_refunded: bool = False,
) -> Row:
    """A ``refunds`` row, in COLUMNS["refunds"] order (for the refund events' mappers)."""
    return (
        e.event_id,
        refund_id,
        payment_id,
        e.subscription_id,
        e.user_id,
        status,
        e.occurred_at,
        e.version,
        command_id,
        amount.amount_minor if amount is not None else 0,
        amount.currency if amount is not None else "",
        provider_refund_id or "",
        attempt,
        reason,
        actor,
        int(fully_refunded),
    )


def access_row(
    e: Event,
    *,
    change: str,
    access_from: int,
    access_until: int,
    payment_id: str = "",
    plan_id: str | None = None,
    period_start: int = 0,
    period_end: int = 0,
    actor: str = "",
    reason: str = "",
) -> Row:
    """A ``subscription_periods`` row (the access window after ``e``), in COLUMNS order."""
    return (
        e.event_id,
        e.subscription_id,
        e.user_id,
        e.version,
        e.occurred_at,
        change,
        payment_id,
        plan_id or "",
        period_start,
        period_end,
        access_from,
        access_until,
        actor,
        reason,
    )


def change_row(
    e: Event,
    *,
    change: str,
    payment_id: str = "",
    plan_id: str = "",
    reason: str = "",
    hard: bool = False,
    attempt: int = 0,
    until: int | None = None,
    actor: str = "",
) -> Row:
    """A ``subscription_changes`` row, in COLUMNS["subscription_changes"] order."""
    return (
        e.event_id,
        e.subscription_id,
        e.user_id,
        change,
        e.occurred_at,
        e.version,
        payment_id,
        plan_id,
        reason,
        int(hard),
        attempt,
        until or 0,
        actor,
    )


# ---------------------------------------------------------------------------------- mappers
def _payment_request_row(
    e: Event,
    r: PaymentRequest,
    status: str,
    provider_payment_id: str | None = None,
    attempt: int = 0,
) -> Row:
    """The ``payments`` row of a payment's request: asked for, or driven again."""
    return payment_row(
        e,
        status=status,
        payment_id=r.payment_id,
        command_id=r.command_id,
        kind=r.kind,
        plan_id=r.plan_id,
        amount=r.amount,
        period_months=r.period_months,
        list_amount=r.plan_amount or r.amount,
        provider_payment_id=provider_payment_id,
        attempt=attempt,
    )


@maps(PaymentRequested)
def _payment_requested(e: PaymentRequested) -> Iterable[tuple[str, Row]]:
    return (("payments", _payment_request_row(e, e.request, "requested")),)


@maps(PaymentRedriven)
def _payment_redriven(e: PaymentRedriven) -> Iterable[tuple[str, Row]]:
    row = _payment_request_row(e, e.request, "redriven", e.provider_payment_id, e.attempt)
    return (("payments", row),)


@maps(PaymentRejected)
def _payment_rejected(e: PaymentRejected) -> Iterable[tuple[str, Row]]:
    return (
        (
            "payments",
            payment_row(
                e,
                status="rejected",
                payment_id=e.payment_id,
                command_id=e.command_id,
                reason=e.reason,
            ),
        ),
    )


@maps(PaymentPending)
def _payment_pending(e: PaymentPending) -> Iterable[tuple[str, Row]]:
    return (
        (
            "payments",
            payment_row(
                e,
                status=e.status,
                payment_id=e.payment_id,
                provider_payment_id=e.provider_payment_id,
            ),
        ),
    )


@maps(PaymentSettleRequested)
def _payment_settle_requested(e: PaymentSettleRequested) -> Iterable[tuple[str, Row]]:
    # Two-stage payments: the capture (or release) of a held payment was asked for.
    return (
        (
            "payments",
            payment_row(
                e,
                status=f"{e.action}_requested",
                payment_id=e.payment_id,
                command_id=e.command_id,
                amount=e.amount,
                provider_payment_id=e.provider_payment_id,
                attempt=e.attempt,
                reason=e.reason,
                party=e.actor,
            ),
        ),
    )


@maps(PaymentSettleRejected)
def _payment_settle_rejected(e: PaymentSettleRejected) -> Iterable[tuple[str, Row]]:
    return (
        (
            "payments",
            payment_row(
                e,
                status="settle_rejected",
                payment_id=e.payment_id,
                command_id=e.command_id,
                reason=e.reason,
            ),
        ),
    )


@maps(PaymentOutcomeUnknown)
def _payment_unknown(e: PaymentOutcomeUnknown) -> Iterable[tuple[str, Row]]:
    return (
        (
            "payments",
            payment_row(
                e, status="unknown", payment_id=e.payment_id, attempt=e.attempt, reason=e.error
            ),
        ),
    )


@maps(PaymentSucceeded)
def _payment_succeeded(e: PaymentSucceeded) -> Iterable[tuple[str, Row]]:
    return (
        (
            "payments",
            payment_row(
                e,
                status="succeeded",
                payment_id=e.payment_id,
                command_id=e.command_id,
                amount=e.amount,
                provider_payment_id=e.provider_payment_id,
            ),
        ),
    )


@maps(PaymentCanceled)
def _payment_canceled(e: PaymentCanceled) -> Iterable[tuple[str, Row]]:
    return (
        (
            "payments",
            payment_row(
                e,
                status="canceled",
                payment_id=e.payment_id,
                command_id=e.command_id,
                provider_payment_id=e.provider_payment_id,
                reason=e.reason,
                party=e.party,
            ),
        ),
    )


@maps(SubscriptionActivated)
def _subscription_activated(e: SubscriptionActivated) -> Iterable[tuple[str, Row]]:
    # Stacked: the running period already gives access, the new one only moves its end.
    return (
        (
            "subscription_periods",
            access_row(
                e,
                change="stacked" if e.extended else "activated",
                access_from=e.occurred_at if e.extended else e.period_start,
                access_until=e.period_end,
                payment_id=e.payment_id,
                plan_id=e.plan_id,
                period_start=e.period_start,
                period_end=e.period_end,
            ),
        ),
    )


@maps(AccessShortened)
def _access_shortened(e: AccessShortened) -> Iterable[tuple[str, Row]]:
    return (
        (
            "subscription_periods",
            access_row(
                e,
                change="shortened",
                access_from=e.period_start,
                access_until=e.period_end,
                payment_id=e.payment_id,
                plan_id=e.plan_id,
                period_start=e.period_start,
                period_end=e.period_end,
                reason=e.reason,
            ),
        ),
    )


@maps(TrialStarted)
def _trial_started(e: TrialStarted) -> Iterable[tuple[str, Row]]:
    # A free trial's access window (change "trial"): trials and their conversion are counted
    # from these rows and the first renewal payment after them.
    return (
        (
            "subscription_periods",
            access_row(
                e,
                change="trial",
                access_from=e.period_start,
                access_until=e.period_end,
                payment_id=e.payment_id,
                plan_id=e.plan_id,
                period_start=e.period_start,
                period_end=e.period_end,
            ),
        ),
    )


@maps(PeriodAdjusted)
def _period_adjusted(e: PeriodAdjusted) -> Iterable[tuple[str, Row]]:
    return (
        (
            "subscription_periods",
            access_row(
                e,
                change="extended" if e.action == "extend" else "granted",
                access_from=e.period_start,
                access_until=e.period_end,
                plan_id=e.plan_id,
                period_start=e.period_start,
                period_end=e.period_end,
                actor=e.actor,
                reason=e.reason,
            ),
        ),
    )


def _refund_request_row(
    e: Event, r: RefundRequest, status: str, provider_refund_id: str | None = None, attempt: int = 0
) -> Row:
    """The ``refunds`` row of a refund's request: asked for, or driven again."""
    return refund_row(
        e,
        status=status,
        refund_id=r.refund_id,
        payment_id=r.payment_id,
        command_id=r.command_id,
        amount=r.amount,
        provider_refund_id=provider_refund_id,
        attempt=attempt,
        reason=r.reason,
        actor=r.actor,
    )


@maps(RefundRequested)
def _refund_requested(e: RefundRequested) -> Iterable[tuple[str, Row]]:
    return (("refunds", _refund_request_row(e, e.request, "requested")),)


@maps(RefundRedriven)
def _refund_redriven(e: RefundRedriven) -> Iterable[tuple[str, Row]]:
    row = _refund_request_row(e, e.request, "redriven", e.provider_refund_id, e.attempt)
    return (("refunds", row),)


@maps(RefundRejected)
def _refund_rejected(e: RefundRejected) -> Iterable[tuple[str, Row]]:
    return (
        (
            "refunds",
            refund_row(
                e,
                status="rejected",
                refund_id=e.refund_id,
                payment_id=e.payment_id,
                command_id=e.command_id,
                reason=e.reason,
            ),
        ),
    )


@maps(RefundOutcomeUnknown)
def _refund_unknown(e: RefundOutcomeUnknown) -> Iterable[tuple[str, Row]]:
    return (
        (
            "refunds",
            refund_row(
                e,
                status="unknown",
                refund_id=e.refund_id,
                payment_id="",
                attempt=e.attempt,
                reason=e.error,
            ),
        ),
    )


@maps(RefundSucceeded)
def _refund_succeeded(e: RefundSucceeded) -> Iterable[tuple[str, Row]]:
    return (
        (
            "refunds",
            refund_row(
                e,
                status="succeeded",
                refund_id=e.refund_id,
                payment_id=e.payment_id,
                command_id=e.command_id,
                amount=e.amount,
                provider_refund_id=e.provider_refund_id,
                fully_refunded=e.fully_refunded,
            ),
        ),
    )


@maps(RefundFailed)
def _refund_failed(e: RefundFailed) -> Iterable[tuple[str, Row]]:
    return (
        (
            "refunds",
            refund_row(
                e,
                status="canceled",
                refund_id=e.refund_id,
                payment_id=e.payment_id,
                command_id=e.command_id,
                provider_refund_id=e.provider_refund_id,
                reason=e.reason,
            ),
        ),
    )


@maps(RenewalFailed)
def _renewal_failed(e: RenewalFailed) -> Iterable[tuple[str, Row]]:
    return (
        (
            "subscription_changes",
            change_row(
                e,
                change="renewal_failed",
                payment_id=e.payment_id,
                reason=e.reason,
                hard=e.hard,
                attempt=e.attempt,
                until=e.next_retry_at,
            ),
        ),
    )


@maps(SubscriptionPastDue)
def _past_due(e: SubscriptionPastDue) -> Iterable[tuple[str, Row]]:
    return (("subscription_changes", change_row(e, change="past_due", until=e.period_end)),)


@maps(SubscriptionExpired)
def _expired(e: SubscriptionExpired) -> Iterable[tuple[str, Row]]:
    return (
        (
            "subscription_changes",
            change_row(e, change="expired", reason=e.reason, until=e.period_end),
        ),
    )


@maps(SubscriptionCanceled)
def _canceled(e: SubscriptionCanceled) -> Iterable[tuple[str, Row]]:
    return (
        (
            "subscription_periods",
            access_row(
                e,
                change="canceled",
                access_from=e.access_until,
                access_until=e.access_until,
                payment_id=e.payment_id,
                actor=e.actor,
                reason=e.reason,
            ),
        ),
        (
            "subscription_changes",
            change_row(
                e,
                change="canceled",
                payment_id=e.payment_id,
                reason=e.reason,
                until=e.access_until,
                actor=e.actor,
            ),
        ),
    )


@maps(PlanChangeScheduled)
def _plan_change_scheduled(e: PlanChangeScheduled) -> Iterable[tuple[str, Row]]:
    return (
        (
            "subscription_changes",
            change_row(
                e,
                change="plan_change_scheduled",
                plan_id=e.plan_id,
                until=e.effective_at,
            ),
        ),
    )


@maps(AutoRenewChanged)
def _auto_renew(e: AutoRenewChanged) -> Iterable[tuple[str, Row]]:
    return (
        (
            "subscription_changes",
            change_row(
                e,
                change="auto_renew_on" if e.enabled else "auto_renew_off",
                reason=e.reason,
                actor=e.actor,
            ),
        ),
    )


# ----------------------------------------------------------------------------- batch -> rows
class _Envelope(msgspec.Struct):
    """The common fields of any event, for a value this build cannot decode in full."""

    type: str
    event_id: str
    subscription_id: str = ""
    user_id: str = ""
    version: int = 0
    occurred_at: int = 0
    causation_id: str = ""
    payment_id: str = ""
    refund_id: str = ""


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def _subject_ids(event: Event) -> tuple[str, str]:
    """(payment_id, refund_id) an event is about, '' when none."""
    get = _SUBJECT_GETTERS.get(type(event))
    if get is None:
        get = _SUBJECT_GETTERS[type(event)] = _subject_getter(type(event))
    return get(event)


def _subject_getter(cls: type[Event]) -> Callable[[Any], tuple[str, str]]:
    """Which fields name the payment and the refund, looked up once per class (a getattr
    that misses costs an exception per event)."""
    fields = set(cls.__struct_fields__)
    request = msgspec.inspect.type_info(cls)
    request_fields: set[str] = set()
    for f in getattr(request, "fields", ()):
        if f.name == "request" and isinstance(f.type, msgspec.inspect.StructType):
            request_fields = {sub.name for sub in f.type.fields}
    pay = "payment_id" in fields
    ref = "refund_id" in fields
    req_pay = not pay and "payment_id" in request_fields
    req_ref = not ref and "refund_id" in request_fields

    def get(e: Any) -> tuple[str, str]:
        payment_id = e.payment_id if pay else e.request.payment_id if req_pay else ""
        refund_id = e.refund_id if ref else e.request.refund_id if req_ref else ""
        return payment_id or "", refund_id or ""

    return get


_SUBJECT_GETTERS: dict[type[Event], Callable[[Any], tuple[str, str]]] = {}


def rows_from_events(values: Iterable[bytes]) -> TableRows:
    """Rows per table (EVENT_TABLES; empty lists included) for a batch of raw event values.

    An event id seen twice in the batch yields its rows once. A value that is not an event at
    all is logged and skipped (it cannot be keyed).
    """
    tables: TableRows = {table: [] for table in EVENT_TABLES}
    events = tables["events"]
    seen: set[str] = set()
    for raw in values:
        try:
            event = decode_event(raw)
        except msgspec.DecodeError:
            _unknown_event(raw, events, seen)
            continue
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        events.append(_event_row(event, type(event).__name__, *_subject_ids(event), raw))
        mapper = MAPPERS.get(type(event))
        if mapper is not None:
            for table, row in mapper(event):
                tables[table].append(row)
    return tables


def _unknown_event(raw: bytes, events: list[Row], seen: set[str]) -> None:
    try:
        env = _envelope_decoder.decode(raw)
    except msgspec.DecodeError:
        log.error("clickhouse sink: skipping a value that is not an event: %.200r", raw)
        return
    log.warning("clickhouse sink: %s %s kept in events only (unknown here)", env.type, env.event_id)
    if env.event_id in seen:
        return
    seen.add(env.event_id)
    events.append(_event_row(env, env.type, env.payment_id, env.refund_id, raw))


def _event_row(
    e: Event | _Envelope, type_: str, payment_id: str, refund_id: str, raw: bytes
) -> Row:
    """An ``events`` row, in COLUMNS["events"] order (a decoded event or just its envelope)."""
    return (
        e.event_id,
        type_,
        e.subscription_id,
        e.user_id,
        e.version,
        e.occurred_at,
        e.causation_id,
        payment_id,
        refund_id,
        raw,
    )


def dedup_token(table: str, rows: Sequence[Row]) -> str:
    """The insert deduplication token of a block: the table and the set of its rows' keys
    (first column: the event id), so the same events give the same token in any order."""
    keys = sorted([str(row[0]) for row in rows])
    keys.append("")  # every key ends with a newline
    digest = hashlib.blake2b("\n".join(keys).encode(), digest_size=16)
    return f"{table}:{len(rows)}:{digest.hexdigest()}"


# ------------------------------------------------------------------------------ rows -> Arrow
_TIMESTAMP = pa.timestamp("ms", tz="UTC")  # epoch milliseconds, as the rows hold them

# Arrow type of each event-table column that is not a string (the engine converts on insert;
# an integration test checks these against the tables' ClickHouse types).
_ARROW_TYPES: dict[str, pa.DataType] = {
    "occurred_at": _TIMESTAMP,
    "period_start": _TIMESTAMP,
    "period_end": _TIMESTAMP,
    "access_from": _TIMESTAMP,
    "access_until": _TIMESTAMP,
    "until": _TIMESTAMP,
    "version": pa.uint64(),
    "amount_minor": pa.int64(),
    "list_amount_minor": pa.int64(),
    "period_months": pa.uint16(),
    "attempt": pa.uint32(),
    "fully_refunded": pa.uint8(),
    "hard": pa.uint8(),
    "body": pa.binary(),  # the event's bytes as they came
}

ARROW_SCHEMAS: dict[str, pa.Schema] = {
    table: pa.schema(
        [pa.field(c, _ARROW_TYPES.get(c, pa.string()), nullable=False) for c in COLUMNS[table]]
    )
    for table in EVENT_TABLES
}
ARROW_STRUCTS: dict[str, pa.StructType] = {t: pa.struct(s) for t, s in ARROW_SCHEMAS.items()}


def arrow_batch(table: str, rows: Sequence[Row]) -> pa.RecordBatch:
    """One table's rows as an Arrow record batch (ARROW_SCHEMAS). pyarrow converts the
    tuples itself (as a struct array, then split into columns): no per-value Python work."""
    return pa.RecordBatch.from_struct_array(pa.array(rows, type=ARROW_STRUCTS[table]))


def write_rows(client: ClickHouse, tables: TableRows) -> dict[str, int]:
    """Insert each non-empty table's rows as one deduplicated block (synchronous).

    Built here, stored by helper threads (INSERT_CONNECTIONS at a time, each on a connection
    of its own; the engine releases the GIL): the largest block first, so that the engine
    works on it while this thread builds the others. The blocks of a batch land in no
    particular order; the batch is written when this returns, and a failed one is written
    again whole (the tokens drop what had landed).
    """
    written: dict[str, int] = {}
    todo = sorted((t for t in EVENT_TABLES if tables.get(t)), key=lambda t: -len(tables[t]))
    with ThreadPoolExecutor(INSERT_CONNECTIONS, thread_name_prefix="clickhouse-insert") as pool:
        stored: list[Future[None]] = []
        for table in todo:
            rows = tables[table]
            data, token = arrow_batch(table, rows), dedup_token(table, rows)
            stored.append(pool.submit(client.insert_arrow, table, data, token))
            written[table] = len(rows)
        for future in stored:
            future.result()
    return written


def write_batch_sync(client: ClickHouse, batch: Sequence[bytes]) -> dict[str, int]:
    return write_rows(client, rows_from_events(batch))


async def write_batch(client: ClickHouse, batch: Sequence[bytes]) -> dict[str, int]:
    """Map and insert a batch of raw billing.events values; returns rows written per table.

    Runs in a thread: mapping is CPU work and the engine call blocks (chdb releases the GIL).
    Raises on a store error; the caller retries the same batch (the tokens make that safe)
    before it lets the offsets be committed.
    """
    if not batch:
        return {}
    return await asyncio.to_thread(write_batch_sync, client, batch)
