"""Overload and rate limits on the real app (issue 14): 503 ``overloaded`` and 429
``rate_limited``, both with ``Retry-After`` and the one error shape; the real client address
behind a trusted proxy; a webhook burst costs one provider read per object."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from providers.port import ProviderPayment
from schemas.ids import command_id_for, payment_id_for, subscription_id_for
from schemas.money import Money
from tests.integration.api_support import Api, error_code, new_user, running_api

pytestmark = pytest.mark.integration

WEBHOOK = "/api/v1/webhooks/yookassa"
LOGIN = "/api/v1/admin/session"


def notification(event: str, object_id: str) -> bytes:
    return json.dumps(
        {"type": "notification", "event": event, "object": {"id": object_id}}
    ).encode()


def provider_payment(status: str) -> ProviderPayment:
    user = new_user()
    return ProviderPayment(
        provider_payment_id=f"2f9c1a7e-000f-5000-8000-{uuid.uuid4().hex[:12]}",
        status=status,
        amount=Money(29900, "RUB"),
        paid=status == "succeeded",
        metadata={
            "payment_id": payment_id_for(command_id_for(user, "k")),
            "subscription_id": subscription_id_for(user),
        },
    )


async def webhook(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(WEBHOOK, content=body, headers={"Content-Type": "application/json"})


def assert_retry_after(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert error_code(resp) == code
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.json()["error"]["details"]["retry_after_s"] == int(resp.headers["retry-after"])


async def test_writes_beyond_a_users_rate_are_429_and_others_go_on(module_pg_dsn: str) -> None:
    async with running_api(
        module_pg_dsn, rate_limit_writes_per_s=0.01, rate_limit_writes_burst=2
    ) as api:
        user, other = new_user(), new_user()
        first = [await api.pay(user) for _ in range(2)]
        refused = await api.pay(user)
        others = await api.pay(other)
        await api.settle()
    assert [r.status_code for r in first] == [202, 202]
    assert_retry_after(refused, 429, "rate_limited")
    assert refused.json()["error"]["details"]["scope"] == "writes"
    assert others.status_code == 202


async def test_overload_is_503_at_once_probes_pass_and_it_recovers(module_pg_dsn: str) -> None:
    async with running_api(
        module_pg_dsn, api_max_in_flight=1, api_max_waiting=0, api_max_wait_s=0.0
    ) as api:
        assert api.app.state.admission.in_flight == 0
        payment = provider_payment("succeeded")
        api.provider.payments[payment.provider_payment_id] = payment
        api.provider.hang = True  # this notification holds the one place for provider_timeout_s
        busy = asyncio.create_task(
            webhook(api.client, notification("payment.succeeded", payment.provider_payment_id))
        )
        for _ in range(100):
            await asyncio.sleep(0.01)
            if api.provider.reads:  # it holds its place, waiting for the provider
                break
        loop = asyncio.get_running_loop()
        started = loop.time()
        refused = await api.client.get("/api/v1/plans")
        refused_in = loop.time() - started
        live = await api.client.get("/healthz")
        ready = await api.client.get("/readyz")
        api.provider.hang = False
        assert (await busy).status_code == 503  # the provider timed out
        after = await api.client.get("/api/v1/plans")
    assert_retry_after(refused, 503, "overloaded")
    assert refused_in < 0.2  # refused at once, not after a wait
    assert live.status_code == 200 and ready.status_code == 200
    assert after.status_code == 200


async def test_login_attempts_are_limited_per_real_client_address(module_pg_dsn: str) -> None:
    async with running_api(
        module_pg_dsn,
        rate_limit_logins_per_min=0.1,
        rate_limit_logins_burst=2,
        api_trusted_proxies=["10.0.0.0/8"],
    ) as api:
        body = {"username": "admin", "password": "wrong-password"}

        async def login(peer: str, forwarded: str | None = None) -> httpx.Response:
            headers = {"X-Forwarded-For": forwarded} if forwarded else {}
            return await api.client_from(peer).post(LOGIN, json=body, headers=headers)

        via_proxy = [await login("10.0.0.5", "1.2.3.4") for _ in range(3)]
        other_client = await login("10.0.0.6", "5.6.7.8")  # same proxy, another client
        # Not our proxy: its X-Forwarded-For is ignored, the peer is the client.
        direct = [await login("6.6.6.6", "1.2.3.4") for _ in range(3)]
    assert [r.status_code for r in via_proxy[:2]] != [429, 429]
    assert_retry_after(via_proxy[2], 429, "rate_limited")
    assert other_client.status_code != 429
    assert direct[0].status_code != 429 and direct[1].status_code != 429
    assert direct[2].status_code == 429


async def test_webhook_endpoint_is_rate_limited(module_pg_dsn: str) -> None:
    async with running_api(
        module_pg_dsn, rate_limit_webhooks_per_s=0.01, rate_limit_webhooks_burst=2
    ) as api:
        answers = [await webhook(api.client, notification("refund.succeeded", "r")) for _ in "abc"]
    assert [r.status_code for r in answers[:2]] == [200, 200]
    assert_retry_after(answers[2], 429, "rate_limited")


async def test_a_redelivery_burst_costs_one_provider_read_per_payment(module_pg_dsn: str) -> None:
    async with running_api(module_pg_dsn, api_max_in_flight=200) as api:
        await burst_of_redeliveries(api)


async def burst_of_redeliveries(api: Api) -> None:
    payments = [provider_payment("succeeded") for _ in range(10)]
    for p in payments:
        api.provider.payments[p.provider_payment_id] = p
    reads, sent = len(api.provider.reads), len(api.publisher.sent)
    burst = [
        webhook(api.client, notification("payment.succeeded", p.provider_payment_id))
        for _ in range(10)
        for p in payments
    ]
    answers = await asyncio.gather(*burst)
    assert {r.status_code for r in answers} == {200}
    assert len(api.provider.reads) - reads == 10
    assert len(api.publisher.sent) - sent == 10  # each state published once, not 10 times
    # A notification of a newer state (here a capture after a hold) reads again.
    held = provider_payment("waiting_for_capture")
    api.provider.payments[held.provider_payment_id] = held
    await webhook(api.client, notification("payment.waiting_for_capture", held.provider_payment_id))
    api.provider.payments[held.provider_payment_id] = provider_payment("succeeded")
    again = await webhook(api.client, notification("payment.succeeded", held.provider_payment_id))
    assert again.status_code == 200
    assert api.provider.reads[-2:] == [held.provider_payment_id] * 2


async def test_a_flood_is_answered_within_the_bound_and_the_api_recovers(
    module_pg_dsn: str,
) -> None:
    """Issue 14's overload promise on the real app: offered far more than it can serve (a
    provider that reads two payments at a time, 50 ms each: 40 notifications a second), every
    answer comes within the bound, the excess as 503 ``overloaded`` with Retry-After in the
    one error shape, what is admitted is served, and the next request after the flood is
    served at once. Without admission control (checked once) the reads queue behind the
    provider until they time out and the last answers take well over a second."""
    bound_s = 1.0
    async with running_api(
        module_pg_dsn, api_max_in_flight=4, api_max_waiting=4, api_max_wait_s=0.2
    ) as api:
        gate = asyncio.Semaphore(2)
        fake_read = api.provider.get_payment

        async def slow_read(provider_payment_id: str) -> ProviderPayment:
            async with gate:
                await asyncio.sleep(0.05)
                return await fake_read(provider_payment_id)

        api.provider.get_payment = slow_read  # type: ignore[method-assign]
        payments = [provider_payment("succeeded") for _ in range(100)]
        for p in payments:
            api.provider.payments[p.provider_payment_id] = p
        loop = asyncio.get_running_loop()

        async def timed(object_id: str) -> tuple[httpx.Response, float]:
            started = loop.time()
            resp = await webhook(api.client, notification("payment.succeeded", object_id))
            return resp, loop.time() - started

        answers = await asyncio.gather(*(timed(p.provider_payment_id) for p in payments))
        late = provider_payment("succeeded")
        api.provider.payments[late.provider_payment_id] = late
        after, after_s = await timed(late.provider_payment_id)
    slowest = max(t for _, t in answers)
    assert slowest < bound_s, f"an answer took {slowest:.2f} s"
    served = [r for r, _ in answers if r.status_code == 200]
    refused = [r for r, _ in answers if r.status_code != 200]
    assert served and refused, [r.status_code for r, _ in answers]
    for r in refused:
        assert_retry_after(r, 503, "overloaded")
    assert len(api.provider.reads) == len(served) + 1  # every admitted one was served
    assert after.status_code == 200 and after_s < 0.5
