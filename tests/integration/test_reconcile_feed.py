"""reconciler.feed against the emulator, Kafka and PostgreSQL: a window's report through the
list API (pages, created_at filters, a 429 retried), refunds given their subscription, a
registry import, and publication on each subscription's partition (lines many to a message, or
one each keyed by subscription) with a marker on every partition."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import AsyncConnection

from billing.kafka_local import KafkaBroker, ensure_topics
from providers.yookassa_adapter import YooKassaProvider
from reconciler import feed, store
from reconciler.report import ReportError, iso_to_ms
from schemas.messages import PaymentRequest
from schemas.money import Money
from schemas.recon import (
    EndOfReport,
    PaymentLine,
    RefundLine,
    ReportBatch,
    ReportEnvelope,
    ReportLine,
    ReportMessage,
    batch_key,
    decode_report_message,
    encode_report_message,
    message_key,
    report_order,
)
from schemas.topics import partition_for
from tests.fixtures.emulator import EmulatorHandle
from tests.integration.recon_support import payment_line, refund_line, uid

pytestmark = pytest.mark.integration

PARTITIONS = 4
RUB = Money(29900, "RUB")


def request(payment_id: str, user: str) -> PaymentRequest:
    return PaymentRequest(
        payment_id=payment_id,
        command_id=str(uuid.uuid4()),
        user_id=user,
        plan_id="monthly",
        amount=RUB,
        period_months=1,
        return_url="https://cinema.example/return",
        description="Cinema monthly",
    )


def iso_ms(value: str) -> int:
    return iso_to_ms(value)


@pytest.fixture
async def conn(module_pg_dsn: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await AsyncConnection.connect(module_pg_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
async def report_topic(kafka_broker: KafkaBroker) -> str:
    topic = f"recon-test-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_broker.bootstrap, PARTITIONS, [topic])
    return topic


@pytest.fixture
async def producer(kafka_broker: KafkaBroker) -> AsyncIterator[Any]:
    p = feed.new_producer(kafka_broker.bootstrap)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def consume(bootstrap: str, topic: str) -> dict[int, list[ReportMessage]]:
    """Every message of the topic, per partition, in order; each keyed as the feeder keys it:
    a line by its subscription, a batch by its run and partition (the one it is on)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[ReportMessage]] = {p: [] for p in range(PARTITIONS)}

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    assert r.key is not None and r.value is not None
                    msg = decode_report_message(r.value)
                    if isinstance(msg, ReportEnvelope):
                        assert r.key == message_key(msg.line)
                    if isinstance(msg, ReportBatch):
                        assert r.key == batch_key(msg.run_id, tp.partition)
                        assert msg.partition == tp.partition and msg.lines
                    out[tp.partition].append(msg)
        return out
    finally:
        await consumer.stop()


def check_published(
    messages: dict[int, list[ReportMessage]],
    run_id: str,
    lines: list[ReportLine],
    *,
    batched: bool = True,
) -> None:
    """Each line once, on its subscription's partition, in report order there, and then the
    partition's marker with its count; ``batched``: the lines many to a message."""
    seen: list[ReportLine] = []
    for partition, msgs in messages.items():
        mine = [m for m in msgs if m.run_id == run_id]
        assert isinstance(mine[-1], EndOfReport), f"partition {partition} has no marker last"
        body: list[ReportLine] = []
        for m in mine[:-1]:
            if isinstance(m, ReportEnvelope):
                assert not batched
                body.append(m.line)
            elif isinstance(m, ReportBatch):
                assert batched
                body.extend(m.lines)
            else:
                raise AssertionError(f"a second marker on {partition}: {m}")
        assert mine[-1].partition == partition and mine[-1].lines_sent == len(body)
        assert body == sorted(body, key=report_order)
        for line in body:
            assert partition == partition_for(message_key(line), PARTITIONS)
        seen.extend(body)
    assert sorted(seen, key=report_order) == sorted(lines, key=report_order)


