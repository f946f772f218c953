"""Helpers for the API tests: the app on the real PostgreSQL with in-memory fakes for Kafka and
the provider, driven through httpx's ASGI transport with its lifespan running."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from api.auth import mint_token
from api.main import create_app
from api.publisher import PublishError
from api.relay import Background
from billing.clock import now_ms
from billing.config import Settings
from providers.port import ProviderNotFound, ProviderPayment, ProviderUnavailable
from schemas.ids import observation_id_for, subscription_id_for
from schemas.messages import (
    AnyCommand,
    AnyEvent,
    PaymentObserved,
    RefundObserved,
    decode_command,
    decode_provider_event,
    encode,
)
from schemas.state import SubscriptionState
from schemas.topics import COMMANDS, PROVIDER_EVENTS
from streams.ledger.machine import LedgerInput, Policy, decide
from streams.projection.agent import project

JWT_SECRET = "test-secret-of-at-least-thirty-two-bytes!"
RETURN_URL = "https://cinema.example/paid"


class RecordingPublisher:
    """In-memory Kafka: records what was acknowledged. ``fail`` makes it refuse (broker
    down), ``hang`` makes it never answer (broker unreachable, the caller's timeout fires)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = False
        self.hang = False
        self.attempts = 0

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        self.attempts += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.fail:
            raise PublishError("broker down (fake)")
        self.sent.append((topic, key, value))

    async def close(self) -> None:
        return None

    def commands(self) -> list[tuple[bytes, AnyCommand]]:
        return [(k, decode_command(v)) for t, k, v in self.sent if t == COMMANDS]

    def provider_events(self) -> list[tuple[bytes, Any]]:
        return [(k, decode_provider_event(v)) for t, k, v in self.sent if t == PROVIDER_EVENTS]


class FakeProvider:
    """Holds provider payments by id; ``get_payment`` is the re-read webhooks must do."""

    def __init__(self) -> None:
        self.payments: dict[str, ProviderPayment] = {}
        self.reads: list[str] = []
        self.unavailable = False
        self.hang = False

    async def create_payment(
        self, request: Any, subscription_id: str, *, receipt: Any = None
    ) -> ProviderPayment:
        raise NotImplementedError

    async def get_payment(self, provider_payment_id: str) -> ProviderPayment:
        self.reads.append(provider_payment_id)
        if self.hang:
            await asyncio.Event().wait()
        if self.unavailable:
            raise ProviderUnavailable("provider down (fake)")
        try:
            return self.payments[provider_payment_id]
        except KeyError:
            raise ProviderNotFound(f"no payment {provider_payment_id}") from None

    async def create_refund(
        self,
        provider_payment_id: str,
        amount: Any,
        *,
        refund_id: str,
        description: str = "",
        metadata: dict[str, str] | None = None,
        receipt: Any = None,
    ) -> Any:
        raise NotImplementedError

    async def get_refund(self, provider_refund_id: str) -> Any:
        raise NotImplementedError

    async def capture_payment(
        self, provider_payment_id: str, *, key: str, amount: Any = None
    ) -> ProviderPayment:
        raise NotImplementedError

    async def cancel_payment(self, provider_payment_id: str, *, key: str) -> ProviderPayment:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def fake_normalise(payment: Any, *, source: str, observed_at: int) -> PaymentObserved:
    """Stands in for providers.yookassa_adapter.normalise (written elsewhere)."""
    assert isinstance(payment, ProviderPayment)
    assert payment.subscription_id is not None and payment.payment_id is not None
    return PaymentObserved(
        observation_id=observation_id_for(payment.provider_payment_id, payment.status),
        subscription_id=payment.subscription_id,
        observed_at=observed_at,
        source=source,  # type: ignore[arg-type]
        payment_id=payment.payment_id,
        provider_payment_id=payment.provider_payment_id,
        status=payment.status,  # type: ignore[arg-type]
        amount=payment.amount,
        paid=payment.paid,
        confirmation_url=payment.confirmation_url,
    )


def api_settings(dsn: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "postgres_dsn": SecretStr(dsn),
        "jwt_secret": SecretStr(JWT_SECRET),
        "relay_delay_s": 5.0,
        "relay_max_backoff_s": 300.0,
        "relay_interval_s": 0.2,
        "publish_timeout_s": 0.5,
        "provider_timeout_s": 0.5,
        "webhook_allowed_ips": ["127.0.0.1/32", "77.75.153.0/25"],
        "webhook_trust_forwarded_for": False,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Api:
    app: FastAPI
    settings: Settings
    client: httpx.AsyncClient
    publisher: RecordingPublisher
    provider: FakeProvider
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def token(self, user_id: str, *, admin: bool = False, ttl_s: int = 3600) -> str:
        return mint_token(self.settings, user_id, roles=("admin",) if admin else (), ttl_s=ttl_s)

    def auth(self, user_id: str, *, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user_id, admin=admin)}"}

    def client_from(self, host: str) -> httpx.AsyncClient:
        """A client whose requests come from ``host`` (for the webhook allowlist)."""
        c = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(host, 40000)),
            base_url="http://testserver",
        )
        self.clients.append(c)
        return c

    @property
    def pool(self) -> Any:
        return self.app.state.pool

    @property
    def background(self) -> Background:
        background: Background = self.app.state.background
        return background

    async def settle(self) -> None:
        """Wait for the post-202 background publishes."""
        await self.background.drain(5.0)

    async def pay(
        self,
        user_id: str,
        key: str | None = None,
        body: dict[str, Any] | None = None,
        **headers: str,
    ) -> httpx.Response:
        hdrs = self.auth(user_id)
        hdrs["Idempotency-Key"] = key if key is not None else str(uuid.uuid4())
        hdrs.update(headers)
        payload = body if body is not None else {"plan_id": "monthly", "return_url": RETURN_URL}
        return await self.client.post("/api/v1/payments", json=payload, headers=hdrs)


