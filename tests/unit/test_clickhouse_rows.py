"""The ClickHouse sink's pure half: events -> rows per table, dedup tokens, the DDL contract, the
store target resolution and the typed query results (no engine here; see
tests/integration/test_clickhouse.py)."""

from __future__ import annotations

import logging
import re
import typing
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from pydantic import SecretStr

from analytics import queries as q
from analytics.ingest import EVENTS_ONLY, MAPPERS, dedup_token, rows_from_events
from analytics.synthetic import synthetic_history
from billing.clickhouse import _resolve, embedded_dir
from schemas.clickhouse import (
    COLUMNS,
    DEFAULT_DATABASE,
    EVENT_TABLES,
    MIGRATIONS,
)
from schemas.messages import (
    AccessShortened,
    AdminActionRejected,
    AnyEvent,
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
    encode,
)
from schemas.money import Money

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RUB = Money(29_900, "RUB")
BASE: dict[str, Any] = {
    "subscription_id": "sub-1",
    "user_id": "user-1",
    "occurred_at": T0,
    "causation_id": "cause-1",
}
REQUEST = PaymentRequest(
    payment_id="pay-1",
    command_id="cmd-1",
    user_id="user-1",
    plan_id="basic",
    amount=RUB,
    period_months=1,
    return_url="https://cinema.example/r",
    description="basic",
    kind="renewal",
)
REFUND = RefundRequest(
    refund_id="ref-1",
    command_id="cmd-r",
    payment_id="pay-1",
    provider_payment_id="prov-1",
    amount=Money(10_000, "RUB"),
    reason="user request",
    actor="admin",
)


def ev(cls: type[Event], n: int, **kw: Any) -> Any:
    return cls(event_id=f"ev-{n}", version=n, **BASE, **kw)


