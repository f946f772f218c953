"""The console's reconciliation endpoints on the real PostgreSQL, over what reconciler/store.py
recorded: runs with counts, discrepancies across runs, and an admin's decision (Idempotency-Key
rules, a changed mind refused, the ledger told when the provider's view is accepted, a failed
publish retried by the same request)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from reconciler import store
from reconciler.matcher import MatchItem
from schemas.messages import PaymentObserved
from schemas.money import Money
from schemas.periods import now_ms
from schemas.topics import PROVIDER_EVENTS
from tests.integration.api_support import Api, error_code, running_api

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


async def test_accepting_the_provider_tells_the_ledger_even_after_a_failed_publish(
    api: Api, run: dict[str, Any]
) -> None:
    missing: MatchItem = run["missing"]
    body = {
        "item_key": store.item_key(missing),
        "resolution": "accept_provider",
        "reason": "provider never charged",
    }
    url = f"{BASE}/resolutions"
    api.publisher.fail = True
    try:
        failed = await api.client.post(url, json=body, headers=admin(api, "accept-1"))
    finally:
        api.publisher.fail = False
    assert failed.status_code == 503 and error_code(failed) == "publish_failed"
    assert not [
        e
        for _, e in api.publisher.provider_events()
        if isinstance(e, PaymentObserved) and e.payment_id == missing.payment_id
    ]

    retried = await api.client.post(url, json=body, headers=admin(api, "accept-1"))
    assert retried.status_code == 200, retried.text
    assert retried.json()["ledger_correction"] is True
    sent = [
        (k, e)
        for k, e in api.publisher.provider_events()
        if isinstance(e, PaymentObserved) and e.payment_id == missing.payment_id
    ]
    assert len(sent) == 1
    key_bytes, observed = sent[0]
    assert key_bytes == str(missing.subscription_id).encode()
    assert observed.status == "canceled" and observed.source == "reconciliation"
    assert (PROVIDER_EVENTS, key_bytes) in [(t, k) for t, k, _ in api.publisher.sent]


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
