"""The relay waits the ledger's lag on top of its delay (issue 13): a published command that
is still queued behind a backlog is not republished; caught up, it is after the delay. The
lag is read from the workers' consumer group on a real broker."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from api.relay import read_offsets, relay_once
from billing.kafka_local import KafkaBroker
from schemas.messages import PaySubscription
from schemas.topics import COMMANDS
from tests.integration.api_support import Api

pytestmark = pytest.mark.integration


def sent_for(api: Api, user: str) -> list[PaySubscription]:
    return [
        cmd
        for _key, cmd in api.publisher.commands()
        if isinstance(cmd, PaySubscription) and cmd.user_id == user
    ]


async def test_a_command_is_not_republished_while_the_consumer_is_behind(api: Api) -> None:
    user = f"lag-{uuid.uuid4().hex[:8]}"
    await api.pay(user)
    await api.settle()
    async with api.pool.connection() as conn:
        await conn.execute(
            "UPDATE command_outbox SET next_publish_at = now() - interval '20 seconds'"
            " WHERE user_id = %s",
            (user,),
        )
    # Due 20 s ago, but the ledger is 60 s behind: it will reach the command by itself.
    await relay_once(api.pool, api.publisher, api.settings, lag_s=60.0)
    assert len(sent_for(api, user)) == 1
    # 10 s behind: due 20 s ago is past delay + lag, so it goes again.
    await relay_once(api.pool, api.publisher, api.settings, lag_s=10.0)
    assert len(sent_for(api, user)) == 2


async def test_read_offsets_sums_the_groups_committed_and_end_offsets(
    kafka_broker: KafkaBroker,
) -> None:
    bootstrap = kafka_broker.bootstrap
    group = f"relay-lag-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    member = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await admin.start()
    await probe.start()
    await producer.start()
    await member.start()
    try:
        tp = TopicPartition(COMMANDS, 0)
        before = (await probe.end_offsets([tp]))[tp]
        for _ in range(5):
            await producer.send_and_wait(COMMANDS, b"{}", key=b"k", partition=0)
        member.assign([tp])
        await member.commit({tp: before + 2})
        idle = f"{group}-none"
        assert await read_offsets(admin, probe, idle, COMMANDS) is None  # nothing committed
        read = await read_offsets(admin, probe, group, COMMANDS)
        assert read is not None
        committed, end = read
        tps = [TopicPartition(COMMANDS, p) for p in probe.partitions_for_topic(COMMANDS) or ()]
        ends = await probe.end_offsets(tps)
        assert end == sum(ends.values())
        assert committed == before + 2  # the other partitions: nothing committed, counted 0
        assert end - committed >= 3
    finally:
        await member.stop()
        await producer.stop()
        await probe.stop()
        await admin.close()
