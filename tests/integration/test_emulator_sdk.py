"""The emulator driven through the official SDK and through our adapter: if the SDK parses
what the emulator says and the adapter classifies every failure right, the gateway can be
tested against it in place of YooKassa."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from yookassa import Configuration, Payment, Refund
from yookassa.domain.exceptions import (
    BadRequestError,
    NotFoundError,
    TooManyRequestsError,
    UnauthorizedError,
)
from yookassa.domain.notification import WebhookNotificationFactory

from billing.config import Settings
from providers.emulator import free_port
from providers.port import ProviderNotFound, ProviderRejected, ProviderUnavailable
from providers.yookassa_adapter import YooKassaProvider, normalise
from schemas.ids import observation_id_for
from schemas.messages import PaymentRequest
from schemas.money import Money
from tests.fixtures.emulator import EmulatorHandle, WebhookSink

pytestmark = pytest.mark.integration

RUB_499 = Money(49900, "RUB")


def new_request(**overrides: Any) -> PaymentRequest:
    values: dict[str, Any] = {
        "payment_id": str(uuid.uuid4()),
        "command_id": str(uuid.uuid4()),
        "user_id": f"user-{uuid.uuid4().hex[:8]}",
        "plan_id": "monthly",
        "amount": RUB_499,
        "period_months": 1,
        "return_url": "https://cinema.example/return",
        "description": "Monthly plan",
    }
    values.update(overrides)
    return PaymentRequest(**values)


def sdk_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": {"value": "499.00", "currency": "RUB"},
        "capture": True,
        "confirmation": {"type": "redirect", "return_url": "https://cinema.example/return"},
        "description": "Monthly plan",
        "metadata": {"payment_id": str(uuid.uuid4())},
    }
    body.update(overrides)
    return body


@pytest.fixture
def sdk(fresh_emulator: EmulatorHandle) -> Iterator[EmulatorHandle]:
    """The SDK's global configuration pointed at the emulator (re-set: adapters set it too)."""
    Configuration.configure(
        fresh_emulator.shop_id, fresh_emulator.secret_key, api_url=fresh_emulator.api_url
    )
    yield fresh_emulator


@pytest.fixture
async def provider(fresh_emulator: EmulatorHandle) -> AsyncIterator[YooKassaProvider]:
    prov = YooKassaProvider(fresh_emulator.settings(), backoff_base_s=0.01, backoff_cap_s=0.05)
    yield prov
    await prov.close()


def make_provider(settings: Settings, **kwargs: Any) -> YooKassaProvider:
    return YooKassaProvider(settings, backoff_base_s=0.01, backoff_cap_s=0.05, **kwargs)


# --------------------------------------------------------------------- create, get, auth
def test_sdk_create_and_get_round_trip(sdk: EmulatorHandle) -> None:
    created = Payment.create(sdk_body(save_payment_method=True), str(uuid.uuid4()))
    assert created.status == "pending"
    assert created.paid is False
    assert created.confirmation.confirmation_url == f"{sdk.url}/checkout/{created.id}"
    assert len(created.id) == 36
    assert created.metadata["cms_name"] == "yookassa_sdk_python"  # the SDK's wire quirk kept

    sdk.control.confirm(created.id)
    read = Payment.find_one(created.id)
    assert read.status == "succeeded"
    assert read.paid is True
    assert read.payment_method.saved is True
    assert read.payment_method.id == created.id
    assert read.payment_method.card.last4 == "4444"
    assert str(read.income_amount.value) == "481.54"  # 3.5 % fee (17.465 rounded half-even)
    assert read.confirmation is None


def test_sdk_unknown_payment_is_404(sdk: EmulatorHandle) -> None:
    with pytest.raises(NotFoundError) as info:
        Payment.find_one(str(uuid.uuid4()))
    assert info.value.content["code"] == "not_found"
    assert info.value.content["type"] == "error"


