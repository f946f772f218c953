"""The ClickHouse history on the embedded engine (chdb): migrations, the sink's idempotence on
replay (insert deduplication tokens, and duplicates the queries ignore before any merge), and
the analytics answers checked against what a synthetic history says (computed in Python).

One engine directory per process (chdb's rule): this module opens one and gives each case its
own database in it; every client is closed at the end, so another module may open another."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from analytics import queries as q
from analytics.ingest import ARROW_SCHEMAS, arrow_batch, write_batch
from analytics.synthetic import DAY_MS, History, synthetic_history
from billing.clickhouse import (
    ClickHouseClient,
    StoreError,
    apply_migrations,
    connect,
    embedded_dir,
)
from billing.config import Settings
from schemas.clickhouse import COLUMNS, EVENT_TABLES, MIGRATIONS
from schemas.ids import event_id_for, subscription_id_for
from schemas.messages import (
    Event,
    PaymentRequest,
    PaymentRequested,
    PaymentSucceeded,
    PeriodAdjusted,
    SubscriptionActivated,
    SubscriptionCanceled,
    decode_event,
    encode,
)
from schemas.money import Money
from schemas.periods import period_end_ms

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR_MS = 3_600_000


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clickhouse-state")


def _open(state_dir: Path) -> ClickHouseClient:
    return connect(embedded_dir(state_dir), database=f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(state_dir: Path) -> Iterator[ClickHouseClient]:
    ch = _open(state_dir)
    yield ch
    ch.command(f"DROP DATABASE IF EXISTS {ch.database}")
    ch.close()


@pytest.fixture(scope="module")
def history() -> History:
    return synthetic_history(1500, start_ms=T0, days=240, seed=7)


def ingest(ch: ClickHouseClient, batches: Sequence[Sequence[bytes]]) -> None:
    async def run() -> None:
        for batch in batches:
            await write_batch(ch, batch)

    asyncio.run(run())


def cut(events: Sequence[bytes], size: int, step: int | None = None) -> list[Sequence[bytes]]:
    step = step or size
    return [events[i : i + size] for i in range(0, len(events), step)]


@pytest.fixture(scope="module")
def loaded(state_dir: Path, history: History) -> Iterator[ClickHouseClient]:
    """The history ingested once, in batches of 1000."""
    ch = _open(state_dir)
    ingest(ch, cut(history.events, 1000))
    yield ch
    ch.command(f"DROP DATABASE IF EXISTS {ch.database}")
    ch.close()


def raw_counts(ch: ClickHouseClient) -> dict[str, int]:
    return {t: int(ch.query(f"SELECT count() FROM {t}")[0][0]) for t in EVENT_TABLES}


def unique_counts(ch: ClickHouseClient) -> dict[str, int]:
    return {t: int(ch.query(f"SELECT uniqExact(event_id) FROM {t}")[0][0]) for t in EVENT_TABLES}


def day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def ms(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp() * 1000)


# ----------------------------------------------------------------------------- the store
def test_migrations_create_the_tables_the_sink_writes(store: ClickHouseClient) -> None:
    for table, columns in COLUMNS.items():
        rows = store.query(
            "SELECT name, default_kind FROM system.columns"
            " WHERE database = {db:String} AND table = {t:String} ORDER BY position",
            {"db": store.database, "t": table},
        )
        assert tuple(name for name, kind in rows if kind != "DEFAULT") == columns, table
    assert apply_migrations(store) == []  # applied once, by connect
    versions = store.query("SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(m.version,) for m in MIGRATIONS]


# The Arrow type the sink sends for each ClickHouse column type of the event tables.
ARROW_FOR = {
    "String": "string",
    "LowCardinality(String)": "string",
    "UInt8": "uint8",
    "UInt16": "uint16",
    "UInt32": "uint32",
    "UInt64": "uint64",
    "Int64": "int64",
    "DateTime64(3, 'UTC')": "timestamp[ms, tz=UTC]",
}


def test_the_sinks_arrow_schemas_match_the_tables(store: ClickHouseClient) -> None:
    for table in EVENT_TABLES:
        types = dict(
            store.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String}"
                " AND table = {t:String} AND default_kind != 'DEFAULT'",
                {"db": store.database, "t": table},
            )
        )
        schema = ARROW_SCHEMAS[table]
        assert schema.names == list(COLUMNS[table]), table
        for field in schema:
            expected = "binary" if field.name == "body" else ARROW_FOR[types[field.name]]
            assert str(field.type) == expected, (table, field.name, types[field.name])


def test_arrow_inserts_keep_every_value(store: ClickHouseClient) -> None:
    """Epoch milliseconds land as DateTime64(3) (not seconds), big unsigned values, empty and
    non-ASCII strings and raw bytes as they are."""
    row = (
        "ev-1",
        "sub-1",
        "user-ü",
        2**63 + 5,
        1_767_225_600_123,
        "activated",
        "",
        "basic",
        0,
        253_402_300_799_999,  # 9999-12-31T23:59:59.999Z
        1,
        T0,
        "",
        'a "quoted" reason\n',
    )
    store.insert_arrow(
        "subscription_periods", arrow_batch("subscription_periods", [row]), dedup_token="t-1"
    )
    got = store.query(
        "SELECT event_id, subscription_id, user_id, version,"
        " toUnixTimestamp64Milli(occurred_at), change, payment_id, plan_id,"
        " toUnixTimestamp64Milli(period_start), toUnixTimestamp64Milli(period_end),"
        " toUnixTimestamp64Milli(access_from), toUnixTimestamp64Milli(access_until), actor,"
        " reason FROM subscription_periods"
    )
    assert got == [row]
    store.insert_arrow(
        "subscription_periods", arrow_batch("subscription_periods", [row]), dedup_token="t-1"
    )
    assert store.query("SELECT count() FROM subscription_periods") == [(1,)]  # same token


def test_connect_from_settings_opens_the_state_dirs_embedded_store(state_dir: Path) -> None:
    ch = connect(Settings(state_dir=state_dir))
    try:
        assert (ch.embedded, ch.database) == (True, "billing")
        assert ch.query("SELECT count() FROM events") == [(0,)]
    finally:
        ch.close()


def test_a_second_process_cannot_open_the_embedded_store(
    state_dir: Path, store: ClickHouseClient
) -> None:
    """While this process holds the engine open, another one is refused (so in embedded mode
    one process, the worker, owns the store and the others read through it)."""
    code = textwrap.dedent(
        f"""
        import clickhouse_connect
        clickhouse_connect.get_client(dsn="chdb://{embedded_dir(state_dir)}")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Cannot lock file" in done.stderr


