"""The API with its real Kafka producer: an accepted command lands on billing.commands keyed by
its subscription, and with no broker at all the API still answers 202 at once."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from api.auth import mint_token
from api.main import create_app
from billing.kafka_local import KafkaBroker, free_port
from schemas.messages import PaySubscription, decode_command
from schemas.topics import COMMANDS
from tests.integration.api_support import (
    RETURN_URL,
    FakeProvider,
    api_settings,
    fake_normalise,
    new_user,
)

pytestmark = pytest.mark.integration


async def _pay(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/api/v1/payments",
        json={"plan_id": "monthly", "return_url": RETURN_URL},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())},
    )


async def test_accepted_command_reaches_the_broker(
    kafka_broker: KafkaBroker, module_pg_dsn: str
) -> None:
    settings = api_settings(module_pg_dsn, kafka_bootstrap=kafka_broker.bootstrap)
    app = create_app(settings, provider=FakeProvider(), normalise=fake_normalise, relay=False)
    user = new_user()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        resp = await _pay(client, mint_token(settings, user))
        assert resp.status_code == 202
        await app.state.background.drain(10)

    consumer = AIOKafkaConsumer(
        COMMANDS,
        bootstrap_servers=kafka_broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=f"api-test-{uuid.uuid4().hex[:6]}",
    )
    await consumer.start()
    try:
        found = None
        deadline = time.monotonic() + 20
        while found is None and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for rec in records:
                    cmd = decode_command(rec.value)
                    if isinstance(cmd, PaySubscription) and cmd.user_id == user:
                        found = (rec.key, cmd)
    finally:
        await consumer.stop()
    assert found is not None
    key, cmd = found
    assert key == cmd.subscription_id.encode()
    assert cmd.payment_id == resp.json()["payment_id"]


async def test_no_broker_at_all_still_accepts_at_once(module_pg_dsn: str) -> None:
    settings = api_settings(
        module_pg_dsn, kafka_bootstrap=f"127.0.0.1:{free_port()}", publish_timeout_s=1.0
    )
    app = create_app(settings, provider=FakeProvider(), normalise=fake_normalise, relay=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        started = time.monotonic()
        resp = await _pay(client, mint_token(settings, new_user()))
        elapsed = time.monotonic() - started
        assert resp.status_code == 202
        assert elapsed < 0.5
        await asyncio.wait_for(app.state.background.drain(10), 15)
        async with app.state.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT published_at, last_error FROM command_outbox WHERE payment_id = %s",
                (resp.json()["payment_id"],),
            )
            row = await cur.fetchone()
    assert row is not None and row[0] is None and "publish failed" in row[1]
