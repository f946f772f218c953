"""Reconciliation: prove our books equal the provider's and propose repairs for what differs.

Pure where it decides: ``matcher`` (the classifier both the streaming agent and the batch
runner are built on), ``repairs`` (the message that carries out an item's repair), ``report``
(reading the provider's objects and registry files into report lines). I/O at the named
edges: ``feed`` (fetch and publish a report), ``store`` (runs and items in PostgreSQL),
``batch``/``batch_run`` (the ClickHouse path), ``cli``. The contracts they share (report
lines and their topic's messages, match results, run records) are in ``schemas.recon``,
``schemas.recon_match`` and ``schemas.recon_runs``. Nothing here imports ``streams``.
"""
