"""The reconcile agent: streaming match of provider reports against the ledger state table,
and the nightly schedule of yesterday's run (``register_reconciler``)."""

from streams.reconcile.agent import register_reconciler

__all__ = ["register_reconciler"]