async def test_wrong_secret_is_401_and_rejected(fresh_emulator: EmulatorHandle) -> None:
    Configuration.configure(fresh_emulator.shop_id, "wrong", api_url=fresh_emulator.api_url)
    with pytest.raises(UnauthorizedError) as info:
        Payment.create(sdk_body(), str(uuid.uuid4()))
    assert info.value.content["code"] == "invalid_credentials"

    from pydantic import SecretStr

    bad = make_provider(fresh_emulator.settings(yookassa_secret_key=SecretStr("wrong")))
    try:
        with pytest.raises(ProviderRejected) as rejected:
            await bad.create_payment(new_request(), str(uuid.uuid4()))
        assert rejected.value.code == "invalid_credentials"
        assert not rejected.value.unknown
    finally:
        await bad.close()
    assert fresh_emulator.control.stats()["payments_created"] == 0


def test_missing_content_type_is_415(fresh_emulator: EmulatorHandle) -> None:
    resp = httpx.post(
        f"{fresh_emulator.api_url}/payments",
        content=b"{}",
        headers={"Idempotence-Key": "k", "Content-Type": "text/plain"},
        auth=(fresh_emulator.shop_id, fresh_emulator.secret_key),
    )
    assert resp.status_code == 415


# ----------------------------------------------------------------------------- idempotence
def test_same_key_same_body_returns_the_current_object(sdk: EmulatorHandle) -> None:
    key, body = str(uuid.uuid4()), sdk_body()
    first = Payment.create(body, key)
    sdk.control.confirm(first.id)
    again = Payment.create(body, key)
    assert again.id == first.id
    assert again.status == "succeeded"  # the current state, not a snapshot
    stats = sdk.control.stats()
    assert stats["payments_created"] == 1
    assert stats["create_calls"] == 2


def test_same_key_different_body_is_400(sdk: EmulatorHandle) -> None:
    key = str(uuid.uuid4())
    Payment.create(sdk_body(), key)
    with pytest.raises(BadRequestError) as info:
        Payment.create(sdk_body(description="other"), key)
    assert info.value.content["code"] == "invalid_request"
    assert info.value.content["parameter"] == "Idempotence-Key"


def test_key_longer_than_64_is_400(sdk: EmulatorHandle) -> None:
    with pytest.raises(BadRequestError) as info:
        Payment.create(sdk_body(), "k" * 65)
    assert info.value.content["parameter"] == "Idempotence-Key"
    assert sdk.control.stats()["payments_created"] == 0


def test_key_is_forgotten_after_24_hours(sdk: EmulatorHandle) -> None:
    key, body = str(uuid.uuid4()), sdk_body()
    first = Payment.create(body, key)
    sdk.control.advance_clock(23 * 3600)
    assert Payment.create(body, key).id == first.id
    sdk.control.advance_clock(2 * 3600)
    assert Payment.create(body, key).id != first.id


