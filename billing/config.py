"""Settings of the processes, one class per process, all read from ``BILLING_*`` variables.

Each process reads only its own settings (issue 12): ``ApiSettings``, ``WorkerSettings``,
``HistorySettings``, ``EmulatorSettings``, ``ConsoleSettings``, ``ReconcileSettings`` (the
reconciliation CLI) and ``CliSettings`` (``billing``). A process is then configured, and in
prod validated, by what it uses: the console starts without a database DSN, the worker
without a JWT secret, and a type checker shows which setting reaches which process.

A setting that several processes read is declared once, in a small field group that their
classes inherit (``CommonSettings``: env, state dir, logging, Kafka, PostgreSQL;
``ProviderSettings``: the YooKassa client; ...); a prod check lives with the fields it checks.
``Settings`` is the union of the process classes, for the local stack (it configures every
child) and tests; it is a subclass of each, so it can be passed wherever one is expected.

One prefix, the same variable names in every process: docker-compose.yml can give every
service the same environment (a test checks each service against its class). Settings are
built once at start-up and passed down, never read at import time.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# YooKassa's published notification sources; loopback is added for the local stack.
YOOKASSA_WEBHOOK_IPS = [
    "185.71.76.0/27",
    "185.71.77.0/27",
    "77.75.153.0/25",
    "77.75.156.11/32",
    "77.75.156.35/32",
    "77.75.154.128/25",
    "2a02:5180::/32",
]

_PLACEHOLDER_SECRETS = {"changethis", "dev-only-jwt-secret", "emulator-secret"}


class _Prefixed(BaseSettings):
    """The one prefix; variables of other processes are ignored, not refused."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")


# ------------------------------------------------------------------------- field groups
class EnvFields(_Prefixed):
    """The deployment the prod checks look at."""

    env: Literal["dev", "test", "prod"] = "dev"


class LogFields(_Prefixed):
    log_level: str = "INFO"


class CommonSettings(EnvFields, LogFields):
    """What every process on Kafka and PostgreSQL reads: state dir, logging, Kafka, PostgreSQL."""

    state_dir: Path = Path(".state")

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_partitions: int = Field(default=4, ge=1)
    kafka_version: str = "4.1.1"

    # PostgreSQL: empty means the embedded server under state_dir/pg (local stack, tests).
    postgres_dsn: SecretStr | None = None

    @model_validator(mode="after")
    def _refuse_embedded_postgres_in_prod(self) -> CommonSettings:
        if self.env == "prod" and self.postgres_dsn is None:
            raise ValueError("BILLING_POSTGRES_DSN must be set in prod")
        return self


class ShopFields(EnvFields):
    """The shop's credentials: the YooKassa client sends them, the emulator accepts them."""

    yookassa_shop_id: str = "100500"
    yookassa_secret_key: SecretStr = SecretStr("emulator-secret")

    @model_validator(mode="after")
    def _refuse_placeholder_shop_secret_in_prod(self) -> ShopFields:
        secret = self.yookassa_secret_key.get_secret_value()
        if self.env == "prod" and secret in _PLACEHOLDER_SECRETS:
            raise ValueError("BILLING_YOOKASSA_SECRET_KEY must be set in prod")
        return self


class EmulatorAddressFields(_Prefixed):
    """Where the emulator listens (local stack and tests only); the client's default."""

    emulator_host: str = "127.0.0.1"
    emulator_port: int = 8081


class ProviderSettings(CommonSettings, ShopFields, EmulatorAddressFields):
    """The YooKassa client (API, worker, history worker, reconciliation CLI)."""

    # Empty api_url = the local emulator.
    yookassa_api_url: str = ""
    provider_timeout_s: float = 10.0
    provider_max_attempts: int = 3

    @model_validator(mode="after")
    def _refuse_emulator_provider_in_prod(self) -> ProviderSettings:
        if self.env == "prod" and not self.yookassa_api_url:
            raise ValueError("BILLING_YOOKASSA_API_URL must be set in prod (no emulator)")
        return self

    @cached_property
    def provider_api_url(self) -> str:
        return self.yookassa_api_url or f"http://{self.emulator_host}:{self.emulator_port}/v3"