def test_concurrent_inserts_use_their_own_connections_and_close_them(tmp_path: Path) -> None:
    """The sink stores a batch's tables on up to INSERT_CONNECTIONS extra connections;
    closing the client closes them too (chdb would refuse another engine directory while any
    handle on the first is open), so the process can open another store afterwards."""
    code = textwrap.dedent(
        f"""
        import asyncio
        from analytics.synthetic import synthetic_history
        from billing.clickhouse import INSERT_CONNECTIONS, connect
        from analytics.ingest import write_batch

        h = synthetic_history(200, start_ms={T0}, days=60, seed=3)
        ch = connect("{tmp_path / "a"}", database="a")
        for i in range(0, len(h.events), 500):
            asyncio.run(write_batch(ch, h.events[i : i + 500]))
        assert 1 <= len(ch._inserters) <= INSERT_CONNECTIONS, ch._inserters
        assert ch.query("SELECT count() FROM events") == [(len(h.events),)]
        extras = list(ch._inserters)
        ch.close()
        for extra in extras:
            try:
                extra.command("SELECT 1")
            except Exception:
                continue
            raise AssertionError("an insert connection is still open")
        other = connect("{tmp_path / "b"}", database="b")
        assert other.query("SELECT count() FROM events") == [(0,)]
        other.close()
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


# ------------------------------------------------------------------------ idempotence
def test_a_replayed_batch_is_dropped_at_insert(store: ClickHouseClient, history: History) -> None:
    batches = cut(history.events[:6000], 1500)
    ingest(store, batches)
    first = raw_counts(store)
    assert first["events"] == 6000
    assert first == unique_counts(store)
    ingest(store, batches)  # a crash replay: the same batches again
    ingest(store, [history.events[:6000]])  # and all at once: other tokens, all duplicates
    assert unique_counts(store) == first
    again = raw_counts(store)
    assert again["payments"] - first["payments"] == first["payments"]  # only the last pass


def test_tokens_need_the_deduplication_window_on_a_plain_mergetree(
    store: ClickHouseClient,
) -> None:
    """Why every table sets non_replicated_deduplication_window: without it chdb (like a
    server's non-replicated MergeTree) ignores insert_deduplication_token."""
    for name, settings in (
        ("plain", ""),
        ("windowed", "SETTINGS non_replicated_deduplication_window = 10"),
    ):
        store.command(
            f"CREATE TABLE {name} (k String) ENGINE = ReplacingMergeTree ORDER BY k {settings}"
        )
        for _ in range(2):
            store.insert(name, [("a",), ("b",)], ("k",), dedup_token="same")
    assert store.query("SELECT count() FROM plain") == [(4,)]
    assert store.query("SELECT count() FROM windowed") == [(2,)]


def test_duplicates_that_reach_the_tables_change_no_answer(
    store: ClickHouseClient, loaded: ClickHouseClient, history: History
) -> None:
    """Overlapping batches (a replay cut differently: other tokens) store rows twice. Merges
    are stopped, so the duplicates are there while the queries run: every answer equals the
    clean load's. After OPTIMIZE FINAL the duplicates are gone and nothing changes."""
    for table in EVENT_TABLES:
        store.command(f"SYSTEM STOP MERGES {table}")
    ingest(store, cut(history.events, 1000, step=700))
    raw, unique = raw_counts(store), unique_counts(store)
    assert unique == raw_counts(loaded)
    assert all(raw[t] > unique[t] for t in EVENT_TABLES if unique[t]), (raw, unique)
    expected = answers(loaded, history)
    assert answers(store, history) == expected
    for table in EVENT_TABLES:
        store.command(f"SYSTEM START MERGES {table}")
        store.command(f"OPTIMIZE TABLE {table} FINAL")
    assert raw_counts(store) == unique
    assert answers(store, history) == expected


def test_event_bodies_are_the_log_verbatim(loaded: ClickHouseClient, history: History) -> None:
    bodies = [row[0] for row in loaded.query("SELECT body FROM events LIMIT 1 BY event_type")]
    assert bodies
    index = set(history.events)
    for body in bodies:
        raw = body.encode() if isinstance(body, str) else body
        assert raw in index
        decode_event(raw)


# --------------------------------------------------------------- answers vs the history
def answers(ch: ClickHouseClient, h: History) -> dict[str, Any]:
    mid = h.start_ms + 100 * DAY_MS
    return {
        "totals": q.totals_by_day(ch, h.start_ms, h.end_ms),
        "totals_window": q.totals_by_day(ch, h.start_ms + 30 * DAY_MS, h.start_ms + 60 * DAY_MS),
        "revenue": q.revenue_by_day(ch, h.start_ms, h.end_ms),
        "success": q.payment_success(ch, h.start_ms, h.end_ms),
        "declines": q.decline_reasons(ch, h.start_ms, h.end_ms),
        "active": [q.active_subscribers(ch, t) for t in (mid, mid + 45 * DAY_MS, h.end_ms)],
        "mrr": q.mrr_movements(ch, day(h.start_ms), 8),
        "dunning": q.dunning_recovery(ch, h.start_ms, h.end_ms),
        "refund_rate": q.refund_rate(ch, h.start_ms, h.end_ms),
    }


def expected_totals(h: History, lo: int, hi: int) -> list[q.DayTotals]:
    acc: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for p in h.payments:
        if p.outcome == "succeeded" and p.outcome_at is not None and lo <= p.outcome_at < hi:
            a = acc[day(p.outcome_at), p.plan.currency]
            a[0] += p.plan.amount_minor
            a[2] += 1
        if p.refund is not None and lo <= p.refund.at < hi:
            a = acc[day(p.refund.at), p.plan.currency]
            a[1] += p.refund.amount_minor
            a[3] += 1
    return [
        q.DayTotals(d, cur, g, r, g - r, n, m) for (d, cur), (g, r, n, m) in sorted(acc.items())
    ]


def test_totals_per_day_and_currency(loaded: ClickHouseClient, history: History) -> None:
    h = history
    got = q.totals_by_day(loaded, h.start_ms, h.end_ms)
    assert got == expected_totals(h, h.start_ms, h.end_ms)
    assert sum(t.refunds for t in got) > 50 and {t.currency for t in got} == {"RUB", "USD"}
    lo, hi = h.start_ms + 30 * DAY_MS + 5 * HOUR_MS, h.start_ms + 60 * DAY_MS
    assert q.totals_by_day(loaded, lo, hi) == expected_totals(h, lo, hi)


def test_revenue_per_day_and_plan(loaded: ClickHouseClient, history: History) -> None:
    h = history
    acc: dict[tuple[date, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for p in h.payments:
        if p.outcome == "succeeded" and p.outcome_at is not None:
            a = acc[day(p.outcome_at), p.plan.currency, p.plan.plan_id]
            a[0] += p.plan.amount_minor
            a[2] += 1
        if p.refund is not None:
            a = acc[day(p.refund.at), p.plan.currency, p.plan.plan_id]
            a[1] += p.refund.amount_minor
            a[3] += 1
    expected = [
        q.RevenueRow(d, cur, plan, g, r, g - r, n, m)
        for (d, cur, plan), (g, r, n, m) in sorted(acc.items())
    ]
    assert q.revenue_by_day(loaded, h.start_ms, h.end_ms) == expected


def test_payment_success_and_decline_reasons(loaded: ClickHouseClient, history: History) -> None:
    h = history
    per_day: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for p in h.payments:
        if p.outcome_at is not None:
            per_day[day(p.outcome_at)][0 if p.outcome == "succeeded" else 1] += 1
    expected = [q.SuccessRateRow(d, s, c) for d, (s, c) in sorted(per_day.items())]
    assert q.payment_success(loaded, h.start_ms, h.end_ms) == expected
    reasons = Counter((p.reason, p.party) for p in h.payments if p.outcome == "canceled")
    got = q.decline_reasons(loaded, h.start_ms, h.end_ms)
    assert {(d.reason, d.party): d.payments for d in got} == dict(reasons)
    assert sum(d.share for d in got) == pytest.approx(1.0)


def expected_active(h: History, t: int) -> q.ActiveSubscribers:
    state: dict[str, Any] = {}
    for a in h.access:  # in the order they happened, per subscription
        if a.at <= t:
            state[a.subscription_id] = a
    plans = Counter(a.plan_id for a in state.values() if a.access_from <= t < a.access_until)
    return q.ActiveSubscribers(at_ms=t, total=sum(plans.values()), by_plan=dict(plans))


def test_active_subscribers(loaded: ClickHouseClient, history: History) -> None:
    h = history
    for t in (h.start_ms + 10 * DAY_MS, h.start_ms + 100 * DAY_MS + 7, h.end_ms - 1):
        got = q.active_subscribers(loaded, t)
        assert got == expected_active(h, t)
        assert got.total > 30


def expected_mrr(h: History, first: date, months: int) -> list[q.MrrMovement]:
    closes = [
        date(first.year + (first.month - 1 + i) // 12, (first.month - 1 + i) % 12 + 1, 1)
        for i in range(months + 1)  # the close of each month is the next one's first instant
    ]
    per: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (months + 1))
    for i, close in enumerate(closes):
        x = ms(close.year, close.month, close.day)
        state: dict[str, Any] = {}
        for a in h.access:
            if a.at <= x:
                state[a.subscription_id] = a
        for sub, a in state.items():
            if a.access_from <= x < a.access_until and a.monthly_minor > 0:
                per[sub, a.currency][i] += a.monthly_minor
    out: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0] * 9)
    for (_, cur), values in per.items():
        for i in range(1, months + 1):
            prev, now = values[i - 1], values[i]
            if not prev and not now:
                continue
            month = closes[i - 1]
            o = out[month, cur]
            o[0] += now
            o[1] += now if not prev else 0
            o[2] += now - prev if prev and now > prev else 0
            o[3] += prev - now if now and now < prev else 0
            o[4] += prev if not now else 0
            o[5] += 1 if prev else 0
            o[6] += 1 if now else 0
            o[7] += 0 if prev else 1
            o[8] += 0 if now else 1
    return [q.MrrMovement(m, cur, *v) for (m, cur), v in sorted(out.items())]


def test_mrr_movements(loaded: ClickHouseClient, history: History) -> None:
    got = q.mrr_movements(loaded, day(history.start_ms), 8)
    assert got == expected_mrr(history, day(history.start_ms), 8)
    assert any(m.expansion_minor for m in got) and any(m.contraction_minor for m in got)
    assert any(m.churn_minor for m in got) and all(m.churn_rate is not None for m in got[2:])


def test_dunning_recovery(loaded: ClickHouseClient, history: History) -> None:
    h = history
    acc: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])
    for f in h.dunning:
        a = acc[day(f.started_at).replace(day=1)]
        a[0] += 1
        a[1] += f.outcome == "recovered"
        a[2] += f.outcome == "lost"
    expected = [q.DunningRecovery(m, *v) for m, v in sorted(acc.items())]
    got = q.dunning_recovery(loaded, h.start_ms, h.end_ms)
    assert got == expected
    assert sum(d.recovered for d in got) > 0 and sum(d.lost for d in got) > 0


