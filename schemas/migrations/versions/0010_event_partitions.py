"""``subscription_events`` partitioned by month (declarative range partitioning on
``occurred_at``), rows and constraints kept, so old months can be detached and archived.

A unique constraint on a partitioned table must include the partition key, so the keys
become (event_id, occurred_at) and (subscription_id, version, occurred_at). Dedupe still
holds: a replayed event is the same event (same id, same ``occurred_at``: events are
re-emitted identical), so ``ON CONFLICT DO NOTHING`` still drops it, and the projection's
per-subscription version guard (``projection_versions``, locked ``FOR UPDATE``) never inserts
a version it has projected, which is what kept (subscription_id, version) unique before.

The migration makes a partition for every month that has rows and for this month and the
next two; a DEFAULT partition takes anything outside them (a test clock years ahead). The
maintenance job (``billing maintain``, billing/maintenance.py) makes the coming months'
partitions (moving matching rows out of the default one) and, when
``BILLING_EVENTS_RETENTION_MONTHS`` is set, detaches older months (the table stays, named
``subscription_events_YYYYMM``, for archiving; the downgrade does not bring it back).
"""

from alembic import op

revision = "0010_event_partitions"
down_revision = "0009_outbox_topic"

_PLAIN = """
    event_id         uuid PRIMARY KEY,
    subscription_id  uuid NOT NULL,
    version          bigint NOT NULL,
    event_type       text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    causation_id     uuid NOT NULL,
    body             jsonb NOT NULL,
    UNIQUE (subscription_id, version)
"""
_COLUMNS = "event_id, subscription_id, version, event_type, occurred_at, causation_id, body"


def upgrade() -> None:
    op.execute(
        f"""
        ALTER TABLE subscription_events RENAME TO subscription_events_plain;
        ALTER TABLE subscription_events_plain
            RENAME CONSTRAINT subscription_events_pkey TO subscription_events_plain_pkey;
        ALTER TABLE subscription_events_plain
            RENAME CONSTRAINT subscription_events_subscription_id_version_key
            TO subscription_events_plain_version_key;
        CREATE TABLE subscription_events (
            event_id         uuid NOT NULL,
            subscription_id  uuid NOT NULL,
            version          bigint NOT NULL,
            event_type       text NOT NULL,
            occurred_at      timestamptz NOT NULL,
            causation_id     uuid NOT NULL,
            body             jsonb NOT NULL,
            CONSTRAINT subscription_events_pkey PRIMARY KEY (event_id, occurred_at),
            CONSTRAINT subscription_events_version_key
                UNIQUE (subscription_id, version, occurred_at)
        ) PARTITION BY RANGE (occurred_at);
        CREATE TABLE subscription_events_default PARTITION OF subscription_events DEFAULT;
        DO $$
        DECLARE m timestamp;
        BEGIN
            FOR m IN
                SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC')
                FROM subscription_events_plain
                UNION
                SELECT date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => i)
                FROM generate_series(0, 2) AS i
            LOOP
                EXECUTE 'CREATE TABLE '
                    || quote_ident('subscription_events_' || to_char(m, 'YYYYMM'))
                    || ' PARTITION OF subscription_events FOR VALUES FROM ('
                    || quote_literal(m AT TIME ZONE 'UTC') || ') TO ('
                    || quote_literal((m + interval '1 month') AT TIME ZONE 'UTC') || ')';
            END LOOP;
        END $$;
        INSERT INTO subscription_events ({_COLUMNS})
            SELECT {_COLUMNS} FROM subscription_events_plain;
        DROP TABLE subscription_events_plain;
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        ALTER TABLE subscription_events RENAME TO subscription_events_parted;
        ALTER TABLE subscription_events_parted
            RENAME CONSTRAINT subscription_events_pkey TO subscription_events_parted_pkey;
        ALTER TABLE subscription_events_parted
            RENAME CONSTRAINT subscription_events_version_key
            TO subscription_events_parted_version_key;
        CREATE TABLE subscription_events ({_PLAIN});
        INSERT INTO subscription_events ({_COLUMNS})
            SELECT {_COLUMNS} FROM subscription_events_parted ON CONFLICT DO NOTHING;
        DROP TABLE subscription_events_parted;
        """
    )
