"""Reconciliation runs, their partitions, and the items (discrepancies) they found.

- ``recon_runs``: one row per run (a provider report for a window, from the list API or a
  registry file): the matcher's parameters (window, ``taken_at`` = the matcher's "now", SLAs),
  progress (lines, partitions), and when finished its counts per class, succeeded totals per
  currency on both sides, duration, discrepancies (all, new in this run, still unresolved).
  ``schedule_key`` makes the nightly run of a day unique whoever schedules it.
- ``recon_run_partitions``: a partition whose end-of-report marker was processed. ``complete``
  is false when the agent that processed the marker had not seen every line of the partition
  itself (it took the partition over mid-run): the run is then ``incomplete`` (re-run it).
- ``recon_items``: one row per (object, provider id or our id, class) across runs: a re-run
  finds the same row again instead of adding one. Holds the latest snapshot, the repair, and
  the resolution (``repaired`` when the reconciler's own repair was issued; an admin's
  ``accept_provider`` / ``accept_ours`` / ``write_off`` with who, when and why).
- ``recon_run_items``: which items a run found, each as that run saw it (the matcher's item,
  JSON), from which the run's summary is computed.
"""

from alembic import op

revision = "0005_reconciliation"
down_revision = "0004_price_versions"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE recon_runs (
            run_id             uuid PRIMARY KEY,
            window_start       timestamptz NOT NULL,
            window_end         timestamptz NOT NULL,
            source             text NOT NULL CHECK (source IN ('provider_api', 'registry')),
            source_ref         text NOT NULL DEFAULT '',
            trigger            text NOT NULL DEFAULT 'cli',
            schedule_key       text UNIQUE,
            status             text NOT NULL DEFAULT 'feeding'
                CHECK (status IN ('feeding', 'matching', 'finished', 'incomplete', 'failed')),
            taken_at           timestamptz NOT NULL,
            pending_sla_ms     bigint NOT NULL CHECK (pending_sla_ms >= 0),
            hold_sla_ms        bigint NOT NULL CHECK (hold_sla_ms >= 0),
            partitions         integer CHECK (partitions > 0),
            lines              integer NOT NULL DEFAULT 0,
            counts             jsonb NOT NULL DEFAULT '{}',
            totals             jsonb NOT NULL DEFAULT '{}',
            discrepancies      integer NOT NULL DEFAULT 0,
            new_discrepancies  integer NOT NULL DEFAULT 0,
            unresolved         integer NOT NULL DEFAULT 0,
            started_at         timestamptz NOT NULL DEFAULT now(),
            fed_at             timestamptz,
            finished_at        timestamptz,
            duration_ms        bigint,
            error              text,
            CHECK (window_start < window_end)
        );
        CREATE INDEX recon_runs_window ON recon_runs (window_start, window_end);
        CREATE INDEX recon_runs_started ON recon_runs (started_at DESC);

        CREATE TABLE recon_run_partitions (
            run_id         uuid NOT NULL REFERENCES recon_runs (run_id) ON DELETE CASCADE,
            partition      integer NOT NULL CHECK (partition >= 0),
            lines_sent     integer NOT NULL,
            lines_matched  integer NOT NULL,
            complete       boolean NOT NULL,
            items          integer NOT NULL,
            done_at        timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (run_id, partition)
        );

        CREATE TABLE recon_items (
            item_key             text PRIMARY KEY,
            object               text NOT NULL CHECK (object IN ('payment', 'refund')),
            ident                text NOT NULL,
            kind                 text NOT NULL,
            discrepancy          boolean NOT NULL,
            subscription_id      text,
            payment_id           text,
            refund_id            text,
            provider_id          text,
            ours_status          text,
            theirs_status        text,
            ours_amount_minor    bigint,
            ours_currency        char(3),
            theirs_amount_minor  bigint,
            theirs_currency      char(3),
            repair               text NOT NULL CHECK (repair IN
                ('none', 'apply_provider_status', 'refund_later_duplicate', 'escalate')),
            refund_key           text,
            detail               text NOT NULL DEFAULT '',
            first_run_id         uuid NOT NULL REFERENCES recon_runs (run_id),
            last_run_id          uuid NOT NULL REFERENCES recon_runs (run_id),
            first_seen_at        timestamptz NOT NULL,
            last_seen_at         timestamptz NOT NULL,
            repaired_at          timestamptz,
            resolution           text CHECK (resolution IN
                ('repaired', 'accept_provider', 'accept_ours', 'write_off')),
            resolved_by          text,
            resolved_at          timestamptz,
            note                 text NOT NULL DEFAULT '',
            UNIQUE (object, ident, kind)
        );
        CREATE INDEX recon_items_open ON recon_items (last_seen_at DESC)
            WHERE discrepancy AND resolution IS NULL;
        CREATE INDEX recon_items_subscription ON recon_items (subscription_id);
        CREATE INDEX recon_items_kind ON recon_items (kind, last_seen_at DESC);

        CREATE TABLE recon_run_items (
            run_id     uuid NOT NULL REFERENCES recon_runs (run_id) ON DELETE CASCADE,
            item_key   text NOT NULL REFERENCES recon_items (item_key),
            partition  integer NOT NULL,
            kind       text NOT NULL,
            item       jsonb NOT NULL,
            PRIMARY KEY (run_id, item_key)
        );
        CREATE INDEX recon_run_items_item ON recon_run_items (item_key);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE recon_run_items;
        DROP TABLE recon_items;
        DROP TABLE recon_run_partitions;
        DROP TABLE recon_runs;
        """
    )