def _iso_dt(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_unguarded_create_after_25h_is_a_second_charge_that_search_finds(
    fresh_emulator: EmulatorHandle, provider: YooKassaProvider
) -> None:
    """Why the gateway's key-window guard exists (invariant 7): through our adapter, the same
    key and body 25 h later (emulator clock) make a SECOND payment. Search by created_at and
    metadata, the guard's read path, finds each in its own window, our ids on both."""
    sub = str(uuid.uuid4())
    request = new_request()
    first = await provider.create_payment(request, sub)
    fresh_emulator.control.advance_clock(25 * 3600)
    second = await provider.create_payment(request, sub)
    assert second.provider_payment_id != first.provider_payment_id
    stats = fresh_emulator.control.stats()
    assert stats["payments_created"] == 2
    assert stats["by_payment_id"] == {request.payment_id: 2}
    for p in (first, second):
        assert (p.payment_id, p.subscription_id) == (request.payment_id, sub)

    # Decoys in each window: other payments with their own ids are never returned.
    await provider.create_payment(new_request(), sub)
    t1, t2 = _iso_dt(first.created_at or ""), _iso_dt(second.created_at or "")
    assert t2 - t1 >= timedelta(hours=25)
    window = timedelta(minutes=5)
    found = await provider.find_payment(request.payment_id, t1 - window, t1 + window)
    assert found is not None and found.provider_payment_id == first.provider_payment_id
    assert found.metadata["payment_id"] == request.payment_id
    later = await provider.find_payment(request.payment_id, t2 - window, t2 + window)
    assert later is not None and later.provider_payment_id == second.provider_payment_id
    # Across both: the first created is the one kept (the later one is the duplicate).
    both = await provider.find_payment(request.payment_id, t1 - window, t2 + window)
    assert both is not None and both.provider_payment_id == first.provider_payment_id
    assert await provider.find_payment(str(uuid.uuid4()), t1 - window, t2 + window) is None


async def test_search_pages_through_more_than_100(
    fresh_emulator: EmulatorHandle, provider: YooKassaProvider
) -> None:
    """The search walks the cursor (limit 100 a page) to an item past the first page."""
    sub = str(uuid.uuid4())
    wanted = new_request()
    await provider.create_payment(wanted, sub)
    for _ in range(120):
        await provider.create_payment(new_request(), sub)
    now = datetime.now(UTC)
    found = await provider.find_payment(
        wanted.payment_id, now - timedelta(minutes=5), now + timedelta(minutes=5)
    )
    assert found is not None and found.payment_id == wanted.payment_id
    assert fresh_emulator.control.stats()["requests"]["payments.list"] == 2


async def test_unguarded_refund_after_25h_is_a_second_refund_that_search_finds(
    fresh_emulator: EmulatorHandle, provider: YooKassaProvider
) -> None:
    p = await provider.create_payment(new_request(), str(uuid.uuid4()))
    fresh_emulator.control.confirm(p.provider_payment_id)
    refund_id = str(uuid.uuid4())
    part = Money(10000, "RUB")
    meta = {"payment_id": p.payment_id or ""}
    first = await provider.create_refund(
        p.provider_payment_id, part, refund_id=refund_id, metadata=meta
    )
    assert first.metadata == {"payment_id": p.payment_id, "refund_id": refund_id}
    fresh_emulator.control.advance_clock(25 * 3600)
    second = await provider.create_refund(
        p.provider_payment_id, part, refund_id=refund_id, metadata=meta
    )
    assert second.provider_refund_id != first.provider_refund_id  # money out twice
    assert fresh_emulator.control.stats()["refunds_created"] == 2

    t1 = _iso_dt(first.created_at or "")
    window = timedelta(minutes=5)
    found = await provider.find_refund(refund_id, p.provider_payment_id, t1 - window, t1 + window)
    assert found is not None and found.provider_refund_id == first.provider_refund_id
    assert found.metadata["refund_id"] == refund_id
    assert (
        await provider.find_refund(
            str(uuid.uuid4()), p.provider_payment_id, t1 - window, t1 + window
        )
        is None
    )


def test_concurrent_same_key_creates_make_one_object(sdk: EmulatorHandle) -> None:
    key, body = str(uuid.uuid4()), sdk_body()
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: Payment.create(body, key).id, range(8)))
    assert len(ids) == 1
    stats = sdk.control.stats()
    assert stats["payments_created"] == 1
    assert stats["create_calls"] == 8


# ------------------------------------------------------------------------------------ lists
def test_list_pages_newest_first_with_filters(sdk: EmulatorHandle) -> None:
    ids = [Payment.create(sdk_body(), str(uuid.uuid4())).id for _ in range(5)]
    sdk.control.confirm(ids[1])
    sdk.control.confirm(ids[3])

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = Payment.list(params)
        pages.append([p.id for p in page.items])
        cursor = page.next_cursor
        if not cursor:
            break
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]

    succeeded = Payment.list({"status": "succeeded", "limit": 100})
    assert [p.id for p in succeeded.items] == [ids[3], ids[1]]
    assert succeeded.next_cursor is None

    objects = {o["id"]: o for o in sdk.control.objects()["payments"]}
    t2 = objects[ids[2]]["created_at"]
    after = Payment.list({"created_at.gte": t2, "limit": 100})
    assert set(ids[2:]) <= {p.id for p in after.items}
    before = Payment.list({"created_at.lt": t2, "limit": 100})
    assert ids[2] not in {p.id for p in before.items}