# (event, table, expected columns of its derived row); None: an ``events`` row only.
CASES: list[tuple[Any, str, dict[str, Any]]] = [
    (
        ev(PaymentRequested, 1, request=REQUEST, deadline_at=T0 + 1),
        "payments",
        {
            "status": "requested",
            "payment_id": "pay-1",
            "plan_id": "basic",
            "kind": "renewal",
            "amount_minor": 29_900,
            "currency": "RUB",
            "period_months": 1,
            "command_id": "cmd-1",
        },
    ),
    (
        ev(
            PaymentRedriven,
            2,
            request=REQUEST,
            attempt=2,
            requested_at=T0,
            deadline_at=T0,
            provider_payment_id="prov-1",
        ),
        "payments",
        {"status": "redriven", "attempt": 2, "provider_payment_id": "prov-1"},
    ),
    (
        ev(PaymentRejected, 3, command_id="cmd-1", payment_id="pay-1", reason="plan_unknown"),
        "payments",
        {"status": "rejected", "reason": "plan_unknown", "amount_minor": 0, "currency": ""},
    ),
    (
        ev(
            PaymentPending,
            4,
            payment_id="pay-1",
            provider_payment_id="prov-1",
            status="waiting_for_capture",
        ),
        "payments",
        {"status": "waiting_for_capture", "provider_payment_id": "prov-1"},
    ),
    (
        ev(
            PaymentSettleRequested,
            23,
            payment_id="pay-1",
            command_id="cmd-s",
            provider_payment_id="prov-1",
            action="capture",
            amount=RUB,
            attempt=1,
            deadline_at=T0,
            actor="system",
        ),
        "payments",
        {"status": "capture_requested", "amount_minor": 29_900, "party": "system"},
    ),
    (
        ev(PaymentSettleRejected, 24, command_id="cmd-s", payment_id="pay-1", reason="not_held"),
        "payments",
        {"status": "settle_rejected", "reason": "not_held"},
    ),
    (
        ev(PaymentOutcomeUnknown, 5, payment_id="pay-1", attempt=1, error="timeout"),
        "payments",
        {"status": "unknown", "attempt": 1, "reason": "timeout"},
    ),
    (
        ev(
            PaymentSucceeded,
            6,
            payment_id="pay-1",
            command_id="cmd-1",
            provider_payment_id="prov-1",
            amount=RUB,
        ),
        "payments",
        {
            "status": "succeeded",
            "amount_minor": 29_900,
            "currency": "RUB",
            "occurred_at": T0,
            "version": 6,
            "subscription_id": "sub-1",
            "user_id": "user-1",
            "event_id": "ev-6",
        },
    ),
    (
        ev(
            PaymentCanceled,
            7,
            payment_id="pay-1",
            command_id="cmd-1",
            provider_payment_id=None,
            reason="insufficient_funds",
            party="payment_network",
        ),
        "payments",
        {
            "status": "canceled",
            "reason": "insufficient_funds",
            "party": "payment_network",
            "provider_payment_id": "",
        },
    ),
    (
        ev(
            SubscriptionActivated,
            8,
            payment_id="pay-1",
            plan_id="basic",
            period_start=T0 + 10,
            period_end=T0 + 20,
            extended=True,
        ),
        "subscription_periods",
        {
            "change": "stacked",
            "payment_id": "pay-1",
            "plan_id": "basic",
            "period_start": T0 + 10,
            "period_end": T0 + 20,
            "access_from": T0,  # bought while a period runs: access runs already
            "access_until": T0 + 20,
            "version": 8,
        },
    ),
    (
        ev(
            SubscriptionActivated,
            20,
            payment_id="pay-1",
            plan_id="basic",
            period_start=T0,
            period_end=T0 + 20,
        ),
        "subscription_periods",
        {"change": "activated", "access_from": T0, "access_until": T0 + 20},
    ),
    (
        ev(
            AccessShortened,
            40,
            payment_id="pay-2",
            plan_id="basic",
            period_start=T0,
            period_end=T0 + 10,
            reason="refunded",
        ),
        "subscription_periods",
        {
            "change": "shortened",
            "payment_id": "pay-2",
            "plan_id": "basic",
            "access_from": T0,
            "access_until": T0 + 10,
        },
    ),
    (
        ev(
            PeriodAdjusted,
            21,
            command_id="cmd-x",
            action="extend",
            actor="admin@cinema",
            reason="outage",
            plan_id=None,
            period_start=T0 - 5,
            period_end=T0 + 30,
        ),
        "subscription_periods",
        {
            "change": "extended",
            "plan_id": "",
            "access_from": T0 - 5,
            "access_until": T0 + 30,
            "actor": "admin@cinema",
            "reason": "outage",
            "payment_id": "",
        },
    ),
    (
        ev(
            TrialStarted,
            21,
            payment_id="pay-t",
            command_id="cmd-t",
            plan_id="basic",
            period_start=T0,
            period_end=T0 + 7 * 86_400_000,
            amount=RUB,
            payment_method_id="pm-1",
        ),
        "subscription_periods",
        {
            "change": "trial",
            "plan_id": "basic",
            "access_from": T0,
            "access_until": T0 + 7 * 86_400_000,
            "payment_id": "pay-t",
        },
    ),
    (
        ev(
            PlanChangeScheduled,
            22,
            command_id="cmd-p",
            plan_id="basic",
            amount=RUB,
            period_months=1,
            effective_at=T0 + 40,
        ),
        "subscription_changes",
        {"change": "plan_change_scheduled", "plan_id": "basic", "until": T0 + 40},
    ),
    (
        ev(RefundRequested, 9, request=REFUND, deadline_at=T0),
        "refunds",
        {
            "status": "requested",
            "refund_id": "ref-1",
            "payment_id": "pay-1",
            "amount_minor": 10_000,
            "actor": "admin",
            "reason": "user request",
        },
    ),
    (
        ev(RefundRedriven, 10, request=REFUND, attempt=1, requested_at=T0, deadline_at=T0),
        "refunds",
        {"status": "redriven", "attempt": 1},
    ),
    (
        ev(
            RefundRejected,
            11,
            command_id="cmd-r",
            refund_id="ref-1",
            payment_id="pay-1",
            reason="too_much",
        ),
        "refunds",
        {"status": "rejected", "reason": "too_much"},
    ),
    (
        ev(RefundOutcomeUnknown, 12, refund_id="ref-1", attempt=1, error="timeout"),
        "refunds",
        {"status": "unknown", "payment_id": ""},
    ),
    (
        ev(
            RefundSucceeded,
            13,
            refund_id="ref-1",
            command_id="cmd-r",
            payment_id="pay-1",
            provider_refund_id="pr-1",
            amount=RUB,
            fully_refunded=True,
        ),
        "refunds",
        {"status": "succeeded", "amount_minor": 29_900, "fully_refunded": 1},
    ),
    (
        ev(
            RefundFailed,
            14,
            refund_id="ref-1",
            command_id="cmd-r",
            payment_id="pay-1",
            provider_refund_id=None,
            reason="rejected_by_bank",
        ),
        "refunds",
        {"status": "canceled", "reason": "rejected_by_bank", "fully_refunded": 0},
    ),
    (
        ev(AutoRenewChanged, 15, command_id="cmd-a", enabled=False, actor="user"),
        "subscription_changes",
        {"change": "auto_renew_off", "actor": "user"},
    ),
    (
        ev(
            RenewalFailed,
            16,
            payment_id="pay-1",
            reason="card_expired",
            hard=True,
            attempt=2,
            next_retry_at=None,
        ),
        "subscription_changes",
        {"change": "renewal_failed", "hard": 1, "attempt": 2, "until": 0, "reason": "card_expired"},
    ),
    (
        ev(SubscriptionPastDue, 17, period_end=T0 + 5, next_retry_at=T0 + 6),
        "subscription_changes",
        {"change": "past_due", "until": T0 + 5},
    ),
    (
        ev(SubscriptionExpired, 18, reason="renewal_failed", period_end=T0 + 5),
        "subscription_changes",
        {"change": "expired", "reason": "renewal_failed", "until": T0 + 5},
    ),
    (
        ev(SubscriptionCanceled, 19, payment_id="pay-1", reason="refunded", access_until=T0 + 7),
        "subscription_changes",
        {"change": "canceled", "payment_id": "pay-1", "until": T0 + 7},
    ),
]

