"""The console's pure parts: Idempotency-Keys per user action, the session, tables (pages,
CSV that a spreadsheet cannot execute, money) and the chart builders."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd

from dashboard import charts, tables
from dashboard.state import ActionKeys, Session
from schemas.http import (
    AdminPaymentOut,
    AdminPlanOut,
    DeclineReasonOut,
    DiscrepancyDayOut,
    DunningMonth,
    MoneyOut,
    MrrMonth,
    PlanPriceOut,
    RevenueDay,
    SessionOut,
    SuccessDay,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def keys(clock: Clock) -> ActionKeys:
    counter = iter(range(1000))
    return ActionKeys(replay_window_s=60, new_key=lambda: f"k{next(counter)}", clock=clock)


# ----------------------------------------------------------------------- action keys
def test_a_retry_of_the_same_action_reuses_its_key() -> None:
    ak = keys(Clock())
    body = {"reason": "dup"}
    first = ak.key_for("refund:p1", body)
    assert ak.pending("refund:p1")
    assert ak.key_for("refund:p1", dict(body)) == first  # unknown outcome: same key


def test_a_changed_body_or_another_action_gets_a_new_key() -> None:
    ak = keys(Clock())
    a = ak.key_for("refund:p1", {"reason": "a"})
    assert ak.key_for("refund:p1", {"reason": "b"}) != a
    assert ak.key_for("refund:p2", {"reason": "b"}) not in (a,)


def test_a_double_click_after_success_replays_then_a_later_repeat_is_new() -> None:
    clock = Clock()
    ak = keys(clock)
    first = ak.key_for("extend:s", {"days": 1})
    ak.settle("extend:s")
    clock.t = 5
    assert ak.key_for("extend:s", {"days": 1}) == first  # the API answers the first answer
    clock.t = 61
    assert ak.key_for("extend:s", {"days": 1}) != first  # a deliberate new extension


def test_after_a_refusal_the_next_try_is_a_new_action() -> None:
    ak = keys(Clock())
    first = ak.key_for("cancel:s", {"reason": "x"})
    ak.forget("cancel:s")
    assert ak.key_for("cancel:s", {"reason": "x"}) != first


def test_session_expiry_has_a_margin() -> None:
    out = SessionOut(
        access_token="t",
        expires_in=900,
        expires_at=NOW + timedelta(seconds=900),
        user_id="ops",
        roles=["admin"],
    )
    s = Session.of(out)
    assert not s.expired(NOW)
    assert s.remaining_s(NOW) == 900
    assert s.expired(NOW + timedelta(seconds=897))


# ---------------------------------------------------------------------------- tables
def test_csv_defuses_formulas_in_text_but_not_numbers() -> None:
    frame = pd.DataFrame(
        {
            "reason": ['=HYPERLINK("http://x")', "+1", "@SUM(A1)", "-2+3", "fine", "\tx"],
            "amount": [-1, 2, 3, 4, 5, 6],
        }
    )
    out = pd.read_csv(io.BytesIO(tables.csv_bytes(frame)), keep_default_na=False)
    assert list(out["reason"]) == [
        '\'=HYPERLINK("http://x")',
        "'+1",
        "'@SUM(A1)",
        "'-2+3",
        "fine",
        "'\tx",
    ]
    assert list(out["amount"]) == [-1, 2, 3, 4, 5, 6]


def test_pages_are_clamped() -> None:
    frame = pd.DataFrame({"n": range(60)})
    assert tables.page_count(60, 25) == 3 and tables.page_count(0, 25) == 1
    assert list(tables.paginate(frame, 3, 25)["n"]) == list(range(50, 60))
    assert list(tables.paginate(frame, 9, 25)["n"]) == list(range(50, 60))
    assert list(tables.paginate(frame, 0, 25)["n"]) == list(range(25))


def test_money_is_exact_and_readable() -> None:
    assert tables.to_decimal(29900, "RUB") == Decimal("299.00")
    assert tables.money(123456789, "RUB") == "1\u202f234\u202f567.89 RUB"
    assert tables.money(-150, "RUB") == "-1.50 RUB"
    assert tables.major(29900, "RUB") == 299.0
    assert tables.percent(None) == "—" and tables.percent(0.5) == "50.0%"


def _payment(status: str, value: str, refunded: str | None) -> AdminPaymentOut:
    return AdminPaymentOut(
        payment_id="p",
        subscription_id="s",
        plan_id="monthly",
        status=status,
        status_reason=None,
        amount=MoneyOut(value=value, currency="RUB"),
        amount_minor=None,
        confirmation_url=None,
        provider_payment_id=None,
        period_start=None,
        period_end=None,
        created_at=NOW,
        updated_at=NOW,
        kind="purchase",
        refunded=MoneyOut(value=refunded, currency="RUB") if refunded else None,
        price_version=1,
        command_id="c",
    )


def test_refundable_is_what_is_left_of_a_succeeded_payment() -> None:
    assert tables.refundable(_payment("succeeded", "299.00", None)) == Decimal("299.00")
    assert tables.refundable(_payment("succeeded", "299.00", "100.00")) == Decimal("199.00")
    assert tables.refundable(_payment("succeeded", "299.00", "299.00")) == 0
    assert tables.refundable(_payment("pending", "299.00", None)) == 0


def test_plans_frame_shows_the_next_scheduled_price() -> None:
    def price(v: int, value: str, at: datetime | None) -> PlanPriceOut:
        return PlanPriceOut(
            version=v,
            price=MoneyOut(value=value, currency="RUB"),
            amount_minor=int(Decimal(value) * 100),
            effective_from=at,
            created_by="admin:ops",
            reason="r",
            created_at=NOW,
        )

    plan = AdminPlanOut(
        plan_id="monthly",
        name="Monthly",
        period_months=1,
        trial_days=0,
        archived=False,
        price=MoneyOut(value="299.00", currency="RUB"),
        price_version=1,
        prices=[price(1, "299.00", None), price(2, "349.00", NOW + timedelta(days=10))],
        created_at=NOW - timedelta(days=30),
        updated_at=NOW,
    )
    row = tables.plans_frame([plan], NOW).iloc[0]
    assert row["price"] == "299.00 RUB" and row["next_price"] == "349.00 RUB"
    prices = tables.prices_frame([plan])
    assert list(prices["price"]) == [299.0, 349.0]
    assert prices["effective_from"].iloc[0] == plan.created_at
    assert charts.price_history_chart(prices) is not None


# ---------------------------------------------------------------------------- charts
def _spec(chart: Any) -> dict[str, Any]:
    assert chart is not None
    spec: dict[str, Any] = chart.to_dict()
    return spec


def test_charts_of_empty_series_are_none() -> None:
    assert charts.revenue_chart([], "RUB") is None
    assert charts.mrr_chart([], "RUB") is None
    assert charts.success_chart([]) is None
    assert charts.declines_chart([]) is None
    assert charts.dunning_chart([]) is None
    assert charts.by_plan_chart({}) is None
    assert charts.timeline_chart(tables.events_frame([])) is None
    assert charts.run_counts_chart(tables.run_counts_frame([])) is None
    assert charts.discrepancies_chart([]) is None


def test_revenue_is_drawn_per_currency_never_summed_across() -> None:
    rows = [
        RevenueDay(
            day=date(2026, 11, 1),
            currency="RUB",
            plan_id="monthly",
            gross_minor=29900,
            refunds_minor=10000,
            net_minor=19900,
            payments=1,
            refunds=1,
        ),
        RevenueDay(
            day=date(2026, 11, 1),
            currency="USD",
            plan_id="monthly",
            gross_minor=500,
            refunds_minor=0,
            net_minor=500,
            payments=1,
            refunds=0,
        ),
    ]
    assert charts.currencies(rows) == ["RUB", "USD"]
    frame = charts.revenue_frame(rows, "RUB")
    assert list(frame["net"]) == [199.0]
    spec = _spec(charts.revenue_chart(rows, "RUB"))
    assert len(spec["layer"]) == 2
    _spec(charts.revenue_by_plan_chart(rows, "USD"))
    _spec(charts.plan_totals_chart(rows, "RUB"))


def test_mrr_movements_go_down_for_contraction_and_churn() -> None:
    row = MrrMonth(
        month=date(2026, 10, 1),
        currency="RUB",
        mrr_minor=100000,
        new_minor=30000,
        expansion_minor=1000,
        contraction_minor=2000,
        churn_minor=5000,
        subscribers_at_start=10,
        subscribers=12,
        new_subscribers=3,
        churned_subscribers=1,
    )
    assert row.net_new_minor == 24000 and row.churn_rate == 0.1
    frame = charts.mrr_frame([row], "RUB")
    assert frame.iloc[0]["churn"] == -50.0 and frame.iloc[0]["contraction"] == -20.0
    _spec(charts.mrr_chart([row], "RUB"))
    _spec(charts.churn_chart([row], "RUB"))


def test_other_charts_build() -> None:
    _spec(charts.success_chart([SuccessDay(day=date(2026, 11, 1), succeeded=9, canceled=1)]))
    _spec(
        charts.declines_chart(
            [
                DeclineReasonOut(
                    reason="insufficient_funds", party="yoo_money", payments=3, share=1.0
                )
            ]
        )
    )
    _spec(
        charts.dunning_chart(
            [DunningMonth(month=date(2026, 11, 1), episodes=4, recovered=2, lost=1)]
        )
    )
    _spec(charts.by_plan_chart({"monthly": 3, "yearly": 1}))
    _spec(charts.class_counts_chart({"matched": 10, "amount_mismatch": 1, "in_flight": 0}))
    spec = _spec(
        charts.discrepancies_chart(
            [
                DiscrepancyDayOut(
                    day=date(2026, 11, 1), kind="amount_mismatch", status="open", items=2
                ),
                DiscrepancyDayOut(
                    day=date(2026, 11, 1), kind="missing_internal", status="repaired", items=5
                ),
            ]
        )
    )
    statuses = {row["status"] for row in spec["datasets"][next(iter(spec["datasets"]))]}
    assert statuses == {"open", "resolved"}  # repaired counts as resolved


def test_typed_text_cannot_format_link_or_load_images_in_markdown() -> None:
    hostile = "![pixel](http://evil.example/p.png) [click](javascript:x) **bold** $x$ <b>"
    escaped = tables.md(hostile)
    for raw in ("![", "](", "**", "http://", "$x$", "<b>"):
        assert raw not in escaped
    assert tables.md("a\nb\tc") == "a b c"
    assert tables.md("browser-1") == "browser\\-1"