@pytest.mark.parametrize("limit", [0, 101, "x"])
def test_list_limit_outside_1_to_100_is_400(sdk: EmulatorHandle, limit: object) -> None:
    with pytest.raises(BadRequestError) as info:
        Payment.list({"limit": limit})
    assert info.value.content["parameter"] == "limit"


async def test_adapter_lists_a_window_across_pages(
    fresh_emulator: EmulatorHandle, provider: YooKassaProvider
) -> None:
    made = [await provider.create_payment(new_request(), str(uuid.uuid4())) for _ in range(5)]
    now = datetime.now(UTC)
    seen = [
        p.provider_payment_id
        async for p in provider.list_payments(
            now - timedelta(minutes=1), now + timedelta(minutes=1), page_size=2
        )
    ]
    assert seen == [p.provider_payment_id for p in reversed(made)]
    assert fresh_emulator.control.stats()["requests"]["payments.list"] == 3
    empty = [
        p
        async for p in provider.list_payments(
            now + timedelta(minutes=1), now + timedelta(minutes=2)
        )
    ]
    assert empty == []


# ------------------------------------------------------------------- lifecycle: two-stage
def test_two_stage_capture_and_cancel(sdk: EmulatorHandle) -> None:
    held = Payment.create(sdk_body(capture=False), str(uuid.uuid4()))
    sdk.control.confirm(held.id)
    waiting = Payment.find_one(held.id)
    assert waiting.status == "waiting_for_capture"
    assert waiting.paid is True
    assert waiting.expires_at is not None

    captured = Payment.capture(
        held.id, {"amount": {"value": "300.00", "currency": "RUB"}}, str(uuid.uuid4())
    )
    assert captured.status == "succeeded"
    assert str(captured.amount.value) == "300.00"  # partial capture: the rest is released

    other = Payment.create(sdk_body(capture=False), str(uuid.uuid4()))
    sdk.control.confirm(other.id)
    canceled = Payment.cancel(other.id, str(uuid.uuid4()))
    assert canceled.status == "canceled"
    assert canceled.cancellation_details.party == "merchant"
    assert canceled.cancellation_details.reason == "canceled_by_merchant"
    with pytest.raises(BadRequestError):
        Payment.capture(other.id, None, str(uuid.uuid4()))


def test_hold_expiry_cancels_expired_on_capture(sdk: EmulatorHandle) -> None:
    sdk.control.configure(hold_s=3600)
    held = Payment.create(sdk_body(capture=False), str(uuid.uuid4()))
    sdk.control.confirm(held.id)
    sdk.control.advance_clock(3599)
    assert Payment.find_one(held.id).status == "waiting_for_capture"
    sdk.control.advance_clock(2)
    expired = Payment.find_one(held.id)
    assert expired.status == "canceled"
    assert expired.cancellation_details.reason == "expired_on_capture"


def test_confirmation_timeout_cancels_expired_on_confirmation(sdk: EmulatorHandle) -> None:
    sdk.control.configure(confirmation_window_s=0.3)
    p = Payment.create(sdk_body(), str(uuid.uuid4()))
    time.sleep(0.5)  # the emulator's own timer, no request needed
    objects = {o["id"]: o for o in sdk.control.objects()["payments"]}
    assert objects[p.id]["status"] == "canceled"
    assert objects[p.id]["cancellation_details"] == {
        "party": "yoo_money",
        "reason": "expired_on_confirmation",
    }