EVENTS_ONLY_CASES = [
    ev(RenewalUpcoming, 30, period_end=T0, plan_id="basic", amount=RUB),
    ev(PlanChangeRejected, 31, command_id="cmd-p", reason="same_plan"),
    ev(AdminActionRejected, 32, command_id="cmd-a", action="cancel", actor="a", reason="no"),
    ev(PaymentMethodSaved, 33, method_id="pm-2", payment_id="pay-v"),
    ev(
        PaymentMethodChanged,
        34,
        command_id="cmd-m",
        method_id="pm-2",
        action="delete",
        actor="user",
    ),
    ev(PaymentMethodRejected, 35, command_id="cmd-m", method_id="pm-9", reason="not_found"),
]


def case(cls: type[Event]) -> Any:
    return next(c[0] for c in CASES if type(c[0]) is cls)


# Events with rows in more than one derived table: the other tables.
ALSO: dict[type[Event], set[str]] = {SubscriptionCanceled: {"subscription_periods"}}


def test_every_event_type_is_mapped_or_kept_in_events_only_on_purpose() -> None:
    """A new event type fails here until the sink decides what analytics make of it."""
    event_types = set(typing.get_args(AnyEvent))
    assert not set(MAPPERS) & EVENTS_ONLY
    assert event_types == set(MAPPERS) | EVENTS_ONLY, event_types ^ (set(MAPPERS) | EVENTS_ONLY)
    assert {type(case[0]) for case in CASES} == set(MAPPERS)
    assert {type(e) for e in EVENTS_ONLY_CASES} == EVENTS_ONLY


@pytest.mark.parametrize("event", EVENTS_ONLY_CASES, ids=lambda e: type(e).__name__)
def test_events_only_types_get_an_events_row(event: Any) -> None:
    tables = rows_from_events([encode(event)])
    assert [t for t, rows in tables.items() if rows] == ["events"]