class Ledger:
    """The worker's part, in-process, for API tests: the commands the API published go
    through the pure ledger (``streams.ledger.machine.decide``) and its events through the
    real PostgreSQL projection (``streams.projection.agent.project``), so status URLs and read
    models say what a client would see with the whole stack running."""

    def __init__(self, api: Api, policy: Policy | None = None) -> None:
        self.api = api
        self.policy = policy or Policy()
        self.states: dict[str, SubscriptionState] = {}
        self.applied: set[str] = set()

    async def apply(self, msg: LedgerInput) -> list[AnyEvent]:
        decision = decide(self.states.get(msg.subscription_id), msg, self.policy)
        if decision.state is not None:
            self.states[msg.subscription_id] = decision.state
        async with self.api.pool.connection() as conn:
            await project(conn, [(e, encode(e)) for e in decision.events])
        return decision.events

    async def drain(self, user_id: str) -> list[AnyEvent]:
        """Apply every command published so far for ``user_id``'s subscription, once."""
        await self.api.settle()
        sub = subscription_id_for(user_id)
        events: list[AnyEvent] = []
        for _, cmd in self.api.publisher.commands():
            if cmd.subscription_id == sub and cmd.command_id not in self.applied:
                self.applied.add(cmd.command_id)
                events += await self.apply(cmd)
        return events

    async def observe(
        self, user_id: str, payment_id: str, status: str, *, reason: str | None = None
    ) -> list[AnyEvent]:
        """The provider's outcome for a payment (as the gateway or a webhook reports it)."""
        sub = subscription_id_for(user_id)
        rec = self.states[sub].payments[payment_id]
        provider_id = f"prov-{payment_id}"
        return await self.apply(
            PaymentObserved(
                observation_id=observation_id_for(provider_id, status),
                subscription_id=sub,
                observed_at=now_ms(),
                source="gateway",
                payment_id=payment_id,
                provider_payment_id=provider_id,
                status=status,  # type: ignore[arg-type]
                amount=rec.amount,
                paid=status == "succeeded",
                cancellation_reason=reason,
                payment_method_id=f"pm-{user_id}",
                payment_method_saved=True,
            )
        )

    async def subscribe(self, user_id: str, plan_id: str = "monthly") -> str:
        """Buy ``plan_id`` and let the provider succeed: an active subscription."""
        resp = await self.api.pay(user_id, body={"plan_id": plan_id, "return_url": RETURN_URL})
        assert resp.status_code == 202, resp.text
        payment_id: str = resp.json()["payment_id"]
        await self.drain(user_id)
        await self.observe(user_id, payment_id, "succeeded")
        return payment_id

    async def refund_outcome(self, user_id: str, refund_id: str, status: str) -> list[AnyEvent]:
        sub = subscription_id_for(user_id)
        ref = self.states[sub].refunds[refund_id]
        provider_id = f"prov-{refund_id}"
        return await self.apply(
            RefundObserved(
                observation_id=observation_id_for(provider_id, status),
                subscription_id=sub,
                observed_at=now_ms(),
                source="gateway",
                refund_id=refund_id,
                payment_id=ref.payment_id,
                provider_refund_id=provider_id,
                status=status,  # type: ignore[arg-type]
                amount=ref.amount,
            )
        )


@contextlib.asynccontextmanager
async def running_api(dsn: str, *, relay: bool = False, **overrides: Any) -> AsyncIterator[Api]:
    settings = api_settings(dsn, **overrides)
    publisher = RecordingPublisher()
    provider = FakeProvider()
    app = create_app(
        settings,
        publisher=publisher,
        provider=provider,
        normalise=fake_normalise,
        relay=relay,
    )
    async with app.router.lifespan_context(app):
        await app.state.pool.wait(timeout=10)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )
        api = Api(app, settings, client, publisher, provider)
        try:
            yield api
        finally:
            await client.aclose()
            for c in api.clients:
                await c.aclose()


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def error_code(response: httpx.Response) -> str:
    """The machine-readable code; also checks the error body has the one shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    code: str = body["error"]["code"]
    return code


@dataclass
class LiveApi:
    """The app served by uvicorn on a real loopback socket (for clients that are not ASGI:
    schemathesis, a browser): ``url`` is its base URL."""

    url: str
    app: FastAPI
    settings: Settings
    publisher: RecordingPublisher

    def token(self, user_id: str, *, admin: bool = False, ttl_s: int = 3600) -> str:
        return mint_token(self.settings, user_id, roles=("admin",) if admin else (), ttl_s=ttl_s)


@contextlib.contextmanager
def serving_api(dsn: str, **overrides: Any) -> Iterator[LiveApi]:
    """Serve the app (real PostgreSQL, the in-memory publisher and provider of these tests)
    from a thread with its own event loop, on a free loopback port, until the block ends."""
    import socket
    import threading
    import time

    import uvicorn

    settings = api_settings(dsn, **overrides)
    publisher = RecordingPublisher()
    app = create_app(
        settings,
        publisher=publisher,
        provider=FakeProvider(),
        normalise=fake_normalise,
        relay=False,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="live-api", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live API did not start")
        time.sleep(0.05)
    try:
        yield LiveApi(f"http://127.0.0.1:{port}", app, settings, publisher)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