class JwtFields(EnvFields):
    """Tokens: the API checks them, ``billing token`` mints them."""

    jwt_secret: SecretStr = SecretStr("dev-only-jwt-secret")
    jwt_algorithm: str = "HS256"
    jwt_audience: str = "cinema-billing"

    @model_validator(mode="after")
    def _refuse_placeholder_secrets_in_prod(self) -> JwtFields:
        if self.env == "prod" and self.jwt_secret.get_secret_value() in _PLACEHOLDER_SECRETS:
            raise ValueError("BILLING_JWT_SECRET must be set in prod")
        return self


class ApiAddressFields(_Prefixed):
    """Where the API listens (the API binds it, the console calls it by default)."""

    api_host: str = "127.0.0.1"
    api_port: int = 8000


class RenewLeadFields(_Prefixed):
    """Renewals are charged this long before the period ends: the ledger charges then, the
    API shows it as the next charge."""

    renew_lead_s: float = Field(default=86400.0, ge=0)


class HistoryUrlFields(_Prefixed):
    """Where the history worker answers (analytics queries, batch reconciliation runs)."""

    history_url: str = "http://127.0.0.1:6067"


class ClickHouseFields(_Prefixed):
    """ClickHouse history: embedded chdb under state_dir/clickhouse unless a server URL is set
    (http://user:password@host:8123/billing). The history worker owns the embedded store;
    with a server the API queries it directly."""

    clickhouse_url: SecretStr | None = None


class FaustFields(_Prefixed):
    """The Faust apps (worker, history worker): app id (it names groups and the state
    table's changelog) and the broker's group timings."""

    worker_id: str = "billing"
    broker_session_timeout_s: float = 10.0
    broker_heartbeat_interval_s: float = 1.0
    commit_interval_s: float = 0.5


class ReconLagFields(_Prefixed):
    """The provider's lag the report window is widened by (every reader of a report)."""

    recon_report_lag_s: float = Field(default=600.0, ge=0)


class ReconWindowFields(ReconLagFields):
    """A run's days (in recon_timezone) and how long an in-flight item may stay so (pending /
    held for capture) before it counts as missing (nightly runs, the CLI)."""

    recon_timezone: str = "Europe/Moscow"
    recon_pending_sla_s: float = Field(default=2 * 3600.0, gt=0)
    recon_hold_sla_s: float = Field(default=7 * 86400.0, gt=0)


# ------------------------------------------------------------------------------ processes
# Each lists its groups in the order they are defined above, so that Settings, which inherits
# them all, has a consistent method resolution order.
class ApiSettings(
    ProviderSettings,
    JwtFields,
    ApiAddressFields,
    RenewLeadFields,
    HistoryUrlFields,
    ClickHouseFields,
):
    """``python -m api``: HTTP, the outbox relay, webhooks, the console's login and analytics."""

    relay_interval_s: float = 1.0
    relay_delay_s: float = 5.0
    relay_max_backoff_s: float = 300.0
    publish_timeout_s: float = 5.0
    webhook_allowed_ips: list[str] = Field(
        default_factory=lambda: [*YOOKASSA_WEBHOOK_IPS, "127.0.0.1/32", "::1/128"]
    )
    webhook_trust_forwarded_for: bool = False
    # Two-stage payments (YooKassa capture=false): the payment is held, then captured by the
    # ledger (WorkerSettings.capture_delay_s) or an admin.
    two_stage_payments: bool = False

    # The console logs in at POST /api/v1/admin/session, which checks dashboard_admin_user and
    # the scrypt hash below (make one with `python -m dashboard hash-password`; unset: console
    # login is disabled) and issues an admin token valid for dashboard_session_ttl_s.
    dashboard_admin_user: str = "admin"
    dashboard_admin_password_hash: SecretStr | None = None
    dashboard_session_ttl_s: int = Field(default=900, ge=60, le=43_200)