@pytest.mark.parametrize("event,table,expected", CASES, ids=lambda c: getattr(c, "type", None))
def test_event_maps_to_its_row(event: Any, table: str, expected: dict[str, Any]) -> None:
    raw = encode(event)
    tables = rows_from_events([raw])
    assert set(tables) == set(EVENT_TABLES)
    derived = {t: rows for t, rows in tables.items() if t != "events" and rows}
    assert set(derived) == {table} | ALSO.get(type(event), set())
    [row] = derived[table]
    assert len(row) == len(COLUMNS[table])
    named = dict(zip(COLUMNS[table], row, strict=True))
    assert named["event_id"] == event.event_id
    assert {k: named[k] for k in expected} == expected
    [event_row] = tables["events"]
    e = dict(zip(COLUMNS["events"], event_row, strict=True))
    assert e["event_type"] == type(event).__name__
    assert e["body"] == raw
    assert (e["version"], e["occurred_at"], e["causation_id"]) == (event.version, T0, "cause-1")


def test_a_cancel_closes_access() -> None:
    canceled = case(SubscriptionCanceled)
    [row] = rows_from_events([encode(canceled)])["subscription_periods"]
    named = dict(zip(COLUMNS["subscription_periods"], row, strict=True))
    assert (named["change"], named["access_from"], named["access_until"]) == (
        "canceled",
        T0 + 7,
        T0 + 7,
    )


def test_an_upgrade_records_the_list_price() -> None:
    upgrade = msgspec.structs.replace(
        REQUEST, kind="upgrade", amount=Money(12_000, "RUB"), plan_amount=Money(59_900, "RUB")
    )
    [row] = rows_from_events([encode(ev(PaymentRequested, 1, request=upgrade, deadline_at=0))])[
        "payments"
    ]
    named = dict(zip(COLUMNS["payments"], row, strict=True))
    assert (named["kind"], named["amount_minor"], named["list_amount_minor"]) == (
        "upgrade",
        12_000,
        59_900,
    )
    [plain] = rows_from_events([encode(case(PaymentRequested))])["payments"]
    assert dict(zip(COLUMNS["payments"], plain, strict=True))["list_amount_minor"] == 29_900


def test_events_row_names_the_payment_or_refund() -> None:
    tables = rows_from_events(
        [
            encode(case(PaymentRequested)),
            encode(case(RefundRequested)),
            encode(case(AutoRenewChanged)),
        ]
    )
    ids = [
        (r[COLUMNS["events"].index("payment_id")], r[COLUMNS["events"].index("refund_id")])
        for r in tables["events"]
    ]
    assert ids == [("pay-1", ""), ("pay-1", "ref-1"), ("", "")]


def test_an_event_seen_twice_in_a_batch_yields_its_rows_once() -> None:
    raw = encode(case(PaymentSucceeded))
    tables = rows_from_events([raw, raw, raw])
    assert len(tables["events"]) == 1
    assert len(tables["payments"]) == 1


def test_an_event_unknown_to_this_build_is_kept_in_events_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    newer = msgspec.json.encode(
        {
            "type": "PlanChanged",
            "event_id": "ev-x",
            "subscription_id": "sub-1",
            "user_id": "user-1",
            "version": 9,
            "occurred_at": T0,
            "causation_id": "c",
            "payment_id": "pay-9",
            "new_plan": {"id": "premium"},
        }
    )
    with caplog.at_level(logging.WARNING):
        tables = rows_from_events([newer, b"not json", newer])
    assert [len(rows) for t, rows in tables.items() if t != "events"] == [0] * 4
    [row] = tables["events"]
    e = dict(zip(COLUMNS["events"], row, strict=True))
    assert (e["event_type"], e["event_id"], e["version"], e["payment_id"], e["body"]) == (
        "PlanChanged",
        "ev-x",
        9,
        "pay-9",
        newer,
    )
    assert "not an event" in caplog.text


def test_dedup_token_depends_on_the_set_of_events_not_their_order() -> None:
    rows = rows_from_events([encode(c[0]) for c in CASES])["events"]
    assert dedup_token("events", rows) == dedup_token("events", list(reversed(rows)))
    assert dedup_token("events", rows) != dedup_token("events", rows[1:])
    assert dedup_token("events", rows) != dedup_token("payments", rows)