async def test_provider_report_pages_retries_and_publishes(
    fresh_emulator: EmulatorHandle,
    conn: AsyncConnection[Any],
    producer: Any,
    report_topic: str,
    kafka_broker: KafkaBroker,
) -> None:
    control = fresh_emulator.control
    provider = YooKassaProvider(
        fresh_emulator.settings(provider_max_attempts=3), backoff_base_s=0.01, backoff_cap_s=0.05
    )
    try:
        # A payment before the window, refunded inside it by someone outside our system.
        old_sub, old_pid = uid("sub-"), str(uuid.uuid4())
        old = await provider.create_payment(request(old_pid, "old-user"), old_sub)
        control.confirm(old.provider_payment_id)
        assert old.created_at is not None
        window_start = iso_ms(old.created_at) + 1800_000
        control.advance_clock(3600)
        # 105 payments in the window: two pages of 100.
        made: dict[str, tuple[str, str]] = {}
        for i in range(105):
            sub, pid = uid("sub-"), str(uuid.uuid4())
            p = await provider.create_payment(request(pid, f"user-{i}"), sub)
            made[p.provider_payment_id] = (sub, pid)
        firsts = list(made)[:3]
        control.confirm(firsts[0])
        control.confirm(firsts[1])
        control.confirm(firsts[2], "cancel", reason="insufficient_funds")
        ours = await provider.create_refund(
            firsts[0],
            Money(10000, "RUB"),
            refund_id=str(uuid.uuid4()),
            metadata={"subscription_id": made[firsts[0]][0], "payment_id": made[firsts[0]][1]},
        )
        auth = (fresh_emulator.shop_id, fresh_emulator.secret_key)
        async with httpx.AsyncClient(base_url=fresh_emulator.api_url, auth=auth) as http:
            for target, value in ((firsts[1], "50.00"), (old.provider_payment_id, "299.00")):
                r = await http.post(
                    "/refunds",
                    json={"payment_id": target, "amount": {"value": value, "currency": "RUB"}},
                    headers={"Idempotence-Key": str(uuid.uuid4())},
                )
                assert r.status_code == 200, r.text
        control.add_fault("payments.list", "429", count=1)
        window_end = window_start + 24 * 3_600_000
        fetched = [0]

        def count(n: int) -> None:
            fetched[0] += n

        lines = await feed.fetch_provider_report(
            provider, window_start, window_end, lag_ms=0, progress=count
        )
    finally:
        await provider.close()

    payments = [line for line in lines if isinstance(line, PaymentLine)]
    refunds = [line for line in lines if isinstance(line, RefundLine)]
    assert fetched[0] == len(lines) == 108
    assert {p.provider_payment_id for p in payments} == set(made)  # not the old one
    for line in payments:
        assert (line.subscription_id, line.payment_id) == made[line.provider_payment_id]
    statuses = {line.provider_payment_id: line.status for line in payments}
    assert [statuses[f] for f in firsts] == ["succeeded", "succeeded", "canceled"]
    by_payment = {r.provider_payment_id: r for r in refunds}
    assert by_payment[firsts[0]].refund_id == ours.metadata["refund_id"]
    assert by_payment[firsts[0]].subscription_id == made[firsts[0]][0]
    assert (by_payment[firsts[1]].subscription_id, by_payment[firsts[1]].payment_id) == made[
        firsts[1]
    ]  # from the payment line of the same report
    assert (by_payment[old.provider_payment_id].subscription_id,) == (old_sub,)  # re-read
    assert by_payment[old.provider_payment_id].payment_id == old_pid
    requests = control.stats()["requests"]
    assert requests["payments.list"] == 3  # two pages and the 429 retried
    assert requests.get("payments.get", 0) == 1  # only the old payment was re-read

    # Publish them as a run.
    planned, dropped = feed.plan(lines + lines[:5], PARTITIONS)
    assert dropped == 5 and len(planned) == len(lines)
    run = await store.create_run(
        conn,
        run_id=str(uuid.uuid4()),
        window_start=window_start,
        window_end=window_end,
        source="provider_api",
        taken_at=window_end,
    )
    assert run is not None
    assert await feed.report_partitions(producer, report_topic) == PARTITIONS
    sent = await feed.publish_report(producer, run.run_id, planned, PARTITIONS, topic=report_topic)
    assert sum(sent.values()) == len(lines) and set(sent) == set(range(PARTITIONS))
    check_published(await consume(kafka_broker.bootstrap, report_topic), run.run_id, lines)