def test_overview_runs_every_query(loaded: ClickHouseClient, history: History) -> None:
    o = q.overview(loaded, history.end_ms, days=30, months=6)
    assert o.revenue and o.success and o.declines and o.refund_rate and o.dunning
    assert len({m.month for m in o.mrr}) == 6
    assert o.active == expected_active(history, history.end_ms)


# ------------------------------------------------------ lifecycle: upgrade, admin, stacking
@dataclass
class Life:
    user: str
    versions: int = 0

    @property
    def sub(self) -> str:
        return subscription_id_for(self.user)

    def emit(self, cls: type[Event], at: int, **kw: Any) -> bytes:
        self.versions += 1
        return encode(
            cls(
                event_id=event_id_for(str(uuid.uuid4()), 0),
                subscription_id=self.sub,
                user_id=self.user,
                version=self.versions,
                occurred_at=at,
                causation_id=str(uuid.uuid4()),
                **kw,
            )
        )

    def pay(
        self,
        at: int,
        plan: str,
        amount: int,
        *,
        start: int,
        extended: bool = False,
        kind: str = "purchase",
        list_amount: int | None = None,
    ) -> list[bytes]:
        pid = str(uuid.uuid4())
        request = PaymentRequest(
            payment_id=pid,
            command_id=str(uuid.uuid4()),
            user_id=self.user,
            plan_id=plan,
            amount=Money(amount, "RUB"),
            period_months=1,
            return_url="https://cinema.example",
            description=plan,
            kind=kind,  # type: ignore[arg-type]
            plan_amount=Money(list_amount, "RUB") if list_amount else None,
        )
        end = period_end_ms(start, 1)
        return [
            self.emit(PaymentRequested, at, request=request, deadline_at=at),
            self.emit(
                PaymentSucceeded,
                at + 1,
                payment_id=pid,
                command_id=request.command_id,
                provider_payment_id="p-" + pid,
                amount=request.amount,
            ),
            self.emit(
                SubscriptionActivated,
                at + 1,
                payment_id=pid,
                plan_id=plan,
                period_start=start,
                period_end=end,
                extended=extended,
            ),
        ]


