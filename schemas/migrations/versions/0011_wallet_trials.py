"""The wallet and free trials (issue 16).

``payment_methods``: the saved methods of a subscription as YooKassa shows them (type, title,
first6/last4, expiry, card type, issuer): never a card number, only what the provider returns
as displayable. ``is_default`` marks the one renewals charge; a deleted method keeps its row
(``deleted_at``) as history and is never listed or charged again. Projected from
PaymentSucceeded / PaymentMethodSaved / PaymentMethodChanged.

``subscriptions.trial_end``: the end of the user's one free trial (NULL: never had one).
"""

from alembic import op

revision = "0011_wallet_trials"
down_revision = "0010_event_partitions"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE payment_methods (
            method_id        text PRIMARY KEY,
            subscription_id  uuid NOT NULL,
            user_id          text NOT NULL,
            type             text NOT NULL DEFAULT 'bank_card',
            title            text,
            first6           text,
            last4            text,
            expiry_month     text,
            expiry_year      text,
            card_type        text,
            issuer_country   text,
            issuer_name      text,
            saved_by_payment uuid,
            is_default       boolean NOT NULL DEFAULT false,
            deleted_at       timestamptz,
            created_at       timestamptz NOT NULL,
            updated_at       timestamptz NOT NULL
        );
        CREATE INDEX payment_methods_user ON payment_methods (user_id, created_at);
        CREATE INDEX payment_methods_subscription ON payment_methods (subscription_id);
        ALTER TABLE subscriptions ADD COLUMN trial_end timestamptz;
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE subscriptions DROP COLUMN trial_end; DROP TABLE payment_methods;")
