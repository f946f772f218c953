"""The console's Trials and Wallet pages (issue 16) run headless (Streamlit's AppTest) against
a fake of the two admin routes they read."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.views import trials, wallet
from schemas.http import PaymentMethodOut, TrialsDay
from schemas.ids import subscription_id_for

NOW = datetime.now(UTC).replace(microsecond=0)
TIMEOUT = 60
USER = "bob"
DAY = NOW.date()
TRIALS: list[dict[str, Any]] = [
    {"day": (DAY - timedelta(days=2)).isoformat(), "trials": 3, "converted": 2},
    {"day": (DAY - timedelta(days=1)).isoformat(), "trials": 2, "converted": 0},
]
METHODS: list[dict[str, Any]] = [
    {
        "method_id": "pm-old",
        "type": "bank_card",
        "title": "Bank card *1111",
        "first6": "411111",
        "last4": "1111",
        "expiry_month": "01",
        "expiry_year": "2027",
        "card_type": "Visa",
        "issuer_country": "RU",
        "issuer_name": "Sberbank",
        "default": False,
        "created_at": (NOW - timedelta(days=40)).isoformat(),
    },
    {
        "method_id": "pm-new",
        "type": "bank_card",
        "title": "Bank card *4242",
        "first6": "424242",
        "last4": "4242",
        "expiry_month": "12",
        "expiry_year": "2030",
        "card_type": "MasterCard",
        "issuer_country": None,
        "issuer_name": None,
        "default": True,
        "created_at": NOW.isoformat(),
    },
]


def _error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message, "details": None}}
    )


class WalletFake:
    """GET /admin/analytics/trials and a subscriber's payment methods; records requests."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.analytics_up = False
        self.wallets: dict[str, list[dict[str, Any]]] = {subscription_id_for(USER): METHODS}

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.method == "GET"
        assert request.headers.get("authorization") == "Bearer token-ops"
        path = request.url.path
        if path == "/api/v1/admin/analytics/trials":
            if not self.analytics_up:
                return _error(503, "analytics_unavailable", "the history worker does not answer")
            return httpx.Response(200, json=TRIALS)
        prefix, suffix = "/api/v1/admin/subscriptions/", "/payment-methods"
        if path.startswith(prefix) and path.endswith(suffix):
            sid = path[len(prefix) : -len(suffix)]
            return httpx.Response(200, json={"items": self.wallets.get(sid, [])})
        return _error(404, "not_found", "no such route in the fake")


def texts(at: AppTest) -> str:
    parts: list[str] = []
    for kind in ("title", "subheader", "markdown", "caption", "warning", "error", "info"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return "\n".join(parts)


CURRENT: list[WalletFake] = []


def run_page(name: str) -> None:
    """One page, logged in, against the current fake."""
    import streamlit as st

    from dashboard import ui
    from dashboard.state import Session

    ui.configure(ui.ConsoleConfig(api_url="http://api.test"), CURRENT[-1].transport())
    if ui.SESSION not in st.session_state:
        st.session_state[ui.SESSION] = Session(
            "token-ops", "ops", datetime.now(UTC) + timedelta(hours=1)
        )
    {"trials": trials, "wallet": wallet}[name].render()


@pytest.fixture
def fake() -> WalletFake:
    CURRENT.append(WalletFake())
    return CURRENT[-1]


def page(tmp_path: Path, name: str) -> AppTest:
    script = tmp_path / "console_script.py"
    script.write_text(
        f"from tests.unit.test_dashboard_trials_wallet import run_page\nrun_page({name!r})\n"
    )
    at = AppTest.from_file(str(script), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


# ---------------------------------------------------------------------------------- trials
def test_the_trials_page_shows_started_converted_and_conversion(
    tmp_path: Path, fake: WalletFake
) -> None:
    fake.analytics_up = True
    at = page(tmp_path, "trials")
    shown = texts(at)
    assert "Trials started=5" in shown
    assert "Converted=2" in shown
    assert "Conversion=40.0%" in shown
    assert at.get("vega_lite_chart"), "no chart drawn"
    (asked,) = [r for r in fake.requests if r.url.path.endswith("/analytics/trials")]
    assert {"from", "to"} <= set(asked.url.params)


def test_the_trials_page_says_when_analytics_are_down(tmp_path: Path, fake: WalletFake) -> None:
    at = page(tmp_path, "trials")
    assert "Analytics are not available right now" in texts(at)
    assert not at.error


def test_the_trials_chart_stacks_outcomes_and_draws_conversion() -> None:
    rows = [TrialsDay.model_validate(r) for r in TRIALS]
    spec = trials.trials_chart(rows)
    assert spec is not None
    layers = spec.to_dict()["layer"]
    assert [layer["mark"]["type"] for layer in layers] == ["bar", "line"]
    assert trials.totals(rows) == (5, 2, 0.4)
    assert trials.trials_chart([]) is None
    empty_day = TrialsDay(day=date(2026, 1, 1), trials=0, converted=0)
    assert trials.trials_chart([empty_day]) is None
    assert trials.totals([empty_day]) == (0, 0, None)


# ---------------------------------------------------------------------------------- wallet
def test_the_wallet_page_shows_a_subscribers_methods_and_which_renews(
    tmp_path: Path, fake: WalletFake
) -> None:
    at = page(tmp_path, "wallet")
    at.text_input[0].input(USER)
    at.button[0].click().run()
    assert not at.exception, at.exception
    shown = texts(at)
    assert "Saved methods=2" in shown
    assert "Renewals charge=Bank card *4242" in shown
    (asked,) = [r for r in fake.requests if r.url.path.endswith("/payment-methods")]
    assert asked.url.path == (
        f"/api/v1/admin/subscriptions/{subscription_id_for(USER)}/payment-methods"
    )
    frame = at.dataframe[0].value
    assert list(frame["method_id"]) == ["pm-old", "pm-new"]
    assert list(frame["renews"]) == ["", "✔"]
    assert list(frame["card"]) == ["411111******1111", "424242******4242"]
    assert list(frame["expiry"]) == ["01/2027", "12/2030"]


def test_the_wallet_page_takes_a_subscription_id_and_says_when_empty(
    tmp_path: Path, fake: WalletFake
) -> None:
    sid = str(uuid.uuid4())
    at = page(tmp_path, "wallet")
    at.text_input[0].input(sid.upper())
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert "No saved payment method." in texts(at)
    (asked,) = [r for r in fake.requests if r.url.path.endswith("/payment-methods")]
    assert sid in asked.url.path


def test_a_method_row_shows_only_displayable_card_data() -> None:
    m = PaymentMethodOut.model_validate({**METHODS[0], "first6": None})
    assert wallet.card_of(m) == "•••• 1111"
    assert json.dumps(wallet.methods_frame([m]).to_dict("records"), default=str).count("1111") == 2
