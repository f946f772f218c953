"""The console's pages run headless (Streamlit's AppTest) against a fake admin API: nothing
renders without a login, every page renders, and the actions send what they should, each
with an Idempotency-Key that a retry of the same action keeps."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from streamlit.testing.v1 import AppTest

from billing.config import Settings
from schemas.http import (
    AdminPaymentOut,
    AdminPlanOut,
    AdminRefundOut,
    AdminSubscriptionDetail,
    AdminSubscriptionOut,
    CommandOut,
    DiscrepancyOut,
    EventOut,
    MoneyOut,
    PlanPriceOut,
    PlanRef,
    RunOut,
)

NOW = datetime.now(UTC).replace(microsecond=0)
USER = "alice"
SUB = str(uuid.uuid5(uuid.NAMESPACE_URL, "sub-alice"))
PAYMENT = str(uuid.uuid5(uuid.NAMESPACE_URL, "pay-alice"))
RUN = str(uuid.uuid5(uuid.NAMESPACE_URL, "run-1"))
TIMEOUT = 60


def _money(value: str) -> MoneyOut:
    return MoneyOut(value=value, currency="RUB")


def _command(command_id: str, kind: str, status: str = "done") -> CommandOut:
    return CommandOut(
        command_id=command_id,
        command_type=kind,
        subscription_id=SUB,
        user_id=USER,
        payment_id=PAYMENT,
        status=status,
        status_reason=None,
        publish_attempts=1,
        published_at=NOW,
        next_publish_at=NOW,
        last_error=None,
        created_at=NOW,
        updated_at=NOW,
    )


class FakeApi:
    """Just enough of the admin API, in memory; records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.analytics_up = False
        self.fail_writes = 0  # answer the next N writes 503 database_unavailable
        self.refuse_token = False  # answer everything 401 (a revoked or expired token)
        self.seeded = False
        self.replies: dict[str, dict[str, Any]] = {}  # Idempotency-Key → first answer
        self.refunds: list[AdminRefundOut] = []
        self.commands: dict[str, CommandOut] = {}
        self.plans = [self._plan("monthly", "Monthly", "299.00")]
        self.open_items = [self._item()]

    # ------------------------------------------------------------------------- objects
    @staticmethod
    def _plan(plan_id: str, name: str, value: str) -> AdminPlanOut:
        return AdminPlanOut(
            plan_id=plan_id,
            name=name,
            period_months=1,
            trial_days=0,
            archived=False,
            price=_money(value),
            price_version=1,
            prices=[
                PlanPriceOut(
                    version=1,
                    price=_money(value),
                    amount_minor=int(float(value) * 100),
                    effective_from=None,
                    created_by="seed",
                    reason="seed",
                    created_at=NOW - timedelta(days=40),
                )
            ],
            created_at=NOW - timedelta(days=40),
            updated_at=NOW - timedelta(days=40),
        )

    @staticmethod
    def _item() -> DiscrepancyOut:
        return DiscrepancyOut(
            item_key="payment:pp-1:amount_mismatch",
            object="payment",
            kind="amount_mismatch",
            discrepancy=True,
            subscription_id=SUB,
            payment_id=PAYMENT,
            refund_id=None,
            provider_id="pp-1",
            ours_status="succeeded",
            theirs_status="succeeded",
            ours_amount=_money("299.00"),
            theirs_amount=_money("290.00"),
            repair="escalate",
            detail="amounts differ",
            first_run_id=RUN,
            last_run_id=RUN,
            first_seen_at=NOW,
            last_seen_at=NOW,
            repaired_at=None,
            resolution=None,
            resolved_by=None,
            resolved_at=None,
            note="",
        )

    def subscription(self) -> AdminSubscriptionOut:
        return AdminSubscriptionOut(
            subscription_id=SUB,
            status="active",
            active=True,
            plan=PlanRef(plan_id="monthly", name="Monthly"),
            plan_price=_money("299.00"),
            period_start=NOW - timedelta(days=1),
            period_end=NOW + timedelta(days=29),
            updated_at=NOW,
            auto_renew=True,
            user_id=USER,
            version=3,
        )

    def payment(self) -> AdminPaymentOut:
        refunded = sum(float(r.amount.value) for r in self.refunds if r.amount)
        return AdminPaymentOut(
            payment_id=PAYMENT,
            subscription_id=SUB,
            plan_id="monthly",
            status="succeeded",
            status_reason=None,
            amount=_money("299.00"),
            amount_minor=29900,
            confirmation_url=None,
            provider_payment_id="pp-1",
            period_start=NOW - timedelta(days=1),
            period_end=NOW + timedelta(days=29),
            created_at=NOW - timedelta(days=1),
            updated_at=NOW,
            kind="purchase",
            refunded=_money(f"{refunded:.2f}") if refunded else None,
            price_version=1,
            command_id=str(uuid.uuid4()),
        )

    def detail(self) -> AdminSubscriptionDetail:
        events = [
            EventOut(
                event_id=str(uuid.uuid4()),
                version=v,
                event_type=t,
                occurred_at=NOW - timedelta(hours=24 - v),
                causation_id="c",
                body={"actor": "user:alice"} if v == 1 else {},
            )
            for v, t in (
                (1, "PaymentRequested"),
                (2, "PaymentSucceeded"),
                (3, "SubscriptionActivated"),
            )
        ]
        return AdminSubscriptionDetail(
            subscription=self.subscription(),
            payments=[self.payment()],
            refunds=self.refunds,
            commands=list(self.commands.values()),
            events=events,
            events_next_after=None,
        )

    # ------------------------------------------------------------------------- handler
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def writes(self, path_part: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method != "GET" and path_part in r.url.path]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if self.refuse_token and path != "/api/v1/admin/session":
            return _error(401, "token_expired")
        if path == "/api/v1/admin/session":
            status, body = self._write(request)
            return httpx.Response(status, json=body)
        if method != "GET":
            key = request.headers.get("idempotency-key")
            assert key, f"{method} {path} without an Idempotency-Key"
            if self.fail_writes:
                self.fail_writes -= 1
                return _error(503, "database_unavailable")
            if key in self.replies:
                first = self.replies[key]
                return httpx.Response(
                    first["status"], json=first["body"], headers={"Idempotent-Replayed": "true"}
                )
            status, body = self._write(request)
            if status < 400:
                self.replies[key] = {"status": status, "body": body}
            return httpx.Response(status, json=body)
        return self._read(request)

    def _read(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/admin/plans":
            return _ok([p.model_dump(mode="json") for p in self.plans])
        if path == "/api/v1/admin/subscriptions":
            user = request.url.params.get("user_id")
            found = [self.subscription()] if user in (None, USER) else []
            return _ok({"items": [s.model_dump(mode="json") for s in found], "next_cursor": None})
        if path == f"/api/v1/admin/subscriptions/{SUB}":
            return _ok(self.detail().model_dump(mode="json"))
        if path == "/api/v1/admin/commands":
            return _ok([])
        if m := re.fullmatch(r"/api/v1/admin/commands/(.+)", path):
            return _ok(self.commands[m.group(1)].model_dump(mode="json"))
        if path.startswith("/api/v1/admin/analytics/"):
            if not self.analytics_up:
                return _error(503, "analytics_unavailable", "the history worker does not answer")
            return _ok(ANALYTICS[path.rsplit("/", 1)[1]])
        if path == "/api/v1/admin/reconciliation/summary":
            return _ok(
                {
                    "open_discrepancies": len(self.open_items),
                    "open_by_kind": {"amount_mismatch": len(self.open_items)},
                    "last_run": RUN_OUT.model_dump(mode="json"),
                }
            )
        if path == "/api/v1/admin/reconciliation/runs":
            return _ok({"items": [RUN_OUT.model_dump(mode="json")], "next_offset": None})
        if path == "/api/v1/admin/reconciliation/discrepancies":
            items = [i.model_dump(mode="json") for i in self.open_items]
            return _ok({"items": items, "next_offset": None})
        return _error(404, "not_found")

    def _write(self, request: httpx.Request) -> tuple[int, Any]:
        path = request.url.path
        body = json.loads(request.content or b"{}")
        if path == "/api/v1/admin/session":
            if body == {"username": "ops", "password": "pw"}:
                return 200, {
                    "access_token": "token-ops",
                    "token_type": "bearer",
                    "expires_in": 900,
                    # From now, not NOW (the module's import: a whole suite's run earlier).
                    "expires_at": (datetime.now(UTC) + timedelta(seconds=900)).isoformat(),
                    "user_id": "ops",
                    "roles": ["admin"],
                }
            return 400, _error_body("invalid_credentials", "the username or the password is wrong")
        assert request.headers.get("authorization") == "Bearer token-ops"
        if path == f"/api/v1/admin/payments/{PAYMENT}/refunds":
            command_id, refund_id = str(uuid.uuid4()), str(uuid.uuid4())
            amount = body.get("amount") or {"value": "299.00", "currency": "RUB"}
            self.refunds.append(
                AdminRefundOut(
                    refund_id=refund_id,
                    payment_id=PAYMENT,
                    status="succeeded",
                    status_reason=None,
                    amount=MoneyOut(**amount),
                    provider_refund_id="pr-1",
                    reason=body["reason"],
                    created_at=NOW,
                    updated_at=NOW,
                    actor="admin:ops",
                    command_id=command_id,
                )
            )
            self.commands[command_id] = _command(command_id, "RefundPayment")
            return 202, {
                "command_id": command_id,
                "refund_id": refund_id,
                "payment_id": PAYMENT,
                "subscription_id": SUB,
                "status": "accepted",
                "status_url": f"/api/v1/admin/commands/{command_id}",
            }
        if m := re.fullmatch(rf"/api/v1/admin/subscriptions/{SUB}/([a-z-]+)", path):
            command_id = str(uuid.uuid4())
            self.commands[command_id] = _command(command_id, "AdminAdjust")
            return 202, {
                "command_id": command_id,
                "subscription_id": SUB,
                "action": m.group(1),
                "status": "accepted",
                "status_url": f"/api/v1/admin/commands/{command_id}",
            }
        if path == "/api/v1/admin/plans":
            plan = self._plan(body["plan_id"], body["name"], body["price"]["value"])
            self.plans.append(plan)
            return 201, plan.model_dump(mode="json")
        if path == "/api/v1/admin/reconciliation/resolutions":
            item = self.open_items.pop(0)
            decided = item.model_copy(
                update={"resolution": body["resolution"], "resolved_by": "admin:ops"}
            )
            return 200, {
                "item": decided.model_dump(mode="json"),
                "changed": True,
                "ledger_correction": False,
            }
        return 404, _error_body("not_found", "no such route in the fake")


def _ok(body: Any) -> httpx.Response:
    return httpx.Response(200, json=body)


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": None}}


def _error(status: int, code: str, message: str = "") -> httpx.Response:
    return httpx.Response(status, json=_error_body(code, message or code))


RUN_OUT = RunOut(
    run_id=RUN,
    status="finished",
    source="provider_api",
    source_ref="",
    trigger="nightly",
    window_start=NOW - timedelta(days=1),
    window_end=NOW,
    taken_at=NOW,
    lines=120,
    partitions=4,
    partitions_done=4,
    incomplete_partitions=0,
    counts={"matched": 119, "amount_mismatch": 1},
    totals={"payments_ours": {"RUB": "35581.00"}, "payments_theirs": {"RUB": "35572.00"}},
    discrepancies=1,
    new_discrepancies=1,
    unresolved=1,
    started_at=NOW - timedelta(minutes=5),
    fed_at=NOW - timedelta(minutes=4),
    finished_at=NOW - timedelta(minutes=3),
    duration_ms=120_000,
    error=None,
)

TODAY = NOW.date().isoformat()
MONTH = NOW.date().replace(day=1).isoformat()
REVENUE = [
    {
        "day": TODAY,
        "currency": "RUB",
        "plan_id": "monthly",
        "gross_minor": 89700,
        "refunds_minor": 29900,
        "net_minor": 59800,
        "payments": 3,
        "refunds": 1,
    },
]
SUCCESS = [{"day": TODAY, "succeeded": 3, "canceled": 1}]
DECLINES = [{"reason": "insufficient_funds", "party": "yoo_money", "payments": 1, "share": 1.0}]
MRR = [
    {
        "month": MONTH,
        "currency": "RUB",
        "mrr_minor": 89700,
        "new_minor": 89700,
        "expansion_minor": 0,
        "contraction_minor": 0,
        "churn_minor": 0,
        "subscribers_at_start": 0,
        "subscribers": 3,
        "new_subscribers": 3,
        "churned_subscribers": 0,
    },
]
REFUND_RATE = [
    {"currency": "RUB", "gross_minor": 89700, "refunds_minor": 29900, "payments": 3, "refunds": 1}
]
DUNNING = [{"month": MONTH, "episodes": 1, "recovered": 1, "lost": 0}]
ACTIVE = {"at_ms": int(NOW.timestamp() * 1000), "total": 3, "by_plan": {"monthly": 3}}
ANALYTICS: dict[str, Any] = {
    "overview": {
        "revenue": REVENUE,
        "active": ACTIVE,
        "success": SUCCESS,
        "declines": DECLINES,
        "mrr": MRR,
        "refund_rate": REFUND_RATE,
        "dunning": DUNNING,
    },
    "revenue": REVENUE,
    "payment-success": SUCCESS,
    "decline-reasons": DECLINES,
    "refund-rate": REFUND_RATE,
    "dunning": DUNNING,
    "mrr": MRR,
    "active-subscribers": ACTIVE,
    "discrepancies": [
        {"day": "2026-11-20", "kind": "missing_internal", "status": "repaired", "items": 2},
        {"day": "2026-11-21", "kind": "amount_mismatch", "status": "open", "items": 1},
    ],
}

# The fake the running script talks to (AppTest runs the script in this process).
CURRENT: list[FakeApi] = []


def run_app() -> None:
    """The whole app (login gate and navigation) against the current fake."""
    from dashboard.app import main

    settings = Settings(
        env="test",
        dashboard_api_url="http://api.test",
        dashboard_admin_password_hash=SecretStr("unused"),
    )
    main(settings=settings, transport=CURRENT[-1].transport())


def run_app_with_session(expires_in_s: int) -> None:
    """The app for an admin whose session (from an earlier run) ends in ``expires_in_s``."""
    import streamlit as st

    from dashboard import ui
    from dashboard.state import Session

    fake = CURRENT[-1]
    if not fake.seeded:  # once: a logout clears the session state, not this
        fake.seeded = True
        st.session_state[ui.SESSION] = Session(
            "token-ops", "ops", datetime.now(UTC) + timedelta(seconds=expires_in_s)
        )
    run_app()


def run_page(name: str) -> None:
    """One page, already logged in, against the current fake."""
    import streamlit as st

    from dashboard import ui
    from dashboard.state import Session
    from dashboard.views import actions, analytics, overview, plans, reconciliation, subscriptions

    ui.configure(ui.ConsoleConfig(api_url="http://api.test"), CURRENT[-1].transport())
    if ui.SESSION not in st.session_state:
        st.session_state[ui.SESSION] = Session(
            "token-ops", "ops", datetime.now(UTC) + timedelta(hours=1)
        )
    views = {
        "overview": overview,
        "subscriptions": subscriptions,
        "actions": actions,
        "plans": plans,
        "reconciliation": reconciliation,
        "analytics": analytics,
    }
    views[name].render()


@pytest.fixture
def fake() -> FakeApi:
    CURRENT.append(FakeApi())
    return CURRENT[-1]


def app_test(tmp_path: Path, body: str) -> AppTest:
    script = tmp_path / "console_script.py"
    script.write_text(
        "from tests.unit.test_dashboard_app import run_app, run_app_with_session, run_page\n"
        f"{body}\n"
    )
    return AppTest.from_file(str(script), default_timeout=TIMEOUT)


def texts(at: AppTest) -> str:
    parts: list[str] = []
    for kind in (
        "title",
        "subheader",
        "markdown",
        "caption",
        "success",
        "warning",
        "error",
        "info",
    ):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return "\n".join(parts)


def button(at: AppTest, label: str) -> Any:
    for b in at.button:
        if b.label == label:
            return b
    raise AssertionError(f"no button {label!r} in {[b.label for b in at.button]}")


def text_input(at: AppTest, label: str) -> Any:
    for t in at.text_input:
        if t.label == label:
            return t
    raise AssertionError(f"no input {label!r} in {[t.label for t in at.text_input]}")


# ------------------------------------------------------------------------------ login gate
def test_nothing_renders_without_a_login(tmp_path: Path, fake: FakeApi) -> None:
    at = app_test(tmp_path, "run_app()")
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Cinema billing · admin console"]
    assert [t.label for t in at.text_input] == ["Username", "Password"]
    assert not fake.requests  # not one read before a login


def test_a_wrong_password_is_said_so_and_a_right_one_opens_the_console(
    tmp_path: Path, fake: FakeApi
) -> None:
    at = app_test(tmp_path, "run_app()")
    at.run()
    text_input(at, "Username").input("ops")
    text_input(at, "Password").input("nope")
    button(at, "Log in").click().run()
    assert "Wrong username or password." in texts(at)
    text_input(at, "Password").input("pw")
    button(at, "Log in").click().run()
    assert not at.exception, at.exception
    page = texts(at)
    assert "Overview" in page
    assert "Analytics are not available right now" in page  # 503: said, not a crash
    assert "Open discrepancies=1" in page
    assert all(
        r.headers.get("authorization") == "Bearer token-ops"
        for r in fake.requests
        if r.url.path != "/api/v1/admin/session"
    )


# ----------------------------------------------------------------------------------- pages
@pytest.mark.parametrize(
    "page", ["overview", "subscriptions", "actions", "plans", "reconciliation", "analytics"]
)
@pytest.mark.parametrize("analytics_up", [False, True])
def test_every_page_renders(tmp_path: Path, fake: FakeApi, page: str, analytics_up: bool) -> None:
    fake.analytics_up = analytics_up
    at = app_test(tmp_path, f"run_page({page!r})")
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_overview_shows_today_from_the_analytics(tmp_path: Path, fake: FakeApi) -> None:
    fake.analytics_up = True
    at = app_test(tmp_path, "run_page('overview')")
    at.run()
    page = texts(at)
    assert "Revenue today (net)=598.00 RUB" in page
    assert "Payment success today=75.0%" in page
    assert "Active subscribers=3" in page


def test_search_a_user_and_see_the_subscription(tmp_path: Path, fake: FakeApi) -> None:
    at = app_test(tmp_path, "run_page('subscriptions')")
    at.run()
    text_input(at, "User id").input(USER)
    button(at, "Search").click().run()
    assert not at.exception, at.exception
    page = texts(at)
    assert f"Subscription of {USER}" in page
    assert "Status=active" in page
    searched = [r for r in fake.requests if r.url.path == "/api/v1/admin/subscriptions"]
    assert searched[-1].url.params["user_id"] == USER


def test_a_full_refund_goes_through_the_api_and_appears(tmp_path: Path, fake: FakeApi) -> None:
    at = app_test(tmp_path, "run_page('actions')")
    at.run()
    text_input(at, "Subscription id or user id").input(USER)
    button(at, "Load").click().run()
    text_input(at, "Reason (recorded in the audit trail)").input("customer complaint")
    button(at, "Refund").click().run()
    assert not at.exception, at.exception
    (sent,) = fake.writes("/refunds")
    assert json.loads(sent.content) == {"reason": "customer complaint"}
    page = texts(at)
    assert "refund" in page and "succeeded" in page
    assert "Refunds (1)" in page


def test_a_partial_refund_over_what_is_left_is_not_sent(tmp_path: Path, fake: FakeApi) -> None:
    at = app_test(tmp_path, "run_page('actions')")
    at.run()
    text_input(at, "Subscription id or user id").input(SUB)
    button(at, "Load").click().run()
    at.radio[0].set_value("Partial")
    text_input(at, "Partial amount").input("300.00")
    text_input(at, "Reason (recorded in the audit trail)").input("too much")
    button(at, "Refund").click().run()
    assert "at most 299.00 is left" in texts(at)
    assert not fake.writes("/refunds")


def test_a_retry_after_an_unknown_outcome_keeps_the_key(tmp_path: Path, fake: FakeApi) -> None:
    at = app_test(tmp_path, "run_page('actions')")
    at.run()
    text_input(at, "Subscription id or user id").input(SUB)
    button(at, "Load").click().run()
    fake.fail_writes = 3  # the client's own two retries fail too
    text_input(at, "Reason (recorded in the audit trail)").input("retry me")
    button(at, "Refund").click().run()
    assert "press the button again" in texts(at)
    button(at, "Refund").click().run()
    sent = fake.writes("/refunds")
    assert len(sent) == 4
    assert len({r.headers["idempotency-key"] for r in sent}) == 1
    assert len(fake.refunds) == 1


def test_extend_needs_a_reason_and_sends_days(tmp_path: Path, fake: FakeApi) -> None:
    at = app_test(tmp_path, "run_page('actions')")
    at.run()
    text_input(at, "Subscription id or user id").input(SUB)
    button(at, "Load").click().run()
    button(at, "Extend").click().run()
    assert "give a reason" in texts(at)
    at.number_input[0].set_value(10)
    for t in at.text_input:
        if t.key == "extend-reason":
            t.input("outage compensation")
    button(at, "Extend").click().run()
    assert not at.exception, at.exception
    (sent,) = fake.writes("/extend")
    assert json.loads(sent.content) == {"days": 10, "reason": "outage compensation"}


def test_create_a_plan(tmp_path: Path, fake: FakeApi) -> None:
    at = app_test(tmp_path, "run_page('plans')")
    at.run()
    text_input(at, "Plan id").input("weekly")
    text_input(at, "Name").input("Weekly")
    text_input(at, "Price").input("99.00")
    for t in at.text_input:
        if t.key == "plan-create-reason":
            t.input("new offer")
    button(at, "Create plan").click().run()
    assert not at.exception, at.exception
    (sent,) = fake.writes("/api/v1/admin/plans")
    body = json.loads(sent.content)
    assert body["plan_id"] == "weekly" and body["price"] == {"value": "99.00", "currency": "RUB"}
    assert "Plan weekly created." in texts(at)


def test_resolve_an_escalation(tmp_path: Path, fake: FakeApi) -> None:
    at = app_test(tmp_path, "run_page('reconciliation')")
    at.run()
    assert "Open discrepancies=1" in texts(at)
    at.radio[0].set_value("write_off")
    for t in at.text_input:
        if t.key == "resolve-reason":
            t.input("below the threshold")
    button(at, "Record the decision").click().run()
    assert not at.exception, at.exception
    (sent,) = fake.writes("/resolutions")
    assert json.loads(sent.content) == {
        "item_key": "payment:pp-1:amount_mismatch",
        "resolution": "write_off",
        "reason": "below the threshold",
    }
    assert "write_off" in texts(at)


def test_an_expired_session_goes_back_to_the_login(tmp_path: Path, fake: FakeApi) -> None:
    at = app_test(tmp_path, "run_app_with_session(-10)")
    at.run()
    assert not at.exception, at.exception
    assert "Your session expired: log in again." in texts(at)
    assert [t.label for t in at.text_input] == ["Username", "Password"]
    assert not fake.requests


def test_a_token_the_api_refuses_logs_out(tmp_path: Path, fake: FakeApi) -> None:
    fake.refuse_token = True
    at = app_test(tmp_path, "run_app_with_session(600)")
    at.run()
    assert not at.exception, at.exception
    assert "log in again" in texts(at)
    assert [t.label for t in at.text_input] == ["Username", "Password"]
