"""The history worker: billing.events → ClickHouse, the analytics queries for the API, and
reconciliation's ClickHouse side. One process (``python -m streams.history worker -l info``),
apart from the ledger's worker so that an insert or a multi-second analytical query never
delays it; in embedded mode it owns the chdb store (one process per data directory).

Each module is thin glue around pure code beneath streams:
- ``app``: the Faust app (web server and timers only) and the store, wiring the rest;
- ``sink``: the consumer of billing.events into ClickHouse (analytics/ingest.py);
- ``server``: ``GET /analytics/<name>/``, the queries of analytics/dispatch.py;
- ``recon_copy``: reconciliation runs and discrepancies, PostgreSQL → ClickHouse;
- ``batch``: ``POST /recon/batch/``, batch reconciliation runs (reconciler/batch_run.py).
"""
