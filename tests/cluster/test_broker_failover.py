"""A 3-broker KRaft cluster from the same release jars (billing.kafka_local.KafkaCluster),
replication 3 and min.insync.replicas 2, under the whole stack (API, worker, emulator): one
broker is SIGKILLed while 1,000 payments are in flight (the chaos scenario's population:
declines, dropped publishes, client resends, duplicated and lost notifications) and restarted
a few seconds later. Nothing accepted is lost and every invariant of tests/chaos/invariants.py
holds; the topics are checked against the settings (RF 3, min.insync 2) before and after.

Run alone: ``make test-cluster``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from billing.config import KafkaFields
from billing.kafka_client import topic_configs, verify_topics
from billing.kafka_local import KafkaCluster, ensure_topics, fetch_kafka_jars
from tests.chaos.conftest import CHAOS_ENV
from tests.chaos.scenario import Action, ChaosRun, FaultRecord
from tests.e2e.harness import Stack
from tests.fixtures.postgres import FreshDatabase

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(480)]

PAYMENTS = int(os.environ.get("BILLING_CLUSTER_PAYMENTS", "1000"))  # smaller only to debug
PARTITIONS = 4
DOWN_S = 4.0


class ClusterRun(ChaosRun):
    """The chaos run whose "broker" fault SIGKILLs one node of the cluster (the first
    broker: the bootstrap list's head, which clients met first) and restarts it."""

    cluster: KafkaCluster

    async def apply(self, action: Action, worker_index: int = 0) -> FaultRecord:
        if action != "broker":
            return await super().apply(action, worker_index)
        in_flight, _ = await self._open_counts()
        rec = FaultRecord("kill-one-broker", self.elapsed(), in_flight)
        started = time.monotonic()
        node = self.cluster.brokers[0]
        await asyncio.to_thread(node.kill)
        await asyncio.sleep(DOWN_S)
        rec.backlog = (await self._open_counts())[1]
        await asyncio.to_thread(node.start, 90)
        rec.took_s = time.monotonic() - started
        self.figures.broker_restarts += 1
        self.figures.faults.append(rec)
        return rec


def _settings(bootstrap: str) -> KafkaFields:
    return KafkaFields(
        env="test",
        kafka_bootstrap=bootstrap,
        kafka_partitions=PARTITIONS,
        kafka_replication_factor=3,
        kafka_min_insync_replicas=2,
    )


def test_one_broker_killed_mid_payments_loses_nothing(
    tmp_path: Path, fresh_database: FreshDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = KafkaCluster(tmp_path / "kafka", fetch_kafka_jars(), size=3)
    cluster.start()
    stack: Stack | None = None
    try:
        settings = _settings(cluster.bootstrap)
        asyncio.run(
            ensure_topics(
                cluster.bootstrap,
                PARTITIONS,
                replication=3,
                configs=topic_configs(settings),
            )
        )
        assert asyncio.run(verify_topics(settings)) == []
        env = {
            **CHAOS_ENV,
            "BILLING_KAFKA_BOOTSTRAP": cluster.bootstrap,
            "BILLING_KAFKA_REPLICATION_FACTOR": "3",
            "BILLING_KAFKA_MIN_INSYNC_REPLICAS": "2",
        }
        (tmp_path / "stack").mkdir()
        stack = Stack(tmp_path / "stack", fresh_database("cluster"), workers=1, extra_env=env)
        stack.broker = cluster  # type: ignore[assignment]  # same start/stop/bootstrap
        stack.start()
        run = ClusterRun(stack, seed=1515, variant="cluster", n=PAYMENTS)
        run.cluster = cluster
        asyncio.run(run.run([("broker", 0)], settle_timeout_s=180))
        f = run.figures
        with capsys.disabled():
            print("\n" + f.report())
        assert f.broker_restarts == 1
        assert f.succeeded == f.payments - f.declines and f.canceled == f.declines
        # The restarted node caught up: every partition has 3 replicas again, configs hold.
        assert asyncio.run(verify_topics(settings)) == []
    finally:
        if stack is not None:
            for w in stack.workers:
                w.kill()
            stack.stop()
        cluster.stop()