def test_lifecycle_upgrade_admin_and_stacking(store: ClickHouseClient) -> None:
    events: list[bytes] = []
    r = Life("renews-into-premium")  # basic, then a stacked premium renewal: expansion
    events += r.pay(ms(2025, 12, 15, 10), "basic", 29_900, start=ms(2025, 12, 15, 10))
    events += r.pay(
        ms(2026, 1, 15, 9),
        "premium",
        59_900,
        start=ms(2026, 1, 15, 10),
        extended=True,
        kind="renewal",
    )
    d = Life("renews-into-basic")  # premium, then a stacked basic renewal: contraction
    events += d.pay(ms(2025, 12, 20, 10), "premium", 59_900, start=ms(2025, 12, 20, 10))
    events += d.pay(
        ms(2026, 1, 20, 9),
        "basic",
        29_900,
        start=ms(2026, 1, 20, 10),
        extended=True,
        kind="renewal",
    )
    s = Life("upgraded-extended-canceled")
    events += s.pay(ms(2026, 1, 1, 1), "basic", 29_900, start=ms(2026, 1, 1, 1))
    events += s.pay(
        ms(2026, 1, 11),
        "premium",
        20_000,
        start=ms(2026, 1, 11),
        kind="upgrade",
        list_amount=59_900,
    )
    events.append(
        s.emit(
            PeriodAdjusted,
            ms(2026, 1, 21),
            command_id="a1",
            action="extend",
            actor="admin",
            reason="outage",
            plan_id="premium",
            period_start=ms(2026, 1, 11),
            period_end=ms(2026, 2, 18),
        )
    )
    events.append(
        s.emit(
            SubscriptionCanceled,
            ms(2026, 2, 10),
            payment_id="",
            reason="abuse",
            access_until=ms(2026, 2, 10),
            actor="admin",
            command_id="a2",
        )
    )
    g = Life("granted")  # admin grant: access, no revenue
    events.append(
        g.emit(
            PeriodAdjusted,
            ms(2026, 1, 6),
            command_id="a3",
            action="grant",
            actor="admin",
            reason="promo",
            plan_id="basic",
            period_start=ms(2026, 1, 6),
            period_end=ms(2026, 2, 6),
        )
    )
    ingest(store, [events])

    def active(t: int) -> tuple[int, dict[str, int]]:
        a = q.active_subscribers(store, t)
        return a.total, a.by_plan

    assert active(ms(2026, 1, 5)) == (3, {"basic": 2, "premium": 1})
    assert active(ms(2026, 1, 16)) == (4, {"basic": 1, "premium": 3})
    assert active(ms(2026, 2, 12)) == (2, {"basic": 1, "premium": 1})
    assert active(ms(2026, 2, 16)) == (1, {"basic": 1})

    jan, feb = q.mrr_movements(store, date(2026, 1, 1), 3)
    assert jan == q.MrrMovement(
        date(2026, 1, 1),
        "RUB",
        mrr_minor=149_700,
        new_minor=59_900,
        expansion_minor=30_000,
        contraction_minor=30_000,
        churn_minor=0,
        subscribers_at_start=2,
        subscribers=3,
        new_subscribers=1,
        churned_subscribers=0,
    )
    assert feb == q.MrrMovement(
        date(2026, 2, 1),
        "RUB",
        mrr_minor=0,
        new_minor=0,
        expansion_minor=0,
        contraction_minor=0,
        churn_minor=149_700,
        subscribers_at_start=3,
        subscribers=0,
        new_subscribers=0,
        churned_subscribers=3,
    )
    assert feb.churn_rate == 1.0
    january = q.totals_by_day(store, ms(2026, 1, 1), ms(2026, 2, 1))
    # Revenue is what was charged: the upgrade's prorated 200.00, not its plan's list price.
    assert sum(t.gross_minor for t in january) == 59_900 + 29_900 + 29_900 + 20_000
    assert sum(t.payments for t in january) == 4


