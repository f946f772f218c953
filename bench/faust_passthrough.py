"""A bare Faust agent for the transport benchmark: ``python -m bench.faust_passthrough``.

Forwards every input record (raw bytes, same key) to the output topic, at_least_once, with
``streams.faust_fix`` applied and the broker settings of ``streams/app.py``. With
``BENCH_FAUST_TABLE=1`` it also writes each record to a table under its key (one changelog
record per input, as the ledger writes one state per command), to separate the table's cost
from the agent's.

Configured by environment: BENCH_FAUST_ID, BENCH_FAUST_BOOTSTRAP, BENCH_FAUST_IN,
BENCH_FAUST_OUT, BENCH_FAUST_DATADIR, BENCH_FAUST_PARTITIONS, BENCH_FAUST_TABLE,
BENCH_FAUST_LINGER_S (producer linger; 0 as in streams/app.py).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import faust

from streams import faust_fix
from streams.topics import raw_topic

faust_fix.apply()

env = os.environ
partitions = int(env.get("BENCH_FAUST_PARTITIONS", "4"))
with_table = env.get("BENCH_FAUST_TABLE", "0") == "1"

app = faust.App(
    env["BENCH_FAUST_ID"],
    broker=f"kafka://{env['BENCH_FAUST_BOOTSTRAP']}",
    store="memory://",
    processing_guarantee="at_least_once",
    topic_partitions=partitions,
    topic_replication_factor=1,
    topic_allow_declare=True,
    table_standby_replicas=0,
    broker_session_timeout=10.0,
    broker_heartbeat_interval=1.0,
    broker_rebalance_timeout=20.0,
    broker_commit_interval=0.5,
    producer_acks=-1,
    producer_linger=float(env.get("BENCH_FAUST_LINGER_S", "0")),
    stream_recovery_delay=0.0,
    web_enabled=False,
    datadir=env["BENCH_FAUST_DATADIR"],
)


def _topic(name: str) -> Any:
    return raw_topic(app, name, partitions=partitions)


source = _topic(env["BENCH_FAUST_IN"])
sink = _topic(env["BENCH_FAUST_OUT"])

if with_table:
    table = app.Table(
        "passthrough", default=None, partitions=partitions, key_type=bytes, value_type=bytes
    )

    @app.agent(source, name="passthrough")
    async def forward_with_table(stream: Any) -> None:
        async for event in stream.events():
            table[event.key] = event.value
            await sink.send(key=event.key, value=event.value)

else:

    @app.agent(source, name="passthrough")
    async def forward(stream: Any) -> None:
        async for event in stream.events():
            await sink.send(key=event.key, value=event.value)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "info", "--without-web"]
    app.main()