class WorkerSettings(ProviderSettings, RenewLeadFields, FaustFields, ReconWindowFields):
    """``python -m streams worker``: ledger, gateway, projection, notifier, reconcile agents."""

    worker_web_port: int = 6066
    table_store: str = "memory://"
    broker_rebalance_timeout_s: float = 20.0
    gateway_concurrency: int = 16
    # YooKassa honours an Idempotence-Key 24 h: no create is sent for a request older than
    # this (measured from the request's first time); past it the gateway only reads.
    provider_key_safe_window_s: float = Field(default=20 * 3600.0, gt=0, lt=24 * 3600.0)
    # Where the Faust app's consumer group starts when it has no committed offset (a new
    # worker id, offsets expired, a failover). streams/app.py explains why not "earliest".
    worker_offset_reset: Literal["latest", "earliest"] = "latest"
    sweep_interval_s: float = 2.0
    payment_deadline_s: float = 15.0
    payment_redrive_max_backoff_s: float = 3600.0
    # Lifecycle: a declined renewal is retried after each of these waits (seconds), then the
    # subscription expires. A held payment is captured after capture_delay_s (negative: an
    # admin captures or releases), released before hold_s.
    capture_delay_s: float = 0.0
    hold_s: float = Field(default=6 * 86400.0, gt=0)
    renewal_reminder_s: float = Field(default=3 * 86400.0, ge=0)  # 0: no reminder
    dunning_schedule_s: list[float] = Field(default=[86400.0, 259200.0, 432000.0, 432000.0])
    # The nightly reconciliation: yesterday in recon_timezone, on the leader worker, crontab
    # recon_cron.
    recon_nightly: bool = True
    recon_cron: str = "30 3 * * *"
    # Notifier (group <worker_id>-notifier): where it starts without a committed offset, and
    # how far back "latest" reaches (streams/notify/agent.py says why not "earliest").
    notifier_offset_reset: Literal["latest", "earliest"] = "latest"
    notifier_reset_lookback_s: float = Field(default=3600.0, ge=0)


class HistorySettings(ProviderSettings, FaustFields, ReconLagFields, ClickHouseFields):
    """``python -m streams.history``: billing.events into ClickHouse, the analytics queries
    on its port, batch reconciliation runs (which read the provider's report)."""

    history_host: str = "127.0.0.1"  # bind address of the history worker's query port
    history_port: int = 6067
    history_batch: int = 10_000


class EmulatorSettings(ShopFields, LogFields, EmulatorAddressFields):
    """``python -m providers.emulator``: the shop it accepts and where it notifies."""

    public_base_url: str = "http://127.0.0.1:8000"
    emulator_webhook_url: str = ""

    @property
    def webhook_url(self) -> str:
        return self.emulator_webhook_url or f"{self.public_base_url}/api/v1/webhooks/yookassa"


class ConsoleSettings(ApiAddressFields):
    """``python -m dashboard`` (Streamlit): no secret; it acts only through the API."""

    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8501
    dashboard_api_url: str = ""  # the API as the console reaches it; empty: api_host:api_port
    dashboard_api_timeout_s: float = Field(default=15.0, gt=0)


class ReconcileSettings(ProviderSettings, ReconWindowFields, HistoryUrlFields):
    """``billing reconcile`` / ``python -m reconciler``: feeds a report, or asks the history
    worker for a batch run; waits at most recon_wait_timeout_s with --wait."""

    recon_wait_timeout_s: float = Field(default=900.0, gt=0)


class CliSettings(CommonSettings, JwtFields):
    """``billing token | migrate | init-topics``."""


class Settings(
    ApiSettings,
    WorkerSettings,
    HistorySettings,
    EmulatorSettings,
    ConsoleSettings,
    ReconcileSettings,
    CliSettings,
):
    """Every process's settings: the local stack (it configures every child) and tests."""


PROCESS_SETTINGS: tuple[type[_Prefixed], ...] = (
    ApiSettings,
    WorkerSettings,
    HistorySettings,
    EmulatorSettings,
    ConsoleSettings,
    ReconcileSettings,
    CliSettings,
)