# ---------------------------------------------------------------------------- MRR cache
class Recording:
    """A client that records the SQL it runs (which path a cached read took) and can refuse
    the cache's writes (a read-only user)."""

    def __init__(self, ch: ClickHouseClient, *, read_only: bool = False) -> None:
        self.ch = ch
        self.read_only = read_only
        self.sql: list[str] = []

    @property
    def embedded(self) -> bool:
        return self.ch.embedded

    @property
    def database(self) -> str:
        return self.ch.database

    def _write(self, what: str) -> None:
        if self.read_only:
            raise StoreError(f"readonly: {what}")

    def command(self, sql: str, params: Any = None) -> None:
        self.sql.append(sql)
        self._write(sql)
        self.ch.command(sql, params)

    def insert(self, table: str, rows: Any, columns: Any, dedup_token: str | None = None) -> None:
        self.sql.append(f"INSERT {table}")
        self._write(table)
        self.ch.insert(table, rows, columns, dedup_token)

    def insert_arrow(self, table: str, data: Any, dedup_token: str | None = None) -> None:
        self._write(table)
        self.ch.insert_arrow(table, data, dedup_token)

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        self.sql.append(sql)
        return self.ch.query(sql, params)

    def close(self) -> None:
        self.ch.close()

    def ran(self, sql: str) -> int:
        return self.sql.count(sql)


