"""The pure parts of admission control and rate limiting (api/limits.py) and the webhook's
shared re-reads (api/routes/webhooks.py ReReads), driven by a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from api.limits import (
    Admission,
    Overloaded,
    RateLimited,
    RateLimiter,
    client_address,
    parse_networks,
    retry_after_s,
)
from api.routes.webhooks import ReReads
from providers.port import ProviderNotFound, ProviderPayment
from schemas.money import Money


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------------------- the bucket
def test_bucket_allows_the_burst_then_refuses_with_the_wait_until_a_token() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("u") for _ in range(3)] == [None, None, None]
    wait = limiter.take("u")
    assert wait == pytest.approx(0.5)  # one token at 2/s
    clock.t += 0.5
    assert limiter.take("u") is None
    assert limiter.take("u") == pytest.approx(0.5)


def test_bucket_refills_to_the_burst_only() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=2, clock=clock)
    limiter.take("u")
    clock.t += 3600
    assert [limiter.take("u") for _ in range(3)][:2] == [None, None]
    assert limiter.take("u") is not None


def test_buckets_are_per_key_and_a_refusal_takes_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.take("a") is None
    assert limiter.take("b") is None
    for _ in range(5):
        assert limiter.take("a") == pytest.approx(1.0)  # refusals do not push it further
    clock.t += 1.0
    assert limiter.take("a") is None


def test_zero_rate_turns_the_limit_off() -> None:
    limiter = RateLimiter(rate=0, burst=1)
    assert all(limiter.take("u") is None for _ in range(1000))


def test_buckets_are_bounded_least_recent_first() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=2, clock=clock)
    limiter.take("a")
    limiter.take("b")
    limiter.take("c")  # "a" is forgotten: a fresh bucket again
    assert limiter.take("a") is None
    assert limiter.take("c") is not None


def test_refusals_carry_retry_after_in_whole_seconds() -> None:
    assert retry_after_s(0.01) == 1 and retry_after_s(1.2) == 2
    limited = RateLimited(2.5, scope="writes")
    assert (limited.status_code, limited.code) == (429, "rate_limited")
    assert limited.headers == {"Retry-After": "3"}
    assert limited.details == {"scope": "writes", "retry_after_s": 3}
    overloaded = Overloaded()
    assert (overloaded.status_code, overloaded.code) == (503, "overloaded")
    assert overloaded.headers == {"Retry-After": "1"}


# ----------------------------------------------------------------------------- admission
async def test_admission_admits_up_to_the_bound_and_refuses_beyond_the_queue_at_once() -> None:
    adm = Admission(max_in_flight=2, max_waiting=1, max_wait_s=5.0)
    assert await adm.enter() and await adm.enter()
    waiter = asyncio.create_task(adm.enter())
    await asyncio.sleep(0)
    assert adm.waiting == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await adm.enter() is False  # queue full: refused without waiting
    assert loop.time() - started < 0.1
    adm.leave()  # the place goes to the waiter, not back to the pool
    assert await waiter is True
    assert adm.in_flight == 2 and adm.waiting == 0
    adm.leave()
    adm.leave()
    assert adm.in_flight == 0


async def test_admission_waits_at_most_max_wait_s() -> None:
    adm = Admission(max_in_flight=1, max_waiting=10, max_wait_s=0.05)
    assert await adm.enter()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await adm.enter() is False
    assert 0.04 < loop.time() - started < 0.5
    assert adm.waiting == 0 and adm.refused == 1
    adm.leave()
    assert adm.in_flight == 0
    assert await adm.enter()  # recovered at once


async def test_a_newcomer_cannot_overtake_a_waiter() -> None:
    adm = Admission(max_in_flight=1, max_waiting=5, max_wait_s=5.0)
    assert await adm.enter()
    first = asyncio.create_task(adm.enter())
    await asyncio.sleep(0)
    adm.leave()
    assert adm.try_enter() is False  # the freed place is the waiter's
    assert await first is True


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    adm = Admission(max_in_flight=1, max_waiting=5, max_wait_s=5.0)
    assert await adm.enter()
    waiter = asyncio.create_task(adm.enter())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert adm.waiting == 0
    adm.leave()
    assert adm.in_flight == 0


# ------------------------------------------------------------------------ client address
TRUSTED = parse_networks(["10.0.0.0/8", "::1/128"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("6.6.6.6", "1.2.3.4", "6.6.6.6"),  # not a proxy of ours: its header means nothing
        ("10.0.0.5", None, "10.0.0.5"),  # our proxy, nothing forwarded
        ("10.0.0.5", "1.2.3.4", "1.2.3.4"),
        ("10.0.0.5", "9.9.9.9, 1.2.3.4", "1.2.3.4"),  # the left part is the client's claim
        ("10.0.0.5", "1.2.3.4, 10.0.0.7", "1.2.3.4"),  # two proxies of ours in a row
        ("10.0.0.5", "1.2.3.4, garbage", "10.0.0.5"),  # unreadable: trust nothing left of it
        ("::1", "2001:db8::1", "2001:db8::1"),
        ("::ffff:6.6.6.6", "1.2.3.4", "6.6.6.6"),
        (None, None, "-"),
    ],
)
def test_client_address_trusts_forwarded_for_only_from_trusted_proxies(
    peer: str | None, forwarded: str | None, client: str
) -> None:
    assert client_address(peer, forwarded, TRUSTED) == client


def test_no_trusted_proxy_means_the_peer() -> None:
    assert client_address("10.0.0.5", "1.2.3.4", []) == "10.0.0.5"


# ------------------------------------------------------------------- webhook re-reads
def payment(status: str) -> ProviderPayment:
    return ProviderPayment(
        provider_payment_id="p-1", status=status, amount=Money(100, "RUB"), paid=False, metadata={}
    )


class Provider:
    def __init__(self, status: str) -> None:
        self.status = status
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.missing = False

    async def fetch(self) -> ProviderPayment:
        self.reads += 1
        await self.gate.wait()
        if self.missing:
            raise ProviderNotFound("gone")
        return payment(self.status)


async def test_a_burst_of_notifications_shares_one_read() -> None:
    clock = Clock()
    rereads = ReReads(5.0, clock=clock)
    provider = Provider("succeeded")
    provider.gate.clear()
    burst = [
        asyncio.create_task(rereads.read("p-1", "succeeded", provider.fetch)) for _ in range(50)
    ]
    await asyncio.sleep(0)
    provider.gate.set()
    assert {p.status for p in await asyncio.gather(*burst)} == {"succeeded"}
    assert provider.reads == 1
    clock.t += 4.0  # a redelivery within the window: the same answer
    await rereads.read("p-1", "succeeded", provider.fetch)
    assert provider.reads == 1
    clock.t += 2.0  # past the window: read again
    await rereads.read("p-1", "succeeded", provider.fetch)
    assert provider.reads == 2


async def test_a_notification_of_a_newer_state_reads_again() -> None:
    rereads = ReReads(5.0, clock=Clock())
    provider = Provider("pending")
    assert (await rereads.read("p-1", "pending", provider.fetch)).status == "pending"
    provider.status = "succeeded"
    got = await rereads.read("p-1", "succeeded", provider.fetch)
    assert got.status == "succeeded" and provider.reads == 2
    # A late "pending" after the final state: the final answer serves it.
    assert (await rereads.read("p-1", "pending", provider.fetch)).status == "succeeded"
    assert provider.reads == 2


async def test_a_failed_read_is_not_shared_later() -> None:
    rereads = ReReads(5.0, clock=Clock())
    provider = Provider("succeeded")
    provider.missing = True
    with pytest.raises(ProviderNotFound):
        await rereads.read("p-1", "succeeded", provider.fetch)
    provider.missing = False
    assert (await rereads.read("p-1", "succeeded", provider.fetch)).status == "succeeded"
    assert provider.reads == 2


async def test_published_states_are_remembered_for_the_window() -> None:
    clock = Clock()
    rereads = ReReads(5.0, clock=clock)
    provider = Provider("succeeded")
    await rereads.read("p-1", "succeeded", provider.fetch)
    assert not rereads.already_published("p-1", "succeeded")
    sent: list[str] = []

    async def publish() -> None:
        await asyncio.sleep(0.01)
        sent.append("succeeded")

    await asyncio.gather(*(rereads.publish_once("p-1", "succeeded", publish) for _ in range(20)))
    assert sent == ["succeeded"]  # one publish for the burst
    assert rereads.already_published("p-1", "succeeded")
    assert not rereads.already_published("p-1", "canceled")
    clock.t += 6.0
    assert not rereads.already_published("p-1", "succeeded")


async def test_a_failed_publish_is_tried_again() -> None:
    rereads = ReReads(5.0, clock=Clock())
    await rereads.read("p-1", "succeeded", Provider("succeeded").fetch)
    calls = []

    async def publish() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("broker down")

    with pytest.raises(RuntimeError):
        await rereads.publish_once("p-1", "succeeded", publish)
    assert not rereads.already_published("p-1", "succeeded")
    await rereads.publish_once("p-1", "succeeded", publish)
    assert len(calls) == 2 and rereads.already_published("p-1", "succeeded")
