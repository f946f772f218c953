"""The console's reconciliation endpoints on the real PostgreSQL, over what reconciler/store.py
recorded: runs with counts, discrepancies across runs, and an admin's decision (Idempotency-Key
rules, a changed mind refused, the ledger told through the outbox when the provider's view is
accepted: written with the decision, republished after a lost publish, closed once applied)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer

from api.auth import mint_token
from api.main import create_app
from api.publisher import KafkaPublisher
from api.relay import relay_once
from billing.clock import now_ms
from billing.kafka_local import KafkaBroker
from reconciler import store
from schemas.ids import command_id_for, observation_id_for, payment_id_for, subscription_id_for
from schemas.messages import PaymentObserved, PaySubscription, decode_provider_event, encode
from schemas.money import Money
from schemas.recon_match import MatchItem
from schemas.state import SubscriptionState
from schemas.topics import PROVIDER_EVENTS
from streams.ledger.machine import LedgerInput, Policy, decide
from streams.projection.agent import project
from tests.integration.api_support import (
    Api,
    FakeProvider,
    Ledger,
    api_settings,
    error_code,
    fake_normalise,
    new_user,
    running_api,
)

pytestmark = pytest.mark.integration

ADMIN = "recon-admin"
PRICE = Money(29900, "RUB")
BASE = "/api/v1/admin/reconciliation"


@pytest.fixture(scope="module")
async def api(module_pg_dsn: str) -> AsyncIterator[Api]:
    async with running_api(module_pg_dsn) as a:
        yield a


def item(kind: str, repair: str, **kw: Any) -> MatchItem:
    values: dict[str, Any] = {
        "kind": kind,
        "object": "payment",
        "subscription_id": str(uuid.uuid4()),
        "payment_id": str(uuid.uuid4()),
        "provider_id": f"pp-{uuid.uuid4().hex[:12]}",
        "ours_status": "succeeded",
        "theirs_status": "succeeded",
        "ours_amount": PRICE,
        "theirs_amount": PRICE,
        "repair": repair,
    }
    values.update(kw)
    return MatchItem(**values)


@pytest.fixture(scope="module")
async def run(module_pg_dsn: str) -> dict[str, MatchItem | str]:
    """One finished run: a matched item, an amount mismatch and a payment the provider never
    saw (both escalated)."""
    items = {
        "matched": item("matched", "none"),
        "amount": item("amount_mismatch", "escalate", theirs_amount=Money(29000, "RUB")),
        "missing": item("missing_at_provider", "escalate", theirs_status=None, theirs_amount=None),
    }
    run_id = str(uuid.uuid4())
    at = now_ms()
    async with await psycopg.AsyncConnection.connect(module_pg_dsn, autocommit=True) as conn:
        spec = await store.create_run(
            conn,
            run_id=run_id,
            window_start=at - 86_400_000,
            window_end=at,
            source="provider_api",
            taken_at=at,
        )
        assert spec is not None
        await store.start_feeding(conn, run_id, lines=3, partitions=1)
        await store.record_items(conn, run_id, [(0, i) for i in items.values()], at)
        await store.mark_partition_done(
            conn, run_id, 0, lines_sent=3, lines_matched=3, complete=True, items=3, at=at
        )
        assert await store.finish_if_complete(conn, run_id, at)
    return {"run_id": run_id, **items}


def admin(api: Api, key: str | None = None) -> dict[str, str]:
    headers = api.auth(ADMIN, admin=True)
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


async def test_summary_runs_and_open_discrepancies(api: Api, run: dict[str, Any]) -> None:
    summary = (await api.client.get(f"{BASE}/summary", headers=admin(api))).json()
    assert summary["open_discrepancies"] >= 2
    assert summary["open_by_kind"]["amount_mismatch"] >= 1
    assert summary["last_run"]["run_id"] == run["run_id"]
    assert summary["last_run"]["status"] == "finished"
    assert summary["last_run"]["counts"]["matched"] == 1

    runs = (await api.client.get(f"{BASE}/runs", headers=admin(api))).json()
    assert runs["items"][0]["run_id"] == run["run_id"] and runs["next_offset"] is None
    assert runs["items"][0]["discrepancies"] == 2 and runs["items"][0]["unresolved"] == 2

    page = (
        await api.client.get(
            f"{BASE}/discrepancies", params={"run_id": run["run_id"]}, headers=admin(api)
        )
    ).json()
    kinds = sorted(i["kind"] for i in page["items"])
    assert kinds == ["amount_mismatch", "missing_at_provider"]  # matched is no discrepancy
    amount = next(i for i in page["items"] if i["kind"] == "amount_mismatch")
    assert amount["ours_amount"] == {"value": "299.00", "currency": "RUB"}
    assert amount["theirs_amount"] == {"value": "290.00", "currency": "RUB"}
    assert amount["resolution"] is None

    only = (
        await api.client.get(
            f"{BASE}/discrepancies",
            params={"run_id": run["run_id"], "kind": "missing_at_provider", "limit": 1},
            headers=admin(api),
        )
    ).json()
    assert [i["kind"] for i in only["items"]] == ["missing_at_provider"]


async def test_a_run_id_that_is_no_uuid_is_a_422(api: Api) -> None:
    """36 hex digits without hyphens passed the old pattern and reached PostgreSQL's uuid
    cast: a 500 (found by fuzzing, issue 14)."""
    for bad in ("cDEDab51afa3C83bA57A94AceB0DDbBAdAcc", "0" * 31, "g" * 32):
        resp = await api.client.get(
            f"{BASE}/discrepancies", params={"run_id": bad}, headers=admin(api)
        )
        assert resp.status_code == 422, (bad, resp.text)
    no_hyphens = uuid.uuid4().hex
    resp = await api.client.get(
        f"{BASE}/discrepancies", params={"run_id": no_hyphens}, headers=admin(api)
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["items"] == []


async def test_a_decision_follows_the_idempotency_rules(api: Api, run: dict[str, Any]) -> None:
    key = store.item_key(run["amount"])
    body = {"item_key": key, "resolution": "write_off", "reason": "below threshold"}
    url = f"{BASE}/resolutions"
    first = await api.client.post(url, json=body, headers=admin(api, "decide-1"))
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["changed"] is True and out["ledger_correction"] is False
    assert out["item"]["resolution"] == "write_off"
    assert out["item"]["resolved_by"] == f"admin:{ADMIN}"
    assert out["item"]["note"] == "below threshold"

    again = await api.client.post(url, json=body, headers=admin(api, "decide-1"))
    assert again.json() == out and again.headers["idempotent-replayed"] == "true"

    reused = await api.client.post(
        url, json={**body, "reason": "other"}, headers=admin(api, "decide-1")
    )
    assert reused.status_code == 422 and error_code(reused) == "idempotency_key_reused"

    same = await api.client.post(url, json=body, headers=admin(api, "decide-2"))
    assert same.status_code == 200 and same.json()["changed"] is False

    other = await api.client.post(
        url, json={**body, "resolution": "accept_ours"}, headers=admin(api, "decide-3")
    )
    assert other.status_code == 409 and error_code(other) == "already_resolved"
    assert other.json()["error"]["details"]["resolution"] == "write_off"

    open_now = (
        await api.client.get(
            f"{BASE}/discrepancies", params={"run_id": run["run_id"]}, headers=admin(api)
        )
    ).json()
    assert key not in [i["item_key"] for i in open_now["items"]]
    everything = (
        await api.client.get(
            f"{BASE}/discrepancies",
            params={"run_id": run["run_id"], "open_only": "false"},
            headers=admin(api),
        )
    ).json()
    assert key in [i["item_key"] for i in everything["items"]]


async def record_run(dsn: str, items: list[MatchItem]) -> str:
    """A finished run that found ``items`` (one partition)."""
    run_id = str(uuid.uuid4())
    at = now_ms()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        spec = await store.create_run(
            conn,
            run_id=run_id,
            window_start=at - 86_400_000,
            window_end=at,
            source="provider_api",
            taken_at=at,
        )
        assert spec is not None
        n = len(items)
        await store.start_feeding(conn, run_id, lines=n, partitions=1)
        await store.record_items(conn, run_id, [(0, i) for i in items], at)
        await store.mark_partition_done(
            conn, run_id, 0, lines_sent=n, lines_matched=n, complete=True, items=n, at=at
        )
        assert await store.finish_if_complete(conn, run_id, at)
    return run_id


def never_at_provider(user: str, payment_id: str, ours: Money, ours_status: str) -> MatchItem:
    """Our payment the provider's report does not have (``Ledger.observe`` names its
    provider object ``prov-<payment id>``)."""
    return item(
        "missing_at_provider",
        "escalate",
        subscription_id=subscription_id_for(user),
        payment_id=payment_id,
        provider_id=f"prov-{payment_id}",
        ours_status=ours_status,
        ours_amount=ours,
        theirs_status=None,
        theirs_amount=None,
    )


def corrections_sent(api: Api, payment_id: str) -> list[tuple[bytes, PaymentObserved]]:
    return [
        (k, e)
        for k, e in api.publisher.provider_events()
        if isinstance(e, PaymentObserved) and e.payment_id == payment_id
    ]


async def fetch(dsn: str, sql: str, *params: Any) -> tuple[Any, ...] | None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
    return None if row is None else tuple(row)


async def waiting_on_outbox(dsn: str, task: asyncio.Task[Any], within_s: float = 30) -> int:
    """How many lock requests on command_outbox wait, once one does (or ``task`` ended)."""
    deadline = time.monotonic() + within_s
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE c.relname = 'command_outbox' AND NOT l.granted"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            row = await cur.fetchone()
            waiting = int(row[0]) if row else 0
            if waiting or task.done() or time.monotonic() > deadline:
                return waiting
            await asyncio.sleep(0.02)


async def make_due(api: Api, message_id: str, ago: str = "0 s") -> None:
    async with api.pool.connection() as conn:
        await conn.execute(
            "UPDATE command_outbox SET next_publish_at = now() - %s::interval"
            " WHERE command_id = %s",
            (ago, message_id),
        )


async def test_a_correction_commits_with_the_decision_survives_a_lost_publish_and_closes(
    api: Api, module_pg_dsn: str
) -> None:
    """Issue 11 §3: the correction went straight to Kafka after the decision's commit (503
    ``publish_failed`` if that failed). Now its outbox row commits with the decision, a lost
    publish is republished by the relay, and the row is closed once the ledger applied it."""
    ledger = Ledger(api)
    user = new_user()
    pid = await ledger.subscribe(user)
    amount = ledger.states[subscription_id_for(user)].payments[pid].amount
    missing = never_at_provider(user, pid, amount, "succeeded")
    await record_run(module_pg_dsn, [missing])
    key = store.item_key(missing)
    body = {"item_key": key, "resolution": "accept_provider", "reason": "provider never charged"}
    url = f"{BASE}/resolutions"
    correction_id = observation_id_for(f"prov-{pid}", "canceled")

    # While the outbox is locked the decision cannot commit: it is one transaction with its
    # outbox row. The first publish (after the commit) is lost: the broker is down.
    api.publisher.fail = True
    try:
        async with await psycopg.AsyncConnection.connect(module_pg_dsn) as blocker:
            await blocker.execute("LOCK TABLE command_outbox IN SHARE ROW EXCLUSIVE MODE")
            task = asyncio.create_task(api.client.post(url, json=body, headers=admin(api, "acc-1")))
            waiting = await waiting_on_outbox(module_pg_dsn, task)
            pending = not task.done()
            resolution = await fetch(
                module_pg_dsn, "SELECT resolution FROM recon_items WHERE item_key = %s", key
            )
            await blocker.rollback()
        resp = await task
        await api.settle()
    finally:
        api.publisher.fail = False
    assert waiting and pending  # the decision waited for its outbox row
    assert resolution == (None,)  # and was not visible without it
    assert resp.status_code == 200, resp.text  # the broker's state is no longer the admin's
    out = resp.json()
    assert out["ledger_correction"] is True and out["correction_id"] == correction_id
    assert out["item"]["resolution"] == "accept_provider"
    row = await fetch(
        module_pg_dsn,
        "SELECT status, topic, command_type, subscription_id::text, user_id, published_at,"
        " last_error FROM command_outbox WHERE command_id = %s",
        correction_id,
    )
    assert row is not None
    assert row[:5] == (
        "accepted",
        PROVIDER_EVENTS,
        "PaymentObserved",
        subscription_id_for(user),
        user,
    )
    assert row[5] is None and "publish failed" in row[6]
    assert corrections_sent(api, pid) == []

    await make_due(api, correction_id)
    assert await relay_once(api.pool, api.publisher, api.settings) >= 1
    [(key_bytes, observed)] = corrections_sent(api, pid)
    assert key_bytes == subscription_id_for(user).encode()
    assert (observed.observation_id, observed.status, observed.source) == (
        correction_id,
        "canceled",
        "reconciliation",
    )
    assert (PROVIDER_EVENTS, key_bytes) in [(t, k) for t, k, _ in api.publisher.sent]

    events = await ledger.apply(observed)  # the ledger applies it; the projection closes it
    assert "PaymentCanceled" in [type(e).__name__ for e in events]
    status = await api.client.get(f"/api/v1/admin/commands/{correction_id}", headers=admin(api))
    assert status.status_code == 200
    assert (status.json()["status"], status.json()["command_type"]) == ("done", "PaymentObserved")
    await make_due(api, correction_id, "1 hour")
    await relay_once(api.pool, api.publisher, api.settings)
    assert len(corrections_sent(api, pid)) == 1  # closed: never republished

    # The same decision again, or the same request replayed: nothing new to send.
    again = await api.client.post(url, json=body, headers=admin(api, "acc-2"))
    replay = await api.client.post(url, json=body, headers=admin(api, "acc-1"))
    await api.settle()
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["correction_id"] == correction_id
    assert replay.json() == out
    assert len(corrections_sent(api, pid)) == 1


async def test_a_correction_with_nothing_left_to_apply_is_recorded_closed(
    api: Api, module_pg_dsn: str
) -> None:
    """The payment is canceled already: the ledger would apply nothing, so no event would
    ever close the row and the relay would republish it forever. It is written done."""
    ledger = Ledger(api)
    user = new_user()
    resp = await api.pay(user)
    pid = resp.json()["payment_id"]
    await ledger.drain(user)
    amount = ledger.states[subscription_id_for(user)].payments[pid].amount
    await ledger.observe(user, pid, "canceled", reason="expired_on_confirmation")
    missing = never_at_provider(user, pid, amount, "pending")  # the report's snapshot
    await record_run(module_pg_dsn, [missing])
    body = {
        "item_key": store.item_key(missing),
        "resolution": "accept_provider",
        "reason": "never at the provider",
    }
    decided = await api.client.post(
        f"{BASE}/resolutions", json=body, headers=admin(api, f"k-{uuid.uuid4()}")
    )
    await api.settle()
    assert decided.status_code == 200, decided.text
    correction_id = observation_id_for(f"prov-{pid}", "canceled")
    assert decided.json()["ledger_correction"] is True
    assert corrections_sent(api, pid) == []  # nothing the ledger could apply
    row = await fetch(
        module_pg_dsn,
        "SELECT status, status_reason FROM command_outbox WHERE command_id = %s",
        correction_id,
    )
    assert row == ("done", "nothing to apply: already canceled")
    await make_due(api, correction_id, "1 hour")
    await relay_once(api.pool, api.publisher, api.settings)
    assert corrections_sent(api, pid) == []


class LosingPublisher:
    """The real producer, except that the first provider event is acknowledged and lost:
    the outbox row says published, the broker never got it (the chaos suite's lost publish)."""

    def __init__(self, inner: KafkaPublisher) -> None:
        self.inner = inner
        self.lost: list[bytes] = []

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        if topic == PROVIDER_EVENTS and not self.lost:
            self.lost.append(value)
            return
        await self.inner.publish(topic, key, value)

    async def close(self) -> None:
        await self.inner.close()


async def test_a_lost_correction_reaches_the_broker_through_the_relay_and_closes(
    kafka_broker: KafkaBroker, module_pg_dsn: str
) -> None:
    settings = api_settings(module_pg_dsn, kafka_bootstrap=kafka_broker.bootstrap)
    publisher = LosingPublisher(KafkaPublisher(settings))
    app = create_app(
        settings,
        publisher=publisher,
        provider=FakeProvider(),
        normalise=fake_normalise,
        relay=False,
    )
    user = new_user()
    sub = subscription_id_for(user)
    cid = command_id_for(user, "buy")
    pay = PaySubscription(
        command_id=cid,
        subscription_id=sub,
        issued_at=now_ms(),
        user_id=user,
        payment_id=payment_id_for(cid),
        plan_id="monthly",
        amount=PRICE,
        period_months=1,
        return_url="https://cinema.example/back",
        description="Cinema monthly",
    )
    provider_id = f"prov-{pay.payment_id}"
    ok = PaymentObserved(
        observation_id=observation_id_for(provider_id, "succeeded"),
        subscription_id=sub,
        observed_at=now_ms(),
        source="webhook",
        payment_id=pay.payment_id,
        provider_payment_id=provider_id,
        status="succeeded",
        amount=PRICE,
    )
    state: SubscriptionState | None = None
    async with app.router.lifespan_context(app), contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(publisher.close)  # passed in: the app leaves it open
        pool = app.state.pool

        async def apply(msg: LedgerInput) -> list[str]:
            nonlocal state
            d = decide(state, msg, Policy())
            state = d.state
            async with pool.connection() as conn:
                await project(conn, [(e, encode(e)) for e in d.events])
            return [type(e).__name__ for e in d.events]

        await apply(pay)
        await apply(ok)
        missing = never_at_provider(user, pay.payment_id, PRICE, "succeeded")
        await record_run(module_pg_dsn, [missing])
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            headers = {
                "Authorization": f"Bearer {mint_token(settings, ADMIN, roles=('admin',))}",
                "Idempotency-Key": "lost-1",
            }
            resp = await client.post(
                f"{BASE}/resolutions",
                json={
                    "item_key": store.item_key(missing),
                    "resolution": "accept_provider",
                    "reason": "provider never charged",
                },
                headers=headers,
            )
            assert resp.status_code == 200, resp.text
            correction_id = observation_id_for(provider_id, "canceled")
            await app.state.background.drain(10)
        assert len(publisher.lost) == 1  # "published", and gone

        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE command_outbox SET next_publish_at = now() WHERE command_id = %s",
                (correction_id,),
            )
        assert await relay_once(pool, publisher, settings) >= 1

        consumer = AIOKafkaConsumer(
            PROVIDER_EVENTS,
            bootstrap_servers=kafka_broker.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=f"recon-test-{uuid.uuid4().hex[:6]}",
        )
        await consumer.start()
        found: tuple[bytes | None, Any] | None = None
        try:
            deadline = time.monotonic() + 20
            while found is None and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for rec in records:
                        msg = decode_provider_event(rec.value or b"")
                        if msg.observation_id == correction_id:
                            found = (rec.key, msg)
        finally:
            await consumer.stop()
        assert found is not None
        assert found[0] == sub.encode() and isinstance(found[1], PaymentObserved)
        assert "PaymentCanceled" in await apply(found[1])
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT status FROM command_outbox WHERE command_id = %s", (correction_id,)
            )
            assert await cur.fetchone() == ("done",)