@pytest.fixture(scope="module")
def small_history() -> History:
    return synthetic_history(300, start_ms=T0, days=200, seed=17)


@pytest.fixture
def small(store: ClickHouseClient, small_history: History) -> ClickHouseClient:
    ingest(store, cut(small_history.events, 2000))
    return store


def mrr_now(month: date, days: int = 10) -> int:
    """An instant ``days`` into ``month``: the months before it are closed."""
    return ms(month.year, month.month, 1) + days * DAY_MS


def test_mrr_cache_answers_closed_months_from_the_cache(
    small: ClickHouseClient, small_history: History
) -> None:
    h, first = small_history, day(small_history.start_ms)
    expected = expected_mrr(h, first, 6)
    now = mrr_now(date(2026, 8, 1))  # January..June closed long ago
    cold = Recording(small)
    assert q.mrr_movements(cold, first, 6, now_ms=now) == expected
    assert cold.ran(q.MRR_MOVEMENTS) == 1
    assert small.query("SELECT uniqExact(month) FROM mrr_months") == [(6,)]
    warm = Recording(small)
    assert q.mrr_movements(warm, first, 6, now_ms=now) == expected
    assert warm.ran(q.MRR_MOVEMENTS) == warm.ran(q.MRR_MOVEMENTS_SEEDED) == 0
    assert q.mrr_movements(small, first, 6, cache=False) == expected