def test_synthetic_history_is_reproducible() -> None:
    a = synthetic_history(50, start_ms=T0, days=60, seed=3)
    b = synthetic_history(50, start_ms=T0, days=60, seed=3)
    assert a.events == b.events and a.payments == b.payments
    assert a.events != synthetic_history(50, start_ms=T0, days=60, seed=4).events
    tables = rows_from_events(a.events)
    assert len(tables["events"]) == len(a.events)


# ------------------------------------------------------------------------------- the DDL
def _create_statements() -> dict[str, str]:
    out: dict[str, str] = {}
    for migration in MIGRATIONS:
        for sql in migration.statements:
            if sql.lstrip().startswith("DROP TABLE IF EXISTS "):
                continue  # a table made again (migration 4): idempotent too
            m = re.match(r"\s*CREATE TABLE IF NOT EXISTS (\w+) \((.*)\) ENGINE", sql, re.S)
            assert m, f"migration {migration.version}: not an idempotent CREATE: {sql[:60]}"
            out[m.group(1)] = m.group(2)
    return out


def test_migrations_are_ordered_and_idempotent_creates() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(set(versions)) and versions[0] == 1
    _create_statements()


def test_insert_columns_are_the_tables_columns_in_order() -> None:
    creates = _create_statements()
    assert set(COLUMNS) == set(creates)
    for table, body in creates.items():
        declared = [line.split()[0] for line in body.strip().splitlines() if line.strip()]
        insertable = [
            c
            for c, line in zip(declared, body.strip().splitlines(), strict=True)
            if " DEFAULT " not in line
        ]
        assert tuple(insertable) == COLUMNS[table], table


def test_event_tables_replace_by_event_id_and_remember_insert_tokens() -> None:
    for migration in MIGRATIONS:
        for sql in migration.statements:
            if sql.lstrip().startswith("DROP TABLE IF EXISTS "):
                continue
            assert "ReplacingMergeTree" in sql
            assert "non_replicated_deduplication_window" in sql
            key = re.search(r"ORDER BY \(?([^)\n]*)\)?", sql)
            assert key is not None
            table = re.search(r"EXISTS (\w+)", sql)
            assert table is not None
            if table.group(1) in EVENT_TABLES:
                assert key.group(1).split(",")[-1].strip() == "event_id", sql


# ------------------------------------------------------------------------ store targets
def test_store_target_resolution(tmp_path: Path) -> None:
    assert _resolve(tmp_path) == (f"chdb://{tmp_path.resolve()}", None)
    assert _resolve(str(tmp_path)) == (f"chdb://{tmp_path.resolve()}", None)
    assert _resolve("chdb:///data/ch") == ("chdb:///data/ch", None)
    assert _resolve("http://u:p@ch:8123/history") == ("http://u:p@ch:8123", "history")
    assert _resolve("https://ch:8443") == ("https://ch:8443", None)
    embedded = SimpleNamespace(state_dir=tmp_path)
    assert _resolve(embedded) == (f"chdb://{embedded_dir(tmp_path).resolve()}", None)
    unset = SimpleNamespace(state_dir=tmp_path, clickhouse_url=None)
    assert _resolve(unset)[0].startswith("chdb://")
    server = SimpleNamespace(state_dir=tmp_path, clickhouse_url=SecretStr("http://ch:8123/x"))
    assert _resolve(server) == ("http://ch:8123", "x")
    assert DEFAULT_DATABASE == "billing"


# ------------------------------------------------------------- typed results, fake store
class FakeStore:
    embedded = True
    database = "fake"

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def command(self, sql: str, params: Any = None) -> None:
        raise AssertionError("queries never write")

    def insert(self, *args: Any, **kw: Any) -> None:
        raise AssertionError("queries never write")

    def insert_arrow(self, *args: Any, **kw: Any) -> None:
        raise AssertionError("queries never write")

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        self.calls.append((sql, dict(params or {})))
        return self.rows

    def close(self) -> None:
        pass


