"""``wait_caught_up`` against the real broker: a batch run must not read a history that is
behind ``billing.events`` (it would judge payments we did record as missing).

It once returned at once whatever the lag: its consumer, started without a subscription, had no
metadata for the topic and so found no partitions to be behind on.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from billing.kafka_local import KafkaBroker
from schemas.topics import DEFAULT_PARTITIONS, EVENTS
from streams.history.batch import wait_caught_up

pytestmark = pytest.mark.integration


async def test_waits_for_the_group_to_commit_what_was_published(kafka_broker: KafkaBroker) -> None:
    group = f"history-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(EVENTS, b"{}", key=uuid.uuid4().bytes)
    finally:
        await producer.stop()

    with pytest.raises(TimeoutError, match="behind"):  # nothing committed: behind everywhere
        await wait_caught_up(kafka_broker.bootstrap, group, timeout_s=1.0)

    # The group commits every partition's end: caught up.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(EVENTS, p) for p in range(DEFAULT_PARTITIONS)]
        consumer.assign(tps)
        await consumer.commit(dict(await consumer.end_offsets(tps)))
    finally:
        await consumer.stop()
    await wait_caught_up(kafka_broker.bootstrap, group, timeout_s=5.0)