def test_mrr_cache_computes_open_months_from_the_state_at_the_last_close(
    small: ClickHouseClient, small_history: History
) -> None:
    """The months up to the last close are cached with the state at that close; the months
    after it (the current one) are computed from that state and the rows since."""
    h, first = small_history, day(small_history.start_ms)
    expected = expected_mrr(h, first, 7)
    now = mrr_now(date(2026, 5, 1))  # April the latest closed month, May and June open
    cold = Recording(small)
    assert q.mrr_movements(cold, first, 7, now_ms=now) == expected
    [(close, subscriptions)] = small.query("SELECT close, subscriptions FROM mrr_states")
    assert close == date(2026, 5, 1) and subscriptions > 100
    assert small.query("SELECT count() FROM mrr_state") == [(subscriptions,)]
    q.forget_mrr_answers()  # not from this process's memo: computed from the state
    warm = Recording(small)
    assert q.mrr_movements(warm, first, 7, now_ms=now) == expected
    assert (warm.ran(q.MRR_MOVEMENTS), warm.ran(q.MRR_MOVEMENTS_SEEDED)) == (0, 1)
    # A month later: May closes; it is computed from April's state, and so is May's state.
    later = Recording(small)
    assert q.mrr_movements(later, first, 7, now_ms=mrr_now(date(2026, 6, 1))) == expected
    assert (later.ran(q.MRR_MOVEMENTS), later.ran(q.MRR_MOVEMENTS_SEEDED)) == (0, 1)
    assert small.query("SELECT max(close) FROM mrr_states") == [(date(2026, 6, 1),)]
    assert q.mrr_movements(small, date(2026, 6, 1), 1, now_ms=mrr_now(date(2026, 6, 1))) == [
        m for m in expected if m.month == date(2026, 6, 1)
    ]


def test_mrr_cache_recomputes_after_late_events_for_closed_months(
    store: ClickHouseClient, small_history: History
) -> None:
    """Some subscriptions' events from mid-February on are delivered only after the months
    were cached (and the state at April's close built), as after a stalled history worker:
    the answers are then those of the whole history; January's are unchanged."""
    h, first = small_history, day(small_history.start_ms)
    now = mrr_now(date(2026, 5, 1))
    subs = sorted({a.subscription_id for a in h.access})[::10]
    held = {
        raw
        for raw in h.events
        if (e := decode_event(raw)).subscription_id in subs and e.occurred_at >= ms(2026, 2, 15)
    }
    ingest(store, cut([raw for raw in h.events if raw not in held], 2000))
    before = q.mrr_movements(store, first, 7, now_ms=now)
    ingest(store, [[raw for raw in h.events if raw in held]])
    after = Recording(store)
    got = q.mrr_movements(after, first, 7, now_ms=now)
    assert got == expected_mrr(h, first, 7)
    assert after.ran(q.MRR_MOVEMENTS) == 1  # no state kept before February: from scratch
    jan = date(2026, 1, 1)
    assert [m for m in got if m.month == jan] == [m for m in before if m.month == jan]
    assert [m for m in got if m.month == date(2026, 3, 1)] != [
        m for m in before if m.month == date(2026, 3, 1)
    ]
    q.forget_mrr_answers()
    warm = Recording(store)  # the state at April's close was rebuilt too
    assert q.mrr_movements(warm, first, 7, now_ms=now) == got
    assert (warm.ran(q.MRR_MOVEMENTS), warm.ran(q.MRR_MOVEMENTS_SEEDED)) == (0, 1)


def test_mrr_cache_sees_a_late_payment_request(store: ClickHouseClient) -> None:
    """An activation whose request arrives after the month was cached: unpriced (no MRR)
    until then, priced once it is in."""
    life = Life("late-request")
    request, succeeded, activated = life.pay(
        ms(2026, 1, 10), "basic", 29_900, start=ms(2026, 1, 10)
    )
    ingest(store, [[succeeded, activated]])
    now = mrr_now(date(2026, 4, 1))
    assert q.mrr_movements(store, date(2026, 1, 1), 2, now_ms=now) == []
    ingest(store, [[request]])
    jan, feb = q.mrr_movements(store, date(2026, 1, 1), 2, now_ms=now)
    assert (jan.mrr_minor, jan.new_subscribers, feb.mrr_minor) == (29_900, 1, 0)


