"""YooKassa webhooks: allowlist, re-read from the provider (only that copy is trusted), 200 for
what will never work, 400 for garbage, 503 for what a redelivery can fix."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from providers.port import ProviderPayment
from schemas.ids import command_id_for, payment_id_for, subscription_id_for
from schemas.messages import PaymentObserved
from schemas.money import Money
from schemas.topics import PROVIDER_EVENTS
from tests.integration.api_support import Api, error_code, new_user, running_api

pytestmark = pytest.mark.integration

URL = "/api/v1/webhooks/yookassa"


@pytest.fixture(autouse=True)
def healthy(api: Api) -> None:
    api.publisher.fail = api.publisher.hang = False
    api.provider.unavailable = api.provider.hang = False


def provider_payment(status: str = "succeeded", *, ours: bool = True) -> ProviderPayment:
    user = new_user()
    meta = (
        {
            "payment_id": payment_id_for(command_id_for(user, "k")),
            "subscription_id": subscription_id_for(user),
            "cms_name": "yookassa_sdk_python",
        }
        if ours
        else {}
    )
    return ProviderPayment(
        provider_payment_id=f"2f9c1a7e-000f-5000-8000-{uuid.uuid4().hex[:12]}",
        status=status,
        amount=Money(29900, "RUB"),
        paid=status == "succeeded",
        metadata=meta,
    )


def notification(event: str, object_id: str, **obj: Any) -> dict[str, Any]:
    return {"type": "notification", "event": event, "object": {"id": object_id, **obj}}


async def post(api: Api, body: Any, *, host: str = "127.0.0.1", **headers: str) -> Any:
    client = api.client if host == "127.0.0.1" else api.client_from(host)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(
        URL, content=raw, headers={"Content-Type": "application/json", **headers}
    )


def published(api: Api) -> list[tuple[bytes, PaymentObserved]]:
    return [(k, e) for k, e in api.publisher.provider_events() if isinstance(e, PaymentObserved)]


async def test_only_the_re_read_object_is_published(api: Api) -> None:
    payment = provider_payment("pending")  # the provider says pending...
    api.provider.payments[payment.provider_payment_id] = payment
    before = len(published(api))
    # ...while the notification claims success with a forged amount.
    body = notification(
        "payment.succeeded",
        payment.provider_payment_id,
        status="succeeded",
        amount={"value": "1.00", "currency": "RUB"},
        metadata={"subscription_id": str(uuid.uuid4()), "payment_id": str(uuid.uuid4())},
    )
    resp = await post(api, body)

    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "accepted"
    assert api.provider.reads[-1] == payment.provider_payment_id
    [(key, event)] = published(api)[before:]
    assert key == payment.subscription_id.encode()  # type: ignore[union-attr]
    assert event.status == "pending"
    assert event.amount == Money(29900, "RUB")
    assert event.source == "webhook"
    assert event.payment_id == payment.payment_id
    assert event.subscription_id == payment.subscription_id
    assert [t for t, _, _ in api.publisher.sent][-1] == PROVIDER_EVENTS


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("refund.succeeded", "event not handled"),
        ("payout.succeeded", "event not handled"),
        ("deal.closed", "event not handled"),
        ("something.new", "event not handled"),
    ],
)
async def test_events_we_do_not_handle_are_acknowledged(api: Api, event: str, reason: str) -> None:
    before = (len(api.publisher.sent), len(api.provider.reads))
    resp = await post(api, notification(event, "obj-1"))
    assert resp.status_code == 200
    assert resp.json() == {"status": "ignored", "reason": reason}
    assert (len(api.publisher.sent), len(api.provider.reads)) == before


async def test_payment_unknown_to_provider_is_acknowledged(api: Api) -> None:
    before = len(api.publisher.sent)
    resp = await post(api, notification("payment.succeeded", "does-not-exist"))
    assert resp.status_code == 200 and resp.json()["status"] == "ignored"
    assert len(api.publisher.sent) == before


async def test_payment_without_our_metadata_is_acknowledged(api: Api) -> None:
    payment = provider_payment(ours=False)
    api.provider.payments[payment.provider_payment_id] = payment
    before = len(api.publisher.sent)
    resp = await post(api, notification("payment.succeeded", payment.provider_payment_id))
    assert resp.status_code == 200
    assert resp.json() == {"status": "ignored", "reason": "payment carries no billing metadata"}
    assert len(api.publisher.sent) == before


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"[]",
        b'"notification"',
        json.dumps({"type": "notification", "event": "payment.succeeded"}).encode(),
        json.dumps({"type": "notification", "event": "payment.succeeded", "object": {}}).encode(),
        json.dumps(notification("payment.succeeded", "../../etc/passwd")).encode(),
        json.dumps({"type": "other", "event": "payment.succeeded", "object": {"id": "x"}}).encode(),
        json.dumps({"type": "notification", "event": 5, "object": {"id": "x"}}).encode(),
        b"\xff\xfe\x00garbage",
        b'{"a":' * 1000 + b"1" + b"}" * 1000,  # 6 KB nested 1,000 deep: was a RecursionError
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
async def test_malformed_notifications_are_400(api: Api, raw: bytes) -> None:
    before = len(api.provider.reads)
    resp = await post(api, raw)
    assert resp.status_code == 400, resp.text
    assert error_code(resp) == "webhook_malformed"
    assert len(api.provider.reads) == before


async def test_provider_unavailable_is_503(api: Api) -> None:
    payment = provider_payment()
    api.provider.payments[payment.provider_payment_id] = payment
    api.provider.unavailable = True
    resp = await post(api, notification("payment.succeeded", payment.provider_payment_id))
    assert resp.status_code == 503
    assert error_code(resp) == "provider_unavailable"
    assert resp.headers["retry-after"]


async def test_provider_hanging_is_503_within_the_timeout(api: Api) -> None:
    payment = provider_payment()
    api.provider.payments[payment.provider_payment_id] = payment
    api.provider.hang = True
    resp = await post(api, notification("payment.succeeded", payment.provider_payment_id))
    assert resp.status_code == 503 and error_code(resp) == "provider_unavailable"


@pytest.mark.parametrize("mode", ["fail", "hang"])
async def test_publisher_down_is_503_so_yookassa_redelivers(api: Api, mode: str) -> None:
    payment = provider_payment()
    api.provider.payments[payment.provider_payment_id] = payment
    setattr(api.publisher, mode, True)
    resp = await post(api, notification("payment.succeeded", payment.provider_payment_id))
    assert resp.status_code == 503
    assert error_code(resp) == "publish_failed"

    # The redelivery, once the broker is back, goes through.
    setattr(api.publisher, mode, False)
    again = await post(api, notification("payment.succeeded", payment.provider_payment_id))
    assert again.status_code == 200 and again.json()["status"] == "accepted"


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1", 200),
        ("77.75.153.10", 200),
        ("77.75.154.10", 403),
        ("10.0.0.1", 403),
        ("::1", 403),
        ("::ffff:127.0.0.1", 200),
    ],
)
async def test_source_ip_allowlist(api: Api, host: str, status: int) -> None:
    resp = await post(api, notification("refund.succeeded", "r-1"), host=host)
    assert resp.status_code == status, resp.text
    if status == 403:
        assert error_code(resp) == "webhook_source_forbidden"


async def test_forwarded_for_is_ignored_unless_trusted(api: Api) -> None:
    resp = await post(
        api,
        notification("refund.succeeded", "r-1"),
        host="10.0.0.1",
        **{"X-Forwarded-For": "127.0.0.1"},
    )
    assert resp.status_code == 403


async def test_forbidden_source_is_refused_before_anything_else(api: Api) -> None:
    reads = len(api.provider.reads)
    resp = await post(api, b"{garbage", host="10.0.0.1")
    assert resp.status_code == 403
    assert len(api.provider.reads) == reads


async def test_trusted_forwarded_for_uses_the_last_hop(module_pg_dsn: str) -> None:
    async with running_api(module_pg_dsn, webhook_trust_forwarded_for=True) as api:
        body = notification("refund.succeeded", "r-1")
        proxy = "10.0.0.5"  # our proxy is the peer; the hop it appended is the real source
        ok = await post(api, body, host=proxy, **{"X-Forwarded-For": "6.6.6.6, 77.75.153.1"})
        spoofed = await post(api, body, host=proxy, **{"X-Forwarded-For": "77.75.153.1, 6.6.6.6"})
        garbage = await post(api, body, host=proxy, **{"X-Forwarded-For": "not-an-ip"})
    assert ok.status_code == 200
    assert spoofed.status_code == 403
    assert garbage.status_code == 403
