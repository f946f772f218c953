"""The API's Prometheus metrics against the real PostgreSQL: request counts by route template,
idempotency outcomes, and the gauges read from the database (api/gauges.py)."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from api.gauges import refresh_database
from tests.integration.api_support import Api


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_requests_are_counted_by_route_template_not_path(api: Api) -> None:
    before = sample(
        "billing_http_requests_total",
        route="/api/v1/payments/{payment_id}",
        method="GET",
        status="404",
    )
    user = f"u-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        missing = await api.client.get(f"/api/v1/payments/{uuid.uuid4()}", headers=api.auth(user))
        assert missing.status_code == 404
    await api.client.get(f"/no/such/{uuid.uuid4()}")
    text = (await api.client.get("/metrics")).text
    after = sample(
        "billing_http_requests_total",
        route="/api/v1/payments/{payment_id}",
        method="GET",
        status="404",
    )
    assert after - before == 3
    assert 'route="unmatched"' in text
    assert "/no/such" not in text  # a path never becomes a label


async def test_idempotency_outcomes(api: Api) -> None:
    labels = ("accepted", "replayed", "mismatch")
    before = {o: sample("billing_idempotency_outcomes_total", outcome=o) for o in labels}
    user = f"u-{uuid.uuid4().hex[:8]}"
    first = await api.pay(user, key="k-1")
    again = await api.pay(user, key="k-1")
    other = await api.pay(user, key="k-1", body={"plan_id": "yearly", "return_url": "https://x"})
    assert (first.status_code, again.status_code, other.status_code) == (202, 202, 422)
    after = {o: sample("billing_idempotency_outcomes_total", outcome=o) for o in labels}
    assert {o: after[o] - before[o] for o in labels} == {
        "accepted": 1,
        "replayed": 1,
        "mismatch": 1,
    }


async def test_database_gauges_show_the_oldest_open_command(api: Api) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    assert (await api.pay(user)).status_code == 202
    async with api.pool.connection() as conn:
        await conn.execute(
            "UPDATE command_outbox SET created_at = now() - interval '10 minutes'"
            " WHERE user_id = %s",
            (user,),
        )
    await refresh_database(api.pool)
    assert sample("billing_commands_oldest_open_age_seconds") >= 600
    assert sample("billing_commands_open", status="accepted") >= 1
    assert sample("billing_unknown_outcomes", object="payment") >= 0
    assert sample("billing_gauges_refreshed_timestamp_seconds", source="database") > 0
    async with api.pool.connection() as conn:
        await conn.execute(
            "UPDATE command_outbox SET status = 'done' WHERE status IN ('accepted', 'processing')"
        )
    await refresh_database(api.pool)
    assert sample("billing_commands_oldest_open_age_seconds") == 0
