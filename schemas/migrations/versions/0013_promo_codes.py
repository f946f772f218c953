"""Promo codes (issue 16).

``promo_codes``: one row per code (stored upper case: codes are case-insensitive), what it
takes off (``kind`` percent: ``value`` 1..100; fixed: ``value`` minor units of ``currency``),
for how many charges (``periods``: 1 once, N repeating, NULL forever), for which plans
(``plan_ids`` NULL: all), until when (``expires_at``), how many times (``max_redemptions``
NULL: unlimited; ``redeemed`` counts them, never past the maximum), and ``archived``.

``promo_redemptions``: one row per (code, user): a user redeems a code once. The row and the
count are written in the intake transaction of the payment that redeems it (with the outbox
row), so a refused request counts nothing and a replayed one counts once.

``subscriptions.promo``: the discount left for the next renewals, as the ledger's state has it
(projected from SubscriptionActivated): the subscription read says what the next charge is.
"""

from alembic import op

revision = "0013_promo_codes"
down_revision = "0012_receipts"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE promo_codes (
            code             text PRIMARY KEY CHECK (code = upper(code) AND code <> ''),
            kind             text NOT NULL CHECK (kind IN ('percent', 'fixed')),
            value            bigint NOT NULL CHECK (value > 0),
            currency         char(3),
            periods          integer CHECK (periods IS NULL OR periods > 0),
            plan_ids         text[],
            expires_at       timestamptz,
            max_redemptions  integer CHECK (max_redemptions IS NULL OR max_redemptions > 0),
            redeemed         integer NOT NULL DEFAULT 0,
            archived         boolean NOT NULL DEFAULT false,
            created_by       text NOT NULL,
            reason           text NOT NULL,
            created_at       timestamptz NOT NULL DEFAULT now(),
            archived_by      text,
            archived_at      timestamptz,
            CHECK (kind <> 'percent' OR value <= 100),
            CHECK ((kind = 'fixed') = (currency IS NOT NULL)),
            CHECK (redeemed >= 0 AND (max_redemptions IS NULL OR redeemed <= max_redemptions))
        );
        CREATE TABLE promo_redemptions (
            code             text NOT NULL REFERENCES promo_codes (code),
            user_id          text NOT NULL,
            subscription_id  uuid NOT NULL,
            payment_id       uuid NOT NULL,
            command_id       uuid NOT NULL,
            plan_id          text NOT NULL,
            price_minor      bigint NOT NULL,
            discount_minor   bigint NOT NULL,
            currency         char(3) NOT NULL,
            redeemed_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (code, user_id)
        );
        CREATE INDEX promo_redemptions_code_time ON promo_redemptions (code, redeemed_at);
        ALTER TABLE subscriptions ADD COLUMN promo jsonb;
        """
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE subscriptions DROP COLUMN promo;"
        " DROP TABLE promo_redemptions; DROP TABLE promo_codes;"
    )
