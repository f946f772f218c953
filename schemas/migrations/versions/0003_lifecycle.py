"""Lifecycle read models: refunds, auto-renewal and dunning on subscriptions."""

from alembic import op

revision = "0003_lifecycle"
down_revision = "0002_outbox_payment"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE refunds (
            refund_id           uuid PRIMARY KEY,
            payment_id          uuid NOT NULL,
            subscription_id     uuid NOT NULL,
            user_id             text NOT NULL,
            command_id          uuid NOT NULL,
            amount_minor        bigint NOT NULL CHECK (amount_minor > 0),
            currency            char(3) NOT NULL,
            status              text NOT NULL,
            status_reason       text,
            provider_refund_id  text,
            reason              text NOT NULL DEFAULT '',
            actor               text NOT NULL,
            created_at          timestamptz NOT NULL,
            updated_at          timestamptz NOT NULL,
            version             bigint NOT NULL
        );
        CREATE INDEX refunds_user_created ON refunds (user_id, created_at DESC, refund_id);
        CREATE INDEX refunds_payment ON refunds (payment_id);
        ALTER TABLE payments ADD COLUMN refunded_minor bigint NOT NULL DEFAULT 0;
        ALTER TABLE payments ADD COLUMN kind text NOT NULL DEFAULT 'purchase';
        ALTER TABLE subscriptions ADD COLUMN auto_renew boolean NOT NULL DEFAULT true;
        ALTER TABLE subscriptions ADD COLUMN next_retry_at timestamptz;
        ALTER TABLE subscriptions ADD COLUMN status_reason text;
        ALTER TABLE command_outbox ADD COLUMN refund_id uuid;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE command_outbox DROP COLUMN refund_id;
        ALTER TABLE subscriptions DROP COLUMN status_reason;
        ALTER TABLE subscriptions DROP COLUMN next_retry_at;
        ALTER TABLE subscriptions DROP COLUMN auto_renew;
        ALTER TABLE payments DROP COLUMN kind;
        ALTER TABLE payments DROP COLUMN refunded_minor;
        DROP TABLE refunds;
        """
    )