def test_rates_and_shares_from_rows() -> None:
    d = date(2026, 1, 1)
    assert q.payment_success(FakeStore([(d, 3, 1)]), 0, 1)[0].rate == 0.75
    assert q.payment_success(FakeStore([(d, 0, 0)]), 0, 1)[0].rate is None
    declines = q.decline_reasons(FakeStore([("a", "p", 3), ("b", "p", 1)]), 0, 1)
    assert [x.share for x in declines] == [0.75, 0.25]
    [dunning] = q.dunning_recovery(FakeStore([(d, 10, 6, 2)]), 0, 1)
    assert (dunning.open, dunning.rate) == (2, 0.75)
    mrr = FakeStore([(d, "RUB", 100, 50, 10, 5, 20, 8, 9, 3, 2)])
    [m] = q.mrr_movements(mrr, d, 1, cache=False)
    assert (m.net_new_minor, m.churn_rate) == (35, 0.25)
    active = q.active_subscribers(FakeStore([(0, "basic", 2), (0, "premium", 1), (1, "", 3)]), 5)
    assert (active.total, active.by_plan) == (3, {"basic": 2, "premium": 1})


def test_refund_rate_sums_days_per_currency() -> None:
    d1, d2 = date(2026, 1, 1), date(2026, 1, 2)
    store = FakeStore(
        [
            (d1, "RUB", 1000, 100, 900, 2, 1),
            (d2, "RUB", 1000, 0, 1000, 1, 0),
            (d1, "USD", 50, 50, 0, 1, 1),
        ]
    )
    rates = q.refund_rate(store, 0, 1)
    assert [(r.currency, r.gross_minor, r.refunds_minor, r.rate) for r in rates] == [
        ("RUB", 2000, 100, 0.05),
        ("USD", 50, 50, 1.0),
    ]


def test_query_parameters() -> None:
    store = FakeStore([])
    q.revenue_by_day(store, 10, 20)
    q.mrr_movements(store, date(2026, 3, 17), 12, cache=False)
    assert store.calls[0][1] == {"from_ms": 10, "to_ms": 20}
    assert store.calls[1] == (q.MRR_MOVEMENTS, {"from_month": date(2026, 3, 1), "months": 12})
    with pytest.raises(ValueError):
        q.mrr_movements(store, date(2026, 3, 1), 0)


def test_month_start() -> None:
    assert q.month_start(T0) == date(2026, 1, 1)
    assert q.month_start(T0 + 40 * 86_400_000) == date(2026, 2, 1)
    assert q.month_start(T0, back=1) == date(2025, 12, 1)
    assert q.month_start(T0, back=13) == date(2024, 12, 1)


# ---------------------------------------------------------------------- MRR cache, pure
def test_mrr_fingerprint_of_a_close_covers_every_month_up_to_it() -> None:
    jan, feb, mar, apr = (date(2026, m, 1) for m in (1, 2, 3, 4))
    rows = [(jan, 10, 55, 1000), (feb, 20, 70, 2000), (mar, 5, 9, 3000)]
    prints = q.Fingerprints(rows)
    assert q.Fingerprints(list(reversed(rows))).upto(mar) == prints.upto(mar)
    assert len({prints.upto(m) for m in (jan, feb, mar)}) == 3
    assert prints.upto(apr) == prints.upto(mar)  # nothing occurred in April
    assert prints.upto(date(2025, 12, 1)) == q.Fingerprints([]).upto(mar)
    late = q.Fingerprints([(jan, 10, 55, 1000), (feb, 21, 75, 2100), (mar, 5, 9, 3000)])
    assert late.upto(jan) == prints.upto(jan)
    assert late.upto(feb) != prints.upto(feb) and late.upto(apr) != prints.upto(apr)


def test_mrr_cache_closed_months() -> None:
    cache = q.MrrCache(FakeStore([]), T0 + 40 * 86_400_000)  # 2026-02-10
    assert cache.current_month == date(2026, 2, 1)
    assert cache.closed(date(2026, 1, 1)) and not cache.closed(date(2026, 2, 1))
    assert q.MrrCache(FakeStore([]), T0 + 31 * 86_400_000).closed(date(2026, 1, 1))  # Feb 1
    assert q._add_months(date(2026, 11, 1), 3) == date(2027, 2, 1)
    assert q._add_months(date(2026, 1, 1), -1) == date(2025, 12, 1)
    assert q._date_ms(date(2026, 1, 1)) == T0
