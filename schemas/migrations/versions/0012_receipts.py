"""54-FZ receipts (issue 16).

``user_profiles``: the contact a user gives for receipts (email and/or phone), set through
``PUT /api/v1/profile``; intake falls back to the sign-on token's ``email`` claim.
``payments.receipt_registration`` / ``refunds.receipt_registration``: YooKassa's registration
status of the object's receipt (pending | succeeded | canceled; NULL: no receipt), as seen
when the payment or refund reached its outcome (projected from PaymentSucceeded /
RefundSucceeded).
"""

from alembic import op

revision = "0012_receipts"
down_revision = "0011_wallet_trials"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE user_profiles (
            user_id     text PRIMARY KEY,
            email       text,
            phone       text,
            updated_at  timestamptz NOT NULL DEFAULT now()
        );
        ALTER TABLE payments ADD COLUMN receipt_registration text;
        ALTER TABLE refunds ADD COLUMN receipt_registration text;
        """
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE refunds DROP COLUMN receipt_registration;"
        " ALTER TABLE payments DROP COLUMN receipt_registration;"
        " DROP TABLE user_profiles;"
    )
