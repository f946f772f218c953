"""Whether a subscription has a saved payment method (renewals are possible), for the read
model's next charge date. No card data: only the fact that YooKassa saved one.
"""

from alembic import op

revision = "0006_saved_method"
down_revision = "0005_reconciliation"


def upgrade() -> None:
    op.execute(
        "ALTER TABLE subscriptions ADD COLUMN payment_method_saved boolean NOT NULL DEFAULT false"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE subscriptions DROP COLUMN payment_method_saved")