async def test_unknown_and_agreeing_items_cannot_be_decided(api: Api, run: dict[str, Any]) -> None:
    url = f"{BASE}/resolutions"
    unknown = await api.client.post(
        url,
        json={"item_key": "payment:nope:amount_mismatch", "resolution": "write_off", "reason": "x"},
        headers=admin(api, f"k-{uuid.uuid4()}"),
    )
    assert unknown.status_code == 404 and error_code(unknown) == "discrepancy_not_found"
    matched = await api.client.post(
        url,
        json={"item_key": store.item_key(run["matched"]), "resolution": "write_off", "reason": "x"},
        headers=admin(api, f"k-{uuid.uuid4()}"),
    )
    assert matched.status_code == 422 and error_code(matched) == "not_a_discrepancy"
    no_key = await api.client.post(
        url,
        json={"item_key": store.item_key(run["amount"]), "resolution": "write_off", "reason": "x"},
        headers=admin(api),
    )
    assert no_key.status_code == 400 and error_code(no_key) == "idempotency_key_missing"


async def test_a_run_the_agent_recorded_shows_as_one_with_every_item_recorded(
    api: Api, module_pg_dsn: str
) -> None:
    """The streaming agent counts its matched items (``record_progress``) instead of writing
    a row each: the console shows its run exactly as a run that recorded every item."""

    def day() -> list[MatchItem]:
        return [
            item("matched", "none"),
            item("matched", "none", ours_amount=Money(100, "EUR"), theirs_amount=Money(100, "EUR")),
            item("amount_mismatch", "escalate", theirs_amount=Money(29000, "RUB")),
            item("missing_at_provider", "escalate", theirs_status=None, theirs_amount=None),
            item("missing_internal", "apply_provider_status", ours_status=None, ours_amount=None),
        ]

    at = now_ms()
    ids = []
    async with await psycopg.AsyncConnection.connect(module_pg_dsn, autocommit=True) as conn:
        for agent in (False, True):
            run_id = str(uuid.uuid4())
            spec = await store.create_run(
                conn,
                run_id=run_id,
                window_start=at - 86_400_000,
                window_end=at,
                source="provider_api",
                taken_at=at,
            )
            assert spec is not None
            items = day()
            await store.start_feeding(conn, run_id, lines=len(items), partitions=2)
            found = [(i % 2, it) for i, it in enumerate(items)]
            if agent:
                progress = [
                    store.Progress(
                        run_id,
                        p,
                        len(items),
                        [(o, it) for o, (q, it) in enumerate(found) if q == p],
                    )
                    for p in (0, 1)
                ]
                await store.record_progress(conn, progress, at)
            else:
                await store.record_items(conn, run_id, found, at)
            for p in (0, 1):
                await store.mark_partition_done(
                    conn, run_id, p, lines_sent=3, lines_matched=3, complete=True, items=0, at=at
                )
            assert await store.finish_if_complete(conn, run_id, at)
            ids.append(run_id)

    runs = (await api.client.get(f"{BASE}/runs", headers=admin(api))).json()["items"]
    by_id = {r["run_id"]: r for r in runs}
    same = (
        "status",
        "lines",
        "partitions",
        "partitions_done",
        "incomplete_partitions",
        "counts",
        "totals",
        "discrepancies",
        "new_discrepancies",
        "unresolved",
    )
    recorded, counted = by_id[ids[0]], by_id[ids[1]]
    assert {k: recorded[k] for k in same} == {k: counted[k] for k in same}
    assert counted["counts"]["matched"] == 2 and counted["totals"]["payments_ours"] == {
        "EUR": "1.00",
        "RUB": "897.00",
    }
    for run_id in ids:
        page = (
            await api.client.get(
                f"{BASE}/discrepancies", params={"run_id": run_id}, headers=admin(api)
            )
        ).json()
        assert sorted(i["kind"] for i in page["items"]) == [
            "amount_mismatch",
            "missing_at_provider",
        ]  # the repaired one is resolved, the matched ones are no discrepancies
