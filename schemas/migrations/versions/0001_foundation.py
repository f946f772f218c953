"""Foundation: plan catalogue, intake (idempotency keys + command outbox), read models."""

from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE plans (
            plan_id        text PRIMARY KEY,
            name           text NOT NULL,
            amount_minor   bigint NOT NULL CHECK (amount_minor > 0),
            currency       char(3) NOT NULL,
            period_months  integer NOT NULL CHECK (period_months > 0),
            trial_days     integer NOT NULL DEFAULT 0 CHECK (trial_days >= 0),
            archived       boolean NOT NULL DEFAULT false,
            created_at     timestamptz NOT NULL DEFAULT now(),
            updated_at     timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO plans (plan_id, name, amount_minor, currency, period_months) VALUES
            ('monthly', 'Cinema monthly', 29900, 'RUB', 1),
            ('quarterly', 'Cinema quarterly', 79900, 'RUB', 3),
            ('yearly', 'Cinema yearly', 299000, 'RUB', 12);

        -- Intake: the idempotency record and the command are written in one transaction
        -- before the API answers 202 (ARCHITECTURE.md, "Effectively once").
        CREATE TABLE idempotency_keys (
            user_id          text NOT NULL,
            idem_key         text NOT NULL,
            fingerprint      text NOT NULL,
            command_id       uuid NOT NULL,
            response_status  integer NOT NULL,
            response_body    jsonb NOT NULL,
            created_at       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, idem_key)
        );
        CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

        CREATE TABLE command_outbox (
            command_id       uuid PRIMARY KEY,
            subscription_id  uuid NOT NULL,
            user_id          text NOT NULL,
            command_type     text NOT NULL,
            payload          bytea NOT NULL,
            status           text NOT NULL DEFAULT 'accepted'
                             CHECK (status IN ('accepted', 'processing', 'done', 'rejected')),
            status_reason    text,
            publish_attempts integer NOT NULL DEFAULT 0,
            published_at     timestamptz,
            next_publish_at  timestamptz NOT NULL DEFAULT now(),
            last_error       text,
            created_at       timestamptz NOT NULL DEFAULT now(),
            updated_at       timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX command_outbox_due ON command_outbox (next_publish_at)
            WHERE status = 'accepted';
        CREATE INDEX command_outbox_open ON command_outbox (created_at)
            WHERE status IN ('accepted', 'processing');

        -- Read models, projected from billing.events with a per-subscription version guard.
        CREATE TABLE subscriptions (
            subscription_id  uuid PRIMARY KEY,
            user_id          text NOT NULL UNIQUE,
            status           text NOT NULL,
            plan_id          text,
            period_start     timestamptz,
            period_end       timestamptz,
            version          bigint NOT NULL,
            updated_at       timestamptz NOT NULL
        );
        CREATE INDEX subscriptions_status ON subscriptions (status, plan_id);

        CREATE TABLE payments (
            payment_id           uuid PRIMARY KEY,
            subscription_id      uuid NOT NULL,
            user_id              text NOT NULL,
            command_id           uuid NOT NULL,
            plan_id              text NOT NULL,
            amount_minor         bigint NOT NULL,
            currency             char(3) NOT NULL,
            status               text NOT NULL,
            status_reason        text,
            provider_payment_id  text,
            confirmation_url     text,
            period_start         timestamptz,
            period_end           timestamptz,
            created_at           timestamptz NOT NULL,
            updated_at           timestamptz NOT NULL,
            version              bigint NOT NULL
        );
        CREATE INDEX payments_user_created ON payments (user_id, created_at DESC, payment_id);
        CREATE INDEX payments_subscription ON payments (subscription_id);
        CREATE UNIQUE INDEX payments_provider_id ON payments (provider_payment_id)
            WHERE provider_payment_id IS NOT NULL;

        -- The event history of a subscription (its audit trail), and the projection's guard.
        CREATE TABLE subscription_events (
            event_id         uuid PRIMARY KEY,
            subscription_id  uuid NOT NULL,
            version          bigint NOT NULL,
            event_type       text NOT NULL,
            occurred_at      timestamptz NOT NULL,
            causation_id     uuid NOT NULL,
            body             jsonb NOT NULL,
            UNIQUE (subscription_id, version)
        );
        CREATE TABLE projection_versions (
            subscription_id  uuid PRIMARY KEY,
            version          bigint NOT NULL
        );
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE projection_versions;
        DROP TABLE subscription_events;
        DROP TABLE payments;
        DROP TABLE subscriptions;
        DROP TABLE command_outbox;
        DROP TABLE idempotency_keys;
        DROP TABLE plans;
        """
    )
