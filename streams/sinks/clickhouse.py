"""The ClickHouse sink's core, as the history worker (streams/history/sink.py) uses it.

The code lives in analytics/ingest.py, beneath streams, because ``billing rebuild-history``
(analytics/rebuild.py) writes through it too and must not import upward. This module keeps
the old import path for the benchmarks and the docs that name it.
"""

from __future__ import annotations

from analytics.ingest import (
    ARROW_SCHEMAS,
    EVENTS_ONLY,
    MAPPERS,
    arrow_batch,
    dedup_token,
    maps,
    rows_from_events,
    write_batch,
    write_batch_sync,
    write_rows,
)

__all__ = [
    "ARROW_SCHEMAS",
    "EVENTS_ONLY",
    "MAPPERS",
    "arrow_batch",
    "dedup_token",
    "maps",
    "rows_from_events",
    "write_batch",
    "write_batch_sync",
    "write_rows",
]
