"""The console's Promo codes page (issue 16) runs headless (Streamlit's AppTest) against a
fake of the admin routes it uses: the codes listed, a code created and archived (with an
Idempotency-Key and the admin's reason), a code's redemptions."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from streamlit.testing.v1 import AppTest

from dashboard.views import promo

NOW = datetime.now(UTC).replace(microsecond=0)
TIMEOUT = 60


def code_out(code: str, **kw: Any) -> dict[str, Any]:
    out = {
        "code": code,
        "kind": "percent",
        "percent": 20,
        "amount": None,
        "duration": "repeating",
        "periods": 3,
        "plan_ids": ["monthly"],
        "expires_at": None,
        "max_redemptions": 100,
        "redeemed": 1,
        "archived": False,
        "created_by": "admin:ops",
        "reason": "spring",
        "created_at": NOW.isoformat(),
    }
    out.update(kw)
    return out


REDEMPTION = {
    "code": "SPRING20",
    "user_id": "bob",
    "subscription_id": "00000000-0000-5000-8000-000000000001",
    "payment_id": "00000000-0000-5000-8000-000000000002",
    "plan_id": "monthly",
    "price": {"value": "299.00", "currency": "RUB"},
    "discount": {"value": "59.80", "currency": "RUB"},
    "charged": {"value": "239.20", "currency": "RUB"},
    "redeemed_at": NOW.isoformat(),
    "payment_status": "succeeded",
}


class PromoFake:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.codes = [code_out("SPRING20"), code_out("OLD10", archived=True, percent=10)]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "GET" and path == "/api/v1/admin/promo-codes":
            return httpx.Response(200, json=self.codes)
        if request.method == "GET" and path == "/api/v1/admin/plans":
            return httpx.Response(200, json=[])
        if request.method == "GET" and path.endswith("/redemptions"):
            return httpx.Response(200, json=[REDEMPTION])
        if request.method == "GET" and path == "/api/v1/admin/analytics/discounts":
            return httpx.Response(
                200,
                json=[
                    {
                        "code": "SPRING20",
                        "currency": "RUB",
                        "charges": 2,
                        "discount_minor": 11960,
                        "charged_minor": 47840,
                    }
                ],
            )
        if request.method == "POST" and path == "/api/v1/admin/promo-codes":
            body = json.loads(request.content)
            assert request.headers.get("idempotency-key")
            created = code_out(body["code"].upper(), redeemed=0)
            self.codes.insert(0, created)
            return httpx.Response(201, json=created)
        if request.method == "POST" and path.endswith("/archive"):
            assert request.headers.get("idempotency-key")
            code = path.split("/")[-2]
            for c in self.codes:
                if c["code"] == code:
                    c["archived"] = True
                    return httpx.Response(200, json=c)
        return httpx.Response(
            404, json={"error": {"code": "not_found", "message": "no", "details": None}}
        )


CURRENT: list[PromoFake] = []


def run_page() -> None:
    import streamlit as st

    from dashboard import ui
    from dashboard.state import Session

    ui.configure(ui.ConsoleConfig(api_url="http://api.test"), CURRENT[-1].transport())
    if ui.SESSION not in st.session_state:
        st.session_state[ui.SESSION] = Session(
            "token-ops", "ops", datetime.now(UTC) + timedelta(hours=1)
        )
    promo.render()


@pytest.fixture
def fake() -> PromoFake:
    CURRENT.append(PromoFake())
    return CURRENT[-1]


def page(tmp_path: Path) -> AppTest:
    script = tmp_path / "console_script.py"
    script.write_text("from tests.unit.test_dashboard_promo import run_page\nrun_page()\n")
    at = AppTest.from_file(str(script), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def test_the_page_lists_codes_and_a_codes_redemptions(tmp_path: Path, fake: PromoFake) -> None:
    at = page(tmp_path)
    codes = at.dataframe[0].value
    assert list(codes["code"]) == ["SPRING20", "OLD10"]
    assert list(codes["discount"]) == ["20 %", "10 %"]
    assert list(codes["duration"]) == ["3 periods", "3 periods"]
    assert list(codes["archived"]) == ["", "✔"]
    redemptions = at.dataframe[1].value
    assert list(redemptions["user_id"]) == ["bob"]
    assert list(redemptions["charged"]) == ["239.20 RUB"]
    discounts = at.dataframe[2].value
    assert list(discounts["charges"]) == [2]


def test_a_code_is_created_and_archived_with_a_reason(tmp_path: Path, fake: PromoFake) -> None:
    at = page(tmp_path)
    at.text_input[0].input("summer5")
    at.text_input[2].input("summer campaign")  # the create form's reason
    at.button[0].click().run()
    assert not at.exception, at.exception
    posts = [r for r in fake.requests if r.method == "POST"]
    assert [r.url.path for r in posts] == ["/api/v1/admin/promo-codes"]
    sent = json.loads(posts[0].content)
    assert sent["code"] == "summer5" and sent["discount"] == {"kind": "percent", "percent": 20}
    assert sent["periods"] == 1 and sent["reason"] == "summer campaign"
    assert "Promo code SUMMER5 created." in [str(s.value) for s in at.success]
    at.selectbox(key="promo-archive-code").set_value("SUMMER5")
    at.text_input[3].input("campaign over")  # the archive form's reason
    at.button[1].click().run()
    assert not at.exception, at.exception
    archive = [r for r in fake.requests if r.method == "POST"][-1]
    assert archive.url.path == "/api/v1/admin/promo-codes/SUMMER5/archive"
    assert json.loads(archive.content) == {"reason": "campaign over"}
    assert "Promo code SUMMER5 archived." in [str(s.value) for s in at.success]


def test_the_form_builds_every_duration_and_refuses_what_the_api_would() -> None:
    def build(**kw: Any) -> Any:
        fields: dict[str, Any] = {
            "code": "CODE1",
            "kind": "percent",
            "percent": 20,
            "amount": "",
            "currency": "RUB",
            "duration": "once",
            "periods": 3,
            "plans": [],
            "expires": None,
            "max_redemptions": 0,
            "reason": "r",
        }
        fields.update(kw)
        return promo.build_create(**fields)

    assert build().periods == 1 and build().plan_ids is None and build().max_redemptions is None
    assert build(duration="for N periods").periods == 3
    assert build(duration="forever").periods is None
    fixed = build(kind="fixed", amount="50.00", plans=["monthly"], expires=date(2030, 1, 1))
    assert fixed.discount.kind == "fixed" and fixed.plan_ids == ["monthly"]
    assert fixed.expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationError):
        build(code="x")  # too short
    with pytest.raises(ValidationError):
        build(kind="fixed", amount="")  # no amount
