"""Worker for the restart-loss regression test: ``python -m tests.integration.faust_fix_app``.

A bare at-least-once Faust agent that forwards every input record to an output topic and
counts per partition in a table (so recovery takes the same path as the billing app's, which has
tables). Configured only through environment variables, set by the test:

- ``FIXAPP_ID``, ``FIXAPP_BOOTSTRAP``, ``FIXAPP_IN``, ``FIXAPP_OUT``, ``FIXAPP_DATADIR``
- ``FIXAPP_APPLY_FIX``: "1" applies ``streams.faust_fix`` (the default), "0" runs faust as shipped
- ``FIXAPP_COMMITTED_DELAY_S``: sleep added to every committed-offset lookup. The loss window
  is the time faust spends in ``perform_seek`` after resuming the source partitions, one
  lookup per partition; widening it makes the loss show on every run, not now and then.
- ``FIXAPP_AGENT_SLEEP_S``: per-record work, so the agent queue still holds backlog when the
  late seek lands (as under real load).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from typing import Any

import aiokafka
import faust

from streams import faust_fix

env = os.environ
if env.get("FIXAPP_APPLY_FIX", "1") == "1":
    faust_fix.apply()

_delay = float(env.get("FIXAPP_COMMITTED_DELAY_S", "0"))
if _delay > 0:
    _committed = aiokafka.AIOKafkaConsumer.committed

    @functools.wraps(_committed)
    async def _slow_committed(self: Any, partition: Any) -> Any:
        if partition.topic == env["FIXAPP_IN"]:  # source partitions only, not the changelog
            await asyncio.sleep(_delay)
        return await _committed(self, partition)

    aiokafka.AIOKafkaConsumer.committed = _slow_committed

_agent_sleep = float(env.get("FIXAPP_AGENT_SLEEP_S", "0"))

app = faust.App(
    env["FIXAPP_ID"],
    broker=f"kafka://{env['FIXAPP_BOOTSTRAP']}",
    store="memory://",
    processing_guarantee="at_least_once",
    topic_partitions=4,
    topic_replication_factor=1,
    table_standby_replicas=0,
    broker_session_timeout=3.0,
    broker_heartbeat_interval=0.5,
    broker_rebalance_timeout=6.0,
    broker_commit_interval=0.5,
    web_enabled=False,
    datadir=env["FIXAPP_DATADIR"],
)
source = app.topic(env["FIXAPP_IN"], key_serializer="raw", value_serializer="raw")
sink = app.topic(env["FIXAPP_OUT"], key_serializer="raw", value_serializer="raw")
seen = app.Table("seen", default=int, partitions=4)


@app.agent(source)  # type: ignore[untyped-decorator]
async def forward(stream: Any) -> None:
    async for event in stream.events():
        await sink.send(key=event.key, value=event.value)
        seen[str(event.message.partition)] += 1
        if _agent_sleep:
            await asyncio.sleep(_agent_sleep)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "info", "--without-web"]
    app.main()
