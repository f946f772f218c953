"""Which engine matched a reconciliation run: the streaming agents (``streaming``) or the
ClickHouse batch path (``batch``, reconciler/batch_run.py). Existing runs were streaming.
"""

from alembic import op

revision = "0007_recon_engine"
down_revision = "0006_saved_method"


def upgrade() -> None:
    op.execute(
        "ALTER TABLE recon_runs ADD COLUMN engine text NOT NULL DEFAULT 'streaming'"
        " CHECK (engine IN ('streaming', 'batch'))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE recon_runs DROP COLUMN engine")
