"""Realistic inputs: PaySubscription commands for distinct users (as the API would write them),
the provider observations that follow them, and a fast bulk producer for pre-loading a topic."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence

from schemas.ids import command_id_for, observation_id_for, payment_id_for, subscription_id_for
from schemas.messages import PaymentObserved, PaySubscription, encode
from schemas.money import Money

PRICE = Money(29900, "RUB")


def pay_command(user_id: str, idem_key: str, issued_at: int) -> PaySubscription:
    command_id = command_id_for(user_id, idem_key)
    return PaySubscription(
        command_id=command_id,
        subscription_id=subscription_id_for(user_id),
        issued_at=issued_at,
        user_id=user_id,
        payment_id=payment_id_for(command_id),
        plan_id="monthly",
        amount=PRICE,
        period_months=1,
        return_url="https://cinema.example/return",
        description="Cinema monthly",
    )


def pay_commands(n: int, tag: str | None = None) -> list[PaySubscription]:
    """``n`` PaySubscription commands, one per fresh user (so one per subscription)."""
    tag = tag or uuid.uuid4().hex[:8]
    now = int(time.time() * 1000)
    return [pay_command(f"bench-{tag}-{i}", f"key-{i}", now + i) for i in range(n)]


def observed(cmd: PaySubscription, status: str, at: int) -> PaymentObserved:
    provider_id = f"pp-{cmd.payment_id}"
    return PaymentObserved(
        observation_id=observation_id_for(provider_id, status),
        subscription_id=cmd.subscription_id,
        observed_at=at,
        source="webhook",
        payment_id=cmd.payment_id,
        provider_payment_id=provider_id,
        status=status,  # type: ignore[arg-type]
        amount=cmd.amount,
        paid=status == "succeeded",
        confirmation_url="https://emulator.example/confirm" if status == "pending" else None,
        payment_method_id="pm-1" if status == "succeeded" else None,
        payment_method_saved=status == "succeeded",
    )


def records(commands: Sequence[PaySubscription]) -> list[tuple[bytes, bytes]]:
    """(Kafka key, value) pairs, keyed by subscription id like every billing topic."""
    return [(c.subscription_id.encode(), encode(c)) for c in commands]


def partition_of(key: bytes, partitions: int) -> int:
    """aiokafka's default partitioner (murmur2), which the API and Faust use too."""
    from aiokafka.partitioner import murmur2

    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


async def preload(
    bootstrap: str, topic: str, recs: Sequence[tuple[bytes, bytes]], partitions: int
) -> float:
    """Write ``recs`` to ``topic`` in large batches (each to its key's partition); seconds."""
    from aiokafka import AIOKafkaProducer

    by_part: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for k, v in recs:
        by_part[partition_of(k, partitions)].append((k, v))
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        max_batch_size=1 << 20,
        max_request_size=4 << 20,
    )
    t = time.monotonic()
    await producer.start()
    try:
        futures: list[asyncio.Future[object]] = []
        for part, items in by_part.items():
            batch = producer.create_batch()
            for k, v in items:
                if batch.append(key=k, value=v, timestamp=None) is None:
                    batch.close()
                    futures.append(await producer.send_batch(batch, topic, partition=part))
                    batch = producer.create_batch()
                    batch.append(key=k, value=v, timestamp=None)
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=part))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - t