REGISTRY = """object,provider_id,provider_payment_id,status,amount,currency,created_at,\
subscription_id,payment_id,refund_id,paid,extra
payment,pay-1,,succeeded,299.00,RUB,2026-11-24T10:00:00.000Z,{sub},p-1,,true,x
payment,pay-2,,canceled,299.00,RUB,2026-11-24T11:00:00+03:00,{sub2},p-2,,,y
refund,ref-1,pay-1,succeeded,100.00,RUB,2026-11-24T12:00:00Z,,,r-1,,z
"""


async def test_registry_run_is_recorded_and_published(
    tmp_path: Path,
    conn: AsyncConnection[Any],
    producer: Any,
    report_topic: str,
    kafka_broker: KafkaBroker,
) -> None:
    sub, sub2 = uid("sub-"), uid("sub-")
    path = tmp_path / "registry.csv"
    path.write_text(REGISTRY.format(sub=sub, sub2=sub2), encoding="utf-8")
    lines = feed.import_registry(path)
    refund = next(line for line in lines if isinstance(line, RefundLine))
    assert (refund.subscription_id, refund.payment_id, refund.refund_id) == (sub, "p-1", "r-1")
    progress = {"fetched": 0, "total": -1, "sent": 0}

    def add(name: str) -> Any:
        return lambda n: progress.__setitem__(name, progress[name] + n)

    result = await feed.run_report(
        conn,
        producer,
        feed.RunRequest(
            window_start=iso_ms("2026-11-24T00:00:00Z"),
            window_end=iso_ms("2026-11-25T00:00:00Z"),
            registry=path,
        ),
        topic=report_topic,
        progress=feed.FeedProgress(
            fetching=add("fetched"),
            publishing=lambda n: progress.__setitem__("total", n),
            sent=add("sent"),
        ),
    )
    assert result is not None and result.lines == 3
    assert progress == {"fetched": 3, "total": 3, "sent": 3}
    report = await store.run_report(conn, result.run.run_id)
    assert (report.spec.status, report.spec.source, report.lines, report.spec.partitions) == (
        "matching",
        "registry",
        3,
        PARTITIONS,
    )
    assert report.spec.source_ref == str(path) and report.fed_at is not None
    check_published(await consume(kafka_broker.bootstrap, report_topic), result.run.run_id, lines)


async def test_a_bad_registry_fails_the_run_and_publishes_nothing(
    tmp_path: Path,
    conn: AsyncConnection[Any],
    producer: Any,
    report_topic: str,
    kafka_broker: KafkaBroker,
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "object,provider_id,status,amount,currency\npayment,pay-1,succeeded,2.999,RUB\n",
        encoding="utf-8",
    )
    before = await conn.execute("SELECT count(*) FROM recon_runs WHERE status = 'failed'")
    failed_before = (await before.fetchone() or (0,))[0]
    with pytest.raises(ReportError, match="row 2"):
        await feed.run_report(
            conn,
            producer,
            feed.RunRequest(window_start=0, window_end=1000, registry=path),
            topic=report_topic,
        )
    after = await conn.execute(
        "SELECT count(*), max(error) FROM recon_runs WHERE status = 'failed'"
    )
    row = await after.fetchone()
    assert row is not None and row[0] == failed_before + 1 and "row 2" in row[1]
    messages = await consume(kafka_broker.bootstrap, report_topic)
    assert all(not msgs for msgs in messages.values())
    with pytest.raises(feed.FeedError, match="cannot read"):
        feed.import_registry(tmp_path / "missing.csv")