@pytest.mark.parametrize("reason", ["insufficient_funds", "card_expired", "fraud_suspected"])
def test_user_decline_carries_the_reason(sdk: EmulatorHandle, reason: str) -> None:
    p = Payment.create(sdk_body(), str(uuid.uuid4()))
    sdk.control.confirm(p.id, "cancel", reason)
    read = Payment.find_one(p.id)
    assert read.status == "canceled"
    assert read.cancellation_details.party == "payment_network"
    assert read.cancellation_details.reason == reason


def test_auto_confirm_for_load_tests(sdk: EmulatorHandle) -> None:
    sdk.control.configure(auto_confirm="succeed", auto_confirm_delay_s=0.0)
    p = Payment.create(sdk_body(), str(uuid.uuid4()))
    assert p.status == "pending"
    deadline = time.monotonic() + 2
    while Payment.find_one(p.id).status == "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert Payment.find_one(p.id).status == "succeeded"


def test_checkout_page_lets_a_human_pay(sdk: EmulatorHandle) -> None:
    p = Payment.create(sdk_body(), str(uuid.uuid4()))
    page = httpx.get(p.confirmation.confirmation_url)
    assert page.status_code == 200
    assert "value='succeed'" in page.text and "value='cancel'" in page.text
    done = httpx.post(p.confirmation.confirmation_url, data={"action": "succeed"})
    assert done.status_code == 303
    assert done.headers["location"] == "https://cinema.example/return"
    assert Payment.find_one(p.id).status == "succeeded"


# ------------------------------------------------------------------------- autopayments
async def test_autopayment_charges_the_saved_method_at_once(
    fresh_emulator: EmulatorHandle, provider: YooKassaProvider
) -> None:
    control = fresh_emulator.control
    first = await provider.create_payment(new_request(), str(uuid.uuid4()))
    assert first.confirmation_url is not None
    control.confirm(first.provider_payment_id)
    saved = await provider.get_payment(first.provider_payment_id)
    assert saved.payment_method_saved
    token = saved.payment_method_id
    assert token == first.provider_payment_id

    renewal = await provider.create_payment(new_request(payment_method_id=token), str(uuid.uuid4()))
    assert renewal.status == "succeeded"
    assert renewal.paid
    assert renewal.confirmation_url is None

    control.configure(autopay_decline_rate=1.0, autopay_decline_reason="insufficient_funds")
    declined = await provider.create_payment(
        new_request(payment_method_id=token), str(uuid.uuid4())
    )
    assert (declined.status, declined.cancellation_reason) == ("canceled", "insufficient_funds")

    control.configure(autopay_decline_rate=0.0)
    control.revoke(token)
    revoked = await provider.create_payment(new_request(payment_method_id=token), str(uuid.uuid4()))
    assert (revoked.status, revoked.cancellation_reason) == ("canceled", "permission_revoked")


async def test_autopayment_with_unsaved_method_is_rejected(
    fresh_emulator: EmulatorHandle, provider: YooKassaProvider
) -> None:
    plain = await provider.create_payment(new_request(save_payment_method=False), str(uuid.uuid4()))
    fresh_emulator.control.confirm(plain.provider_payment_id)
    with pytest.raises(ProviderRejected) as info:
        await provider.create_payment(
            new_request(payment_method_id=plain.provider_payment_id), str(uuid.uuid4())
        )
    assert info.value.code == "invalid_request"


