"""Settings of the processes (api, worker, history worker, emulator, console, stack, CLI).

``CommonSettings`` is what every process reads, ``ProviderSettings`` adds the YooKassa client;
``Settings`` still holds every field while the split by process proceeds (issue 12).

Read from the environment (prefix ``BILLING_``), built once at start-up and passed down, never
read at import time. docker-compose.yml configures the same names (a test checks it).
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


class CommonSettings(BaseSettings):
    """What every process reads: environment, state dir, logging, Kafka, PostgreSQL."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    state_dir: Path = Path(".state")
    log_level: str = "INFO"

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


class ProviderSettings(CommonSettings):
    """The YooKassa client (API and worker); the emulator's address when no api_url is set."""

    # Provider (YooKassa). Empty api_url = the local emulator.
    yookassa_shop_id: str = "100500"
    yookassa_secret_key: SecretStr = SecretStr("emulator-secret")
    yookassa_api_url: str = ""
    provider_timeout_s: float = 10.0
    provider_max_attempts: int = 3

    # Emulator (local stack and tests only)
    emulator_host: str = "127.0.0.1"
    emulator_port: int = 8081
    emulator_webhook_url: str = ""

    @model_validator(mode="after")
    def _refuse_emulator_provider_in_prod(self) -> ProviderSettings:
        if self.env == "prod":
            if self.yookassa_secret_key.get_secret_value() in _PLACEHOLDER_SECRETS:
                raise ValueError("BILLING_YOOKASSA_SECRET_KEY must be set in prod")
            if not self.yookassa_api_url:
                raise ValueError("BILLING_YOOKASSA_API_URL must be set in prod (no emulator)")
        return self

    @cached_property
    def provider_api_url(self) -> str:
        return self.yookassa_api_url or f"http://{self.emulator_host}:{self.emulator_port}/v3"


class Settings(ProviderSettings):
    """Every setting of every process (the per-process split is under way, issue 12)."""

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_base_url: str = "http://127.0.0.1:8000"
    jwt_secret: SecretStr = SecretStr("dev-only-jwt-secret")
    jwt_algorithm: str = "HS256"
    jwt_audience: str = "cinema-billing"
    relay_interval_s: float = 1.0
    relay_delay_s: float = 5.0
    relay_max_backoff_s: float = 300.0
    publish_timeout_s: float = 5.0
    webhook_allowed_ips: list[str] = Field(
        default_factory=lambda: [*YOOKASSA_WEBHOOK_IPS, "127.0.0.1/32", "::1/128"]
    )
    webhook_trust_forwarded_for: bool = False

    # Worker (Faust)
    worker_id: str = "billing"
    worker_web_port: int = 6066
    table_store: str = "memory://"
    broker_session_timeout_s: float = 10.0
    broker_heartbeat_interval_s: float = 1.0
    broker_rebalance_timeout_s: float = 20.0
    commit_interval_s: float = 0.5
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
    # Lifecycle: renewals are charged this long before the period ends; a declined renewal is
    # retried after each of these waits (seconds), then the subscription expires.
    # Two-stage payments (YooKassa capture=false): held, then captured by the ledger after
    # capture_delay_s (negative: an admin captures or releases), released before hold_s.
    two_stage_payments: bool = False
    capture_delay_s: float = 0.0
    hold_s: float = Field(default=6 * 86400.0, gt=0)
    renew_lead_s: float = Field(default=86400.0, ge=0)
    renewal_reminder_s: float = Field(default=3 * 86400.0, ge=0)  # 0: no reminder
    dunning_schedule_s: list[float] = Field(default=[86400.0, 259200.0, 432000.0, 432000.0])

    # Reconciliation: the nightly run (yesterday in recon_timezone, on the leader worker,
    # crontab recon_cron), how long an in-flight item may stay so (pending / held for capture)
    # before it counts as missing, and the provider's lag the report window is widened by.
    recon_nightly: bool = True
    recon_timezone: str = "Europe/Moscow"
    recon_cron: str = "30 3 * * *"
    recon_pending_sla_s: float = Field(default=2 * 3600.0, gt=0)
    recon_hold_sla_s: float = Field(default=7 * 86400.0, gt=0)
    recon_report_lag_s: float = Field(default=600.0, ge=0)
    recon_wait_timeout_s: float = Field(default=900.0, gt=0)

    # ClickHouse history: embedded chdb under state_dir/clickhouse unless a server URL is set
    # (http://user:password@host:8123/billing). The history worker owns the embedded store
    # and serves the analytics queries to the API on its loopback port.
    clickhouse_url: SecretStr | None = None
    history_host: str = "127.0.0.1"  # bind address of the history worker's query port
    history_port: int = 6067
    history_url: str = "http://127.0.0.1:6067"  # where the API asks the history worker
    history_batch: int = 10_000
    # Notifier (group <worker_id>-notifier): where it starts without a committed offset, and
    # how far back "latest" reaches (streams/notify/agent.py says why not "earliest").
    notifier_offset_reset: Literal["latest", "earliest"] = "latest"
    notifier_reset_lookback_s: float = Field(default=3600.0, ge=0)

    # Dashboard: the Streamlit admin console (`python -m dashboard`). It needs no secret and
    # acts only through the API; it logs in at POST /api/v1/admin/session, which checks
    # dashboard_admin_user and the scrypt hash below (make one with
    # `python -m dashboard hash-password`; unset: console login is disabled) and issues an
    # admin token valid for dashboard_session_ttl_s.
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8501
    dashboard_api_url: str = ""  # the API as the console reaches it; empty: api_host:api_port
    dashboard_api_timeout_s: float = Field(default=15.0, gt=0)
    dashboard_admin_user: str = "admin"
    dashboard_admin_password_hash: SecretStr | None = None
    dashboard_session_ttl_s: int = Field(default=900, ge=60, le=43_200)

    @model_validator(mode="after")
    def _refuse_placeholder_secrets_in_prod(self) -> Settings:
        if self.env == "prod" and self.jwt_secret.get_secret_value() in _PLACEHOLDER_SECRETS:
            raise ValueError("BILLING_JWT_SECRET must be set in prod")
        return self

    @property
    def webhook_url(self) -> str:
        return self.emulator_webhook_url or f"{self.public_base_url}/api/v1/webhooks/yookassa"