async def test_one_line_per_message_and_large_batches_split(
    conn: AsyncConnection[Any], producer: Any, report_topic: str, kafka_broker: KafkaBroker
) -> None:
    """``lines_per_message=1``: every line alone, keyed by its subscription (as before the
    batches); and a batch over MAX_MESSAGE_BYTES is split, the lines in order all the same."""
    subs = [uid("sub-") for _ in range(6)]
    lines: list[ReportLine] = [
        payment_line(sub, uid("p-"), uid("prov-"), "succeeded", 1000 + i)
        for i, sub in enumerate(subs * 3)
    ]
    planned, _ = feed.plan(lines, PARTITIONS)
    one = str(uuid.uuid4())
    sent = await feed.publish_report(
        producer, one, planned, PARTITIONS, topic=report_topic, lines_per_message=1
    )
    assert sum(sent.values()) == len(lines)
    many = str(uuid.uuid4())
    wordy = [
        msgspec.structs.replace(line, cancellation_reason="x" * 200_000)  # type: ignore[type-var]
        for line in lines
    ]
    planned_wordy, _ = feed.plan(wordy, PARTITIONS)
    counted = [0]
    sent = await feed.publish_report(
        producer,
        many,
        planned_wordy,
        PARTITIONS,
        topic=report_topic,
        progress=lambda n: counted.__setitem__(0, counted[0] + n),
    )
    assert sum(sent.values()) == counted[0] == len(lines)
    messages = await consume(kafka_broker.bootstrap, report_topic)
    check_published(messages, one, lines, batched=False)
    check_published(messages, many, wordy)
    sizes = [
        len(encode_report_message(m))
        for msgs in messages.values()
        for m in msgs
        if isinstance(m, ReportBatch) and m.run_id == many
    ]
    assert len(sizes) > PARTITIONS and max(sizes) <= feed.MAX_MESSAGE_BYTES


async def test_report_topic_must_be_co_partitioned(
    producer: Any, kafka_broker: KafkaBroker
) -> None:
    topic = f"recon-test-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_broker.bootstrap, 2, [topic])
    with pytest.raises(feed.FeedError, match="co-partitioned"):
        await feed.report_partitions(producer, topic)


def test_plan_sends_repeated_objects_once_in_report_order() -> None:
    sub = uid("sub-")
    late = payment_line(sub, "p1", "prov-1", "succeeded", 2000)
    early = payment_line(sub, "p0", "prov-0", "succeeded", 1000)
    ref = refund_line(sub, "p1", "prov-1", "r1", "ref-1", "succeeded", 1500)
    stranger = payment_line(None, None, "prov-x", "succeeded", 500)
    again = msgspec.structs.replace(late, status="canceled")
    planned, dropped = feed.plan([late, ref, again, early, stranger], PARTITIONS)
    assert dropped == 1
    assert [line for _, line in planned] == [stranger, early, ref, late]
    assert {p for p, line in planned if line.subscription_id == sub} == {
        partition_for(sub.encode(), PARTITIONS)
    }
    assert planned[0][0] == partition_for(b"payment:prov-x", PARTITIONS)


async def test_nightly_run_is_yesterday_once(
    emulator: EmulatorHandle, kafka_broker: KafkaBroker, module_pg_dsn: str
) -> None:
    """The crontab's job: yesterday's window in the configured zone, from the provider, one
    run per day however many leaders fire it."""
    settings = emulator.settings(kafka_bootstrap=kafka_broker.bootstrap)
    tz = f"Etc/GMT-{uuid.uuid4().int % 12 + 1}"  # a zone of its own: its own schedule key

    class Recon:
        """Settings with a recon_timezone (until billing.config has the field)."""

        def __getattr__(self, name: str) -> Any:
            return tz if name == "recon_timezone" else getattr(settings, name)

    provider = YooKassaProvider(settings)
    try:
        first = await feed.run_nightly(Recon(), module_pg_dsn, provider=provider)
        again = await feed.run_nightly(Recon(), module_pg_dsn, provider=provider)
    finally:
        await provider.close()
    assert first is not None and again is None
    start, end, _ = feed.nightly_window(first.run.taken_at, ZoneInfo(tz))
    assert (first.run.window_start, first.run.window_end) == (start, end)
    assert first.run.trigger == "nightly" and first.run.source == "provider_api"
    async with await AsyncConnection.connect(module_pg_dsn, autocommit=True) as c:
        report = await store.run_report(c, first.run.run_id)
    assert report.spec.status == "matching" and report.spec.partitions == PARTITIONS
    assert report.spec.source_ref == settings.provider_api_url