# -------------------------------------------------------------------------------- refunds
async def test_refunds_grow_refunded_amount_and_never_exceed_captured(
    fresh_emulator: EmulatorHandle, provider: YooKassaProvider
) -> None:
    p = await provider.create_payment(new_request(), str(uuid.uuid4()))
    fresh_emulator.control.confirm(p.provider_payment_id)
    pid = p.provider_payment_id

    r1 = await provider.create_refund(pid, Money(20000, "RUB"), refund_id=str(uuid.uuid4()))
    assert r1.status == "succeeded"
    key = str(uuid.uuid4())
    r2 = await provider.create_refund(pid, Money(29900, "RUB"), refund_id=key)
    again = await provider.create_refund(pid, Money(29900, "RUB"), refund_id=key)
    assert again.provider_refund_id == r2.provider_refund_id  # same key: no second refund

    with pytest.raises(ProviderRejected) as info:
        await provider.create_refund(pid, Money(1, "RUB"), refund_id=str(uuid.uuid4()))
    assert info.value.code == "invalid_request"

    Configuration.configure(
        fresh_emulator.shop_id, fresh_emulator.secret_key, api_url=fresh_emulator.api_url
    )
    read = Payment.find_one(pid)
    assert str(read.refunded_amount.value) == "499.00"
    assert read.refundable is False
    assert (await provider.get_refund(r1.provider_refund_id)).amount == Money(20000, "RUB")
    listed = Refund.list({"payment_id": pid})
    assert [r.id for r in listed.items] == [r2.provider_refund_id, r1.provider_refund_id]
    now = datetime.now(UTC)
    via_adapter = [
        r.provider_refund_id
        async for r in provider.list_refunds(
            now - timedelta(minutes=1), now + timedelta(minutes=1), page_size=1
        )
    ]
    assert via_adapter == [r2.provider_refund_id, r1.provider_refund_id]


async def test_refund_of_a_pending_payment_is_rejected(provider: YooKassaProvider) -> None:
    p = await provider.create_payment(new_request(), str(uuid.uuid4()))
    with pytest.raises(ProviderRejected):
        await provider.create_refund(p.provider_payment_id, RUB_499, refund_id=str(uuid.uuid4()))


