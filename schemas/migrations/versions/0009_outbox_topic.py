"""The outbox carries more than commands: each row names the topic it is published to.

An admin's "accept the provider's version" in reconciliation is a provider observation (for
billing.provider-events), not a command; it goes through the outbox like every command, so a
lost publish is republished by the relay and the row is closed by the projection once the
ledger has applied it. Existing rows are commands (the default).

The partial index finds a subscription's open rows: the projection closes an admin's
capture/release and a correction by the payment or refund they are about, when its outcome is
projected (streams/projection/agent.py).
"""

from alembic import op

revision = "0009_outbox_topic"
down_revision = "0008_recon_tallies"


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE command_outbox ADD COLUMN topic text NOT NULL DEFAULT 'billing.commands'
            CHECK (topic IN ('billing.commands', 'billing.provider-events'));
        CREATE INDEX command_outbox_open_subscription ON command_outbox (subscription_id)
            WHERE status IN ('accepted', 'processing');
        """
    )


def downgrade() -> None:
    # Open corrections then read as commands: the relay publishes them to billing.commands,
    # which the ledger also consumes with the same decoder (the tags are disjoint).
    op.execute(
        """
        DROP INDEX command_outbox_open_subscription;
        ALTER TABLE command_outbox DROP COLUMN topic;
        """
    )
