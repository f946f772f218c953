"""Effective-dated plan prices; the plan a subscription switches to at its period end.

A plan's price is the version in force at a moment (``effective_from <= t``, latest first).
The seeded catalogue becomes version 1 of each plan, in force since the beginning of time;
``plans.amount_minor``/``currency`` stay as the plan's first price for reference only: every
reader asks ``plan_prices``.
"""

from alembic import op

revision = "0004_price_versions"
down_revision = "0003_lifecycle"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE plan_prices (
            plan_id         text NOT NULL REFERENCES plans (plan_id),
            version         integer NOT NULL CHECK (version > 0),
            effective_from  timestamptz NOT NULL,
            amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
            currency        char(3) NOT NULL,
            created_by      text NOT NULL DEFAULT 'migration',
            reason          text NOT NULL DEFAULT '',
            created_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (plan_id, version),
            UNIQUE (plan_id, effective_from)
        );
        INSERT INTO plan_prices (plan_id, version, effective_from, amount_minor, currency)
            SELECT plan_id, 1, '-infinity'::timestamptz, amount_minor, currency FROM plans;
        ALTER TABLE subscriptions ADD COLUMN next_plan_id text;
        ALTER TABLE payments ADD COLUMN price_version integer NOT NULL DEFAULT 0;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE payments DROP COLUMN price_version;
        ALTER TABLE subscriptions DROP COLUMN next_plan_id;
        DROP TABLE plan_prices;
        """
    )
