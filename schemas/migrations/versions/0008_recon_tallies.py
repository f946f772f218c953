"""Reconciliation tallies: what a streaming run counted per partition instead of recording it.

The reconcile agent records each discrepancy (and in-flight item) of a run as before
(``recon_items`` linked by ``recon_run_items``), but only counts its ``matched`` items: a row
per agreeing report line is what a million-line report must not pay for. The counts and the
succeeded totals per side and currency of those items are kept per (run, partition) in
``recon_run_tallies``, and the run's summary adds them to what its links give.

``through_offset`` makes the tally exact under the agent's at-least-once delivery: it is the
last offset of the partition of ``billing.provider-report`` whose items are recorded (links or
tally, in one transaction). A message at or before it was recorded already, by this worker or
by the one that had the partition before, so a replayed line or marker adds nothing.
"""

from alembic import op

revision = "0008_recon_tallies"
down_revision = "0007_recon_engine"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE recon_run_tallies (
            run_id          uuid NOT NULL REFERENCES recon_runs (run_id) ON DELETE CASCADE,
            partition       integer NOT NULL CHECK (partition >= 0),
            through_offset  bigint NOT NULL DEFAULT -1,
            counts          jsonb NOT NULL DEFAULT '{}',
            totals          jsonb NOT NULL DEFAULT '{}',
            updated_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (run_id, partition)
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE recon_run_tallies")
