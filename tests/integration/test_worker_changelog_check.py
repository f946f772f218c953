"""The worker's start check covers its own table changelogs (issue 15: "changelogs
compacted ... verified at start"): against the real broker, a ledger changelog created with
the delete policy (retention would drop subscriptions' states) stops a prod worker with a
message naming the topic; a compacted one passes; outside prod it is a warning."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from billing.config import WorkerSettings
from billing.kafka_client import describe
from billing.kafka_local import KafkaBroker
from streams.app import changelog_topics, check_topics_at_start, create_app

pytestmark = pytest.mark.integration


def _settings(broker: KafkaBroker, tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(
        env="test",
        kafka_bootstrap=broker.bootstrap,
        kafka_partitions=4,
        worker_id=f"chk-{uuid.uuid4().hex[:8]}",
        state_dir=tmp_path,
        table_store="memory://",
    )


async def _create(bootstrap: str, name: str, policy: str) -> None:
    """Create the topic and wait until the broker describes it (creation is asynchronous:
    a check right after could find no topic yet, and a missing changelog is Faust's to
    create, so not a complaint)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topic = NewTopic(name, 4, 1, topic_configs={"cleanup.policy": policy})
        await admin.create_topics([topic])
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            found = await describe(admin, [name])
            if name in found and found[name][2].get("cleanup.policy") == policy:
                return
            assert asyncio.get_running_loop().time() < deadline, f"{name} not described"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


@pytest.mark.parametrize("policy", ["delete", "compact"])
def test_a_prod_worker_refuses_a_changelog_that_is_not_compacted(
    kafka_broker: KafkaBroker, tmp_path: Path, policy: str
) -> None:
    settings = _settings(kafka_broker, tmp_path)
    app = create_app(settings, agents=("ledger",))
    (changelog,) = changelog_topics(app)
    assert changelog == f"{settings.worker_id}-ledger-state-changelog"
    asyncio.run(_create(kafka_broker.bootstrap, changelog, policy))
    complaint = f"topic {changelog}: a table changelog must be compacted"

    prod = settings.model_copy(update={"env": "prod"})
    if policy == "delete":
        with pytest.raises(SystemExit) as stopped:
            check_topics_at_start(prod, app)
        assert "the worker refuses to run" in str(stopped.value.code)
        assert complaint in str(stopped.value.code)
    else:
        try:
            check_topics_at_start(prod, app)
        except SystemExit as stopped:  # the billing topics of the test broker may differ
            assert complaint not in str(stopped.code)
    check_topics_at_start(settings, app)  # outside prod: warned, not stopped
