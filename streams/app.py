"""Builds the Faust app from WorkerSettings; the restart-loss fix is applied before the App exists.

``processing_guarantee="at_least_once"``: Faust flushes what an agent produced (table
changelog, events) before it commits the input offset, so a crash can only replay; every agent
here is idempotent (ARCHITECTURE.md, "Effectively once"). ``exactly_once`` is broken in
faust-streaming 0.15.3 (STACK-NOTES.md) and must not be used.

Tables (BILLING_TABLE_STORE): ``rocksdb://`` by default (rocksdict, a wheel: no native
build), one database per partition under ``state_dir/faust`` holding the changelog offset it
has applied, so a worker restarted on its own disk replays only what it missed, and
``table_standby_replicas`` warm copies on other workers take a failover without a cold
recovery. ``memory://`` rebuilds the table from its compacted changelog at every start (the
test suite's choice: its workers start on empty disks). ``tables_recovered`` tells when the
tables and the ledger's due index are ready (readiness).

Offset reset (``consumer_auto_offset_reset``, BILLING_WORKER_OFFSET_RESET, default
``latest``): where the app's consumer group starts on a partition without a committed offset
(a new BILLING_WORKER_ID, offsets expired after 7 idle days, a failover to a fresh group).
Faust's own default, ``earliest``, would feed the gateway every request event still
retained and the ledger every command: each a provider call, and past the provider's key
window a potential second charge (invariant 7; the gateway's guard reads instead, but a
flood of searches is no better). ``latest`` loses nothing that matters: the outbox relay
republishes every command not yet applied (its row stays ``accepted``), and the ledger's
sweeper re-drives every payment, refund and capture whose outcome is late and issues every
due renewal from the state table, which is restored from its changelog by explicit seeks,
whatever this setting says. A provider event skipped is found again by that re-drive (a
re-read), a reconciliation report skipped leaves its run visibly unfinished, to run again.
``earliest`` remains for a deliberate rebuild. BILLING_WORKER_ID also names the state
table's changelog: changing it is a migration, not a restart.
"""

from __future__ import annotations

from typing import Any

import faust

from billing import logs
from billing.config import WorkerSettings
from billing.kafka_client import exit_on_topic_mismatch, faust_kwargs
from providers.port import SearchingProvider
from streams import faust_fix
from streams.gateway.agent import register_gateway
from streams.ledger.agent import register_ledger
from streams.ledger.machine import Policy
from streams.notify.agent import register_notifier
from streams.ops import register_ops
from streams.projection.agent import register_projection
from streams.reconcile import register_reconciler
from streams.topics import declare


def policy_from(settings: WorkerSettings) -> Policy:
    return Policy(
        payment_deadline_ms=int(settings.payment_deadline_s * 1000),
        redrive_max_backoff_ms=int(settings.payment_redrive_max_backoff_s * 1000),
        renew_lead_ms=int(settings.renew_lead_s * 1000),
        renew_spread_ms=int(settings.renew_spread_s * 1000),
        remind_ms=int(settings.renewal_reminder_s * 1000),
        capture_delay_ms=None
        if settings.capture_delay_s < 0
        else int(settings.capture_delay_s * 1000),
        hold_ms=int(settings.hold_s * 1000),
        dunning_schedule_ms=tuple(int(s * 1000) for s in settings.dunning_schedule_s),
        closed_retention_ms=int(settings.ledger_closed_retention_days * 86_400_000),
    )


def create_app(
    settings: WorkerSettings,
    *,
    provider: SearchingProvider | None = None,
    postgres_dsn: str | None = None,
    agents: tuple[str, ...] = ("ledger", "gateway", "projection", "notifier", "reconcile"),
) -> Any:
    faust_fix.apply()
    datadir = settings.state_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.worker_id,
        **faust_kwargs(settings),  # broker, credentials, replication of its own topics
        store=settings.table_store,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset=settings.worker_offset_reset,  # see the docstring
        topic_partitions=settings.kafka_partitions,
        topic_allow_declare=True,
        table_standby_replicas=settings.table_standby_replicas,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_rebalance_timeout=settings.broker_rebalance_timeout_s,
        broker_commit_interval=settings.commit_interval_s,
        web_port=settings.worker_web_port,
        web_host=settings.worker_web_host,
        web_bind=settings.worker_web_host,
        datadir=str(datadir),
        producer_acks=-1,
        producer_linger=settings.producer_linger_ms / 1000,
        stream_recovery_delay=0.0,
        # Faust's wait for in-flight events on stop/revocation can hang forever (events
        # cleared from agents' queues stay unacked; faust#402, seen by the chaos suite).
        # Not waiting is safe here: an event not fully processed is replayed (the projection
        # commits only after its transaction; the ledger's sends are shielded).
        stream_wait_empty=False,
        # Faust sets up logging itself (mode's worker): ours, JSON lines, bounded (billing.logs).
        logging_config=logs.dict_config(
            process="worker",
            level=settings.log_level,
            fmt=str(getattr(settings, "log_format", "json")),
            secrets=logs.secrets_of(settings),
        ),
    )
    register_ops(app)  # /metrics, /healthz, /readyz on the worker's web port
    app.billing_policy = policy_from(settings)  # the state gauges' due times
    topics = declare(app, settings.kafka_partitions)
    dsn = postgres_dsn or (
        settings.postgres_dsn.get_secret_value() if settings.postgres_dsn else None
    )
    if "ledger" in agents:
        register_ledger(app, topics, policy_from(settings), settings, dsn)
    if "gateway" in agents:
        if provider is None:
            from providers.yookassa_adapter import YooKassaProvider

            provider = YooKassaProvider(
                settings, max_workers=max(4, settings.gateway_concurrency + 4)
            )
        register_gateway(app, topics, provider, settings)
    if "reconcile" in agents and "ledger" in agents:
        if dsn is None:
            raise RuntimeError("reconciliation needs BILLING_POSTGRES_DSN")
        register_reconciler(
            app,
            topics,
            app.billing_ledger_table,
            settings,
            dsn,
            index=app.billing_ledger_index.index,
        )
    if "notifier" in agents:
        register_notifier(app, settings)
    if "projection" in agents:
        if dsn is None:
            raise RuntimeError("the projection needs BILLING_POSTGRES_DSN")
        register_projection(app, topics, dsn, settings)
    return app


def changelog_topics(app: Any) -> list[str]:
    """The changelog topics of the app's tables (``<worker_id>-<table>-changelog``)."""
    return sorted(t.changelog_topic.get_topic_name() for t in app.tables.values())


def check_topics_at_start(settings: WorkerSettings, app: Any) -> None:
    """The worker's start check: the billing topics and its tables' changelogs as the settings
    describe them (a changelog compacted, its replication and min.insync.replicas); in prod a
    mismatch exits with the list. A changelog not yet created is Faust's to create (compacted,
    from faust_kwargs); one created by hand with the delete policy would lose states."""
    exit_on_topic_mismatch(settings, "the worker", changelogs=changelog_topics(app))


def tables_recovered(app: Any) -> bool:
    """The worker's tables are recovered for its current assignment and the ledger's due
    index is built: it serves (readiness). False while a rebalance or recovery runs."""
    if app.rebalancing:
        return False
    recovery = app.tables.recovery
    if not recovery.completed.is_set() or recovery.in_recovery:
        return False
    indexed = getattr(app, "billing_ledger_index", None)
    return indexed is None or bool(indexed.ready)
