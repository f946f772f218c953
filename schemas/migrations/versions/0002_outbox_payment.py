"""Outbox: the payment a command creates, so a client polling right after the 202 finds it."""

from alembic import op

revision = "0002_outbox_payment"
down_revision = "0001"


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE command_outbox ADD COLUMN payment_id uuid;
        CREATE INDEX command_outbox_payment ON command_outbox (payment_id)
            WHERE payment_id IS NOT NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX command_outbox_payment;
        ALTER TABLE command_outbox DROP COLUMN payment_id;
        """
    )
