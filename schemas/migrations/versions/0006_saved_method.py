"""Whether a subscription has a saved payment method (renewals are possible), for the read
model's next charge date. No card data: only the fact that YooKassa saved one.

Revision ID: 0006_saved_method
Revises: 0005_reconciliation
"""

from alembic import op

revision = "0006_saved_method"
down_revision = "0005_reconciliation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE subscriptions ADD COLUMN payment_method_saved boolean NOT NULL DEFAULT false"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE subscriptions DROP COLUMN payment_method_saved")