# --------------------------------------------------------------------------------- faults
async def test_timeout_is_unavailable_within_the_deadline(fresh_emulator: EmulatorHandle) -> None:
    fresh_emulator.control.add_fault("payments.create", "timeout", delay_s=5)
    prov = make_provider(fresh_emulator.settings(provider_timeout_s=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable) as info:
            await prov.create_payment(new_request(), str(uuid.uuid4()))
        assert time.monotonic() - started < 1.0
        assert info.value.code == "timeout"
        assert info.value.unknown
    finally:
        await prov.close()
    assert fresh_emulator.control.stats()["payments_created"] == 0  # hung before the work


async def test_500_after_work_then_retry_with_same_key_makes_one_object(
    fresh_emulator: EmulatorHandle,
) -> None:
    fresh_emulator.control.add_fault("payments.create", "500", when="after")
    prov = make_provider(fresh_emulator.settings(provider_max_attempts=3))
    request = new_request()
    try:
        payment = await prov.create_payment(request, str(uuid.uuid4()))
    finally:
        await prov.close()
    stats = fresh_emulator.control.stats()
    assert stats["create_calls"] == 2
    assert stats["payments_created"] == 1
    assert stats["by_payment_id"] == {request.payment_id: 1}
    assert payment.payment_id == request.payment_id


@pytest.mark.parametrize(
    ("kind", "when", "created"),
    [
        ("500", "before", 0),
        ("500", "after", 1),
        ("202", "before", 0),
        ("202", "after", 1),
        ("429", "before", 0),
    ],
)
async def test_error_faults_are_unknown_outcomes(
    fresh_emulator: EmulatorHandle, kind: str, when: str, created: int
) -> None:
    fresh_emulator.control.add_fault("payments.create", kind, when=when)
    prov = make_provider(fresh_emulator.settings(provider_max_attempts=1))
    try:
        with pytest.raises(ProviderUnavailable) as info:
            await prov.create_payment(new_request(), str(uuid.uuid4()))
    finally:
        await prov.close()
    assert info.value.unknown
    assert fresh_emulator.control.stats()["payments_created"] == created


async def test_delay_fault_slows_but_succeeds(
    fresh_emulator: EmulatorHandle, provider: YooKassaProvider
) -> None:
    fresh_emulator.control.add_fault("payments.get", "delay", delay_s=0.3)
    p = await provider.create_payment(new_request(), str(uuid.uuid4()))
    started = time.monotonic()
    assert (await provider.get_payment(p.provider_payment_id)).status == "pending"
    assert time.monotonic() - started >= 0.3


async def test_connection_refused_is_unavailable() -> None:
    settings = Settings(
        yookassa_api_url=f"http://127.0.0.1:{free_port()}/v3", provider_max_attempts=2
    )
    prov = make_provider(settings)
    try:
        with pytest.raises(ProviderUnavailable) as info:
            await prov.get_payment(str(uuid.uuid4()))
        assert info.value.code == "connection"
    finally:
        await prov.close()


async def test_not_found_through_the_adapter(provider: YooKassaProvider) -> None:
    with pytest.raises(ProviderNotFound):
        await provider.get_payment(str(uuid.uuid4()))


def test_seeded_emulator_is_deterministic(sdk: EmulatorHandle) -> None:
    def run(seed: int) -> tuple[str, list[bool]]:
        sdk.control.reset(seed=seed)
        sdk.control.add_fault("payments.get", "429", count=None, probability=0.5)
        p = Payment.create(sdk_body(), str(uuid.uuid4()))
        out = []
        for _ in range(20):
            try:
                Payment.find_one(p.id)
                out.append(True)
            except TooManyRequestsError:
                out.append(False)
        return p.id, out

    first, second, other = run(42), run(42), run(43)
    assert first == second
    assert other[0] != first[0]
    assert 0 < first[1].count(False) < 20


def test_unseeded_reset_never_repeats_ids(sdk: EmulatorHandle) -> None:
    a = Payment.create(sdk_body(), str(uuid.uuid4())).id
    sdk.control.reset()
    assert Payment.create(sdk_body(), str(uuid.uuid4())).id != a


# -------------------------------------------------------------------------- notifications
@pytest.fixture
def hooked(
    sdk: EmulatorHandle, webhook_sink: WebhookSink
) -> Iterator[tuple[EmulatorHandle, WebhookSink]]:
    webhook_sink.clear()
    sdk.control.configure(webhook_url=webhook_sink.url, notify_backoff_s=0.05)
    yield sdk, webhook_sink


def test_notification_carries_the_full_payment(hooked: tuple[EmulatorHandle, WebhookSink]) -> None:
    emu, sink = hooked
    p = Payment.create(sdk_body(), str(uuid.uuid4()))
    emu.control.confirm(p.id)
    (note,) = sink.wait_for(lambda got: len(got) == 1)
    assert note["type"] == "notification"
    assert note["event"] == "payment.succeeded"
    parsed = WebhookNotificationFactory().create(note)
    assert parsed.object.id == p.id
    assert parsed.object.status == "succeeded"


def test_notification_redelivered_until_200(hooked: tuple[EmulatorHandle, WebhookSink]) -> None:
    emu, sink = hooked
    sink.statuses.extend([500, 503])
    p = Payment.create(sdk_body(), str(uuid.uuid4()))
    emu.control.confirm(p.id)
    sink.wait_for(lambda got: len(got) == 1)
    outcomes = [d["outcome"] for d in emu.control.deliveries() if d["object_id"] == p.id]
    assert outcomes == ["500", "503", "200"]


def test_two_stage_notifications_arrive_in_order(
    hooked: tuple[EmulatorHandle, WebhookSink],
) -> None:
    emu, sink = hooked
    p = Payment.create(sdk_body(capture=False), str(uuid.uuid4()))
    emu.control.confirm(p.id)
    Payment.capture(p.id, None, str(uuid.uuid4()))
    sink.wait_for(lambda got: len(got) == 2)
    assert sink.events() == [
        ("payment.waiting_for_capture", "waiting_for_capture"),
        ("payment.succeeded", "succeeded"),
    ]


def test_duplicated_notification(hooked: tuple[EmulatorHandle, WebhookSink]) -> None:
    emu, sink = hooked
    emu.control.add_fault("notifications", "duplicate")
    p = Payment.create(sdk_body(), str(uuid.uuid4()))
    emu.control.confirm(p.id)
    got = sink.wait_for(lambda got: len(got) == 2)
    assert got[0] == got[1]


def test_lost_notification_is_never_sent(hooked: tuple[EmulatorHandle, WebhookSink]) -> None:
    emu, sink = hooked
    emu.control.add_fault("notifications", "lost")
    lost = Payment.create(sdk_body(), str(uuid.uuid4()))
    emu.control.confirm(lost.id)
    kept = Payment.create(sdk_body(), str(uuid.uuid4()))
    emu.control.confirm(kept.id)
    sink.wait_for(lambda got: len(got) == 1)
    time.sleep(0.3)
    assert [n["object"]["id"] for n in sink.received] == [kept.id]
    assert any(
        d["outcome"] == "lost" and d["object_id"] == lost.id for d in emu.control.deliveries()
    )


def test_late_notification(hooked: tuple[EmulatorHandle, WebhookSink]) -> None:
    emu, sink = hooked
    emu.control.add_fault("notifications", "late", delay_s=0.5)
    p = Payment.create(sdk_body(), str(uuid.uuid4()))
    started = time.monotonic()
    emu.control.confirm(p.id)
    time.sleep(0.3)
    assert sink.received == []
    sink.wait_for(lambda got: len(got) == 1)
    assert time.monotonic() - started >= 0.5


def test_out_of_order_notification(hooked: tuple[EmulatorHandle, WebhookSink]) -> None:
    emu, sink = hooked
    emu.control.add_fault("notifications", "out_of_order", delay_s=5)
    p = Payment.create(sdk_body(capture=False), str(uuid.uuid4()))
    emu.control.confirm(p.id)
    time.sleep(0.1)
    Payment.capture(p.id, None, str(uuid.uuid4()))
    sink.wait_for(lambda got: len(got) == 2)
    assert sink.events() == [
        ("payment.succeeded", "succeeded"),
        ("payment.waiting_for_capture", "waiting_for_capture"),
    ]


async def test_webhook_claim_normalises_after_re_read(
    hooked: tuple[EmulatorHandle, WebhookSink],
) -> None:
    emu, sink = hooked
    prov = make_provider(emu.settings())
    try:
        request = new_request()
        subscription_id = str(uuid.uuid4())
        p = await prov.create_payment(request, subscription_id)
        emu.control.confirm(p.provider_payment_id)
        (note,) = await asyncio.to_thread(sink.wait_for, lambda got: len(got) == 1)
        reread = await prov.get_payment(note["object"]["id"])
    finally:
        await prov.close()
    observed = normalise(reread, source="webhook", observed_at=123)
    assert observed.status == "succeeded"
    assert observed.payment_id == request.payment_id
    assert observed.subscription_id == subscription_id
    assert observed.observation_id == observation_id_for(p.provider_payment_id, "succeeded")
    assert observed.payment_method_saved


async def test_calls_reuse_their_connection(fresh_emulator: EmulatorHandle) -> None:
    """The SDK opens and closes a session per call; the adapter keeps one per SDK thread, so
    a thread's calls share one keep-alive connection (no TCP or TLS handshake per call)."""
    prov = YooKassaProvider(fresh_emulator.settings(), max_workers=1)
    try:
        for _ in range(5):
            created = await prov.create_payment(new_request(), str(uuid.uuid4()))
            await prov.get_payment(created.provider_payment_id)
        (session,) = prov._sessions._all
        adapter: Any = session.get_adapter(fresh_emulator.api_url)
        pools = adapter.poolmanager.pools
        made = sum(pools[k].num_connections for k in pools.keys())  # noqa: SIM118 (no __iter__)
        assert made == 1, made
    finally:
        await prov.close()
    assert prov._sessions._all == []