def test_mrr_cache_unwritable_or_missing_still_answers(
    small: ClickHouseClient, small_history: History
) -> None:
    first = day(small_history.start_ms)
    expected = expected_mrr(small_history, first, 7)
    now = mrr_now(date(2026, 5, 1))
    read_only = Recording(small, read_only=True)
    assert q.mrr_movements(read_only, first, 7, now_ms=now) == expected
    assert small.query("SELECT count() FROM mrr_months") == [(0,)]
    for table in ("mrr_months", "mrr_states", "mrr_state"):
        small.command(f"DROP TABLE {table}")
    assert q.mrr_movements(small, first, 7, now_ms=now) == expected


def test_mrr_cache_drops_superseded_state_builds(small: ClickHouseClient) -> None:
    """Kept: the newest build at each of the STATE_CLOSES latest closes, the one just built
    and any younger than STATE_KEEP_S; the rest is dropped."""
    cache = q.MrrCache(small, mrr_now(date(2026, 8, 1)))
    old = 1_700_000_000_000  # long before STATE_KEEP_S

    def build(i: int, at: int = old) -> str:
        small.command(
            "INSERT INTO mrr_state (build_id, subscription_id) VALUES ({b:String}, 's')",
            {"b": f"{at + i:013d}{i:012x}"},
        )
        return f"{at + i:013d}{i:012x}"

    listed = {
        (date(2026, m, 1), n): build(10 * m + n) for m in (3, 4, 5, 6) for n in (0, 1)
    }  # two builds at each of four closes, the second one newer
    for (close, n), build_id in listed.items():
        small.insert(
            "mrr_states",
            [(close, build_id, "fp", 1, datetime(2026, 7, 1, n, tzinfo=UTC))],
            COLUMNS["mrr_states"],
        )
    unlisted, just_built = build(1), build(2)
    young = build(3, int(time.time() * 1000))
    cache.drop_old_states(keep=just_built)
    left = {b for (b,) in small.query("SELECT DISTINCT build_id FROM mrr_state")}
    newest = {listed[date(2026, m, 1), 1] for m in (4, 5, 6)}
    assert left == newest | {just_built, young}
    assert unlisted not in left and listed[date(2026, 3, 1), 1] not in left


def test_mrr_cache_recomputes_a_late_month_from_the_state_before_it(
    store: ClickHouseClient, small_history: History
) -> None:
    """Events of late May delivered after June's first read (a worker that lagged across the
    month's close): May on are recomputed from the state at May's opening, kept since."""
    h, first = small_history, day(small_history.start_ms)
    subs = sorted({a.subscription_id for a in h.access})[::7]
    held = {
        raw
        for raw in h.events
        if (e := decode_event(raw)).subscription_id in subs and e.occurred_at >= ms(2026, 5, 20)
    }
    ingest(store, cut([raw for raw in h.events if raw not in held], 2000))
    q.mrr_movements(store, first, 7, now_ms=mrr_now(date(2026, 5, 1)))  # state at May 1
    june = mrr_now(date(2026, 6, 1))
    before = q.mrr_movements(store, first, 7, now_ms=june)  # May closes: state at June 1
    assert store.query("SELECT close FROM mrr_states ORDER BY close") == [
        (date(2026, 5, 1),),
        (date(2026, 6, 1),),
    ]
    ingest(store, [[raw for raw in h.events if raw in held]])
    late = Recording(store)
    got = q.mrr_movements(late, first, 7, now_ms=june)
    assert got == expected_mrr(h, first, 7) != before
    assert (late.ran(q.MRR_MOVEMENTS), late.ran(q.MRR_MOVEMENTS_SEEDED)) == (0, 1)


def test_mrr_repeated_reads_are_answered_from_memory_until_a_row_arrives(
    small: ClickHouseClient, small_history: History
) -> None:
    first = day(small_history.start_ms)
    now = mrr_now(date(2026, 5, 1))
    expected = q.mrr_movements(small, first, 7, now_ms=now)
    again = Recording(small)
    assert q.mrr_movements(again, first, 7, now_ms=now) == expected
    assert again.sql == [q.MRR_FINGERPRINT, q.MRR_CACHED]  # no MRR computed
    life = Life("arrives-in-june")
    ingest(small, [life.pay(ms(2026, 6, 3), "premium", 59_900, start=ms(2026, 6, 3))])
    after = Recording(small)
    got = q.mrr_movements(after, first, 7, now_ms=now)
    assert after.ran(q.MRR_MOVEMENTS_SEEDED) == 1
    june = [m for m in got if m.month == date(2026, 6, 1) and m.currency == "RUB"]
    june_before = [m for m in expected if m.month == date(2026, 6, 1) and m.currency == "RUB"]
    assert june[0].new_minor == june_before[0].new_minor + 59_900
