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

import hmac
import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.receipts import ReceiptPolicy

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

LOOPBACK_WEBHOOK_IPS = ["127.0.0.1/32", "::1/128"]

# Values from this repository, its docs and common examples: never a secret outside dev.
_PLACEHOLDER_SECRETS = {
    "changethis",
    "changeme",
    "secret",
    "password",
    "dev-only-jwt-secret",
    "emulator-secret",
    "test-only-secret",
}
_PLACEHOLDER_SHOP_IDS = {"100500", "123456", "000000"}
# In prod the cluster's defaults replace the local broker's for Kafka settings left unset.
PROD_TOPIC_DEFAULTS: dict[str, object] = {
    "kafka_partitions": 64,
    "kafka_replication_factor": 3,
    "kafka_min_insync_replicas": 2,
}


KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


def _env_of(data: dict[str, object]) -> object:
    """The deployment named in raw settings input (before validation), prod when unset."""
    return data.get("env", "prod")


def _refuse_weak(name: str, secret: SecretStr | None, *, min_len: int) -> None:
    """Fail closed on a missing, known or short secret, naming the variable (never the value)."""
    value = secret.get_secret_value() if secret is not None else ""
    if not value:
        raise ValueError(f"{name} must be set in prod")
    if value.lower() in _PLACEHOLDER_SECRETS:
        raise ValueError(f"{name} is a known placeholder value; set a real secret in prod")
    if len(value) < min_len:
        raise ValueError(f"{name} is too short for prod (at least {min_len} characters)")


class _Prefixed(BaseSettings):
    """The one prefix; variables of other processes are ignored, not refused."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")


# ------------------------------------------------------------------------- field groups
class EnvFields(_Prefixed):
    """The deployment the prod checks look at. Unset means prod: a process fails closed
    unless dev (the local stack) or test (the test suite) is named explicitly."""

    env: Literal["dev", "test", "prod"] = "prod"


class LogFields(_Prefixed):
    log_level: str = "INFO"


class KafkaFields(EnvFields):
    """Kafka: where the brokers are, how the billing topics are made durable (applied when
    they are created, checked when a process starts: streams.topic_check), and how clients
    authenticate (billing.kafka_client builds every client's arguments from these).

    The topic defaults suit the local single broker; in prod the unset ones default to a
    cluster's (PROD_TOPIC_DEFAULTS: 64 partitions, replication 3, min.insync.replicas 2), and
    prod refuses replication below 3, min.insync.replicas below 2 and unauthenticated or
    unencrypted transport."""

    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_partitions: int = Field(default=4, ge=1)
    kafka_version: str = "4.1.1"
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_min_insync_replicas: int = Field(default=1, ge=1)
    # billing.events is the log of record: -1 keeps it for good. Commands, provider events,
    # reports and notifications are inputs, kept long enough to replay any outage.
    kafka_events_retention_ms: int = Field(default=-1, ge=-1)
    kafka_input_retention_ms: int = Field(default=14 * 86_400_000, ge=3_600_000)
    kafka_max_message_bytes: int = Field(default=1_048_588, ge=65_536)
    # Transport: SASL/SCRAM over TLS in prod (SASL_SSL); PLAINTEXT for the local broker.
    kafka_security_protocol: KafkaProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None  # empty: the system's trusted CAs

    @model_validator(mode="before")
    @classmethod
    def _cluster_defaults_in_prod(cls, data: object) -> object:
        if isinstance(data, dict) and _env_of(data) == "prod":
            return {**PROD_TOPIC_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _refuse_fragile_kafka(self) -> KafkaFields:
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ValueError(
                "BILLING_KAFKA_MIN_INSYNC_REPLICAS must not exceed BILLING_KAFKA_REPLICATION_FACTOR"
            )
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "BILLING_KAFKA_SASL_USERNAME and BILLING_KAFKA_SASL_PASSWORD must be set "
                f"with BILLING_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
            )
        if self.env != "prod":
            return self
        if self.kafka_replication_factor < 3:
            raise ValueError("BILLING_KAFKA_REPLICATION_FACTOR must be at least 3 in prod")
        if self.kafka_min_insync_replicas < 2:
            raise ValueError("BILLING_KAFKA_MIN_INSYNC_REPLICAS must be at least 2 in prod")
        if self.kafka_security_protocol != "SASL_SSL":
            raise ValueError(
                "BILLING_KAFKA_SECURITY_PROTOCOL must be SASL_SSL in prod (SCRAM over TLS)"
            )
        _refuse_weak("BILLING_KAFKA_SASL_PASSWORD", self.kafka_sasl_password, min_len=16)
        return self


class CommonSettings(KafkaFields, LogFields):
    """What every process on Kafka and PostgreSQL reads: state dir, logging, Kafka, PostgreSQL."""

    state_dir: Path = Path(".state")

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
    def _refuse_placeholder_shop_in_prod(self) -> ShopFields:
        if self.env != "prod":
            return self
        if self.yookassa_shop_id in _PLACEHOLDER_SHOP_IDS or not self.yookassa_shop_id:
            raise ValueError("BILLING_YOOKASSA_SHOP_ID must be the shop's real id in prod")
        _refuse_weak("BILLING_YOOKASSA_SECRET_KEY", self.yookassa_secret_key, min_len=8)
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
    provider_backoff_base_s: float = Field(default=0.5, ge=0)
    provider_backoff_cap_s: float = Field(default=5.0, ge=0)
    # Calls to the shop (providers/ratelimit.py): started at most provider_rate_per_s (bursts
    # of provider_burst), provider_max_in_flight at once per process; a 429 pauses every
    # call for its Retry-After, at most provider_retry_after_cap_s.
    provider_rate_per_s: float = Field(default=100.0, gt=0)
    provider_burst: int = Field(default=20, ge=1)
    provider_max_in_flight: int = Field(default=20, ge=1)
    provider_retry_after_cap_s: float = Field(default=10.0, ge=0)

    @property
    def provider_retry_budget_s(self) -> float:
        """The longest the adapter spends on one operation: every attempt to its deadline,
        every wait between them at its largest (full jitter, or a 429's capped Retry-After).
        The time waiting for the rate limit's token or slot is not in it."""
        total = self.provider_max_attempts * self.provider_timeout_s
        for attempt in range(1, self.provider_max_attempts):
            backoff = min(
                self.provider_backoff_cap_s, self.provider_backoff_base_s * 2.0 ** (attempt - 1)
            )
            total += max(backoff, self.provider_retry_after_cap_s)
        return total

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
    # The auth service that issues tokens (their ``iss``); checked on every token when set,
    # required in prod.
    jwt_issuer: str = ""

    @model_validator(mode="after")
    def _refuse_weak_jwt_in_prod(self) -> JwtFields:
        if self.env != "prod":
            return self
        # HS256 needs a key as long as its hash (RFC 7518 3.2): 32 bytes.
        _refuse_weak("BILLING_JWT_SECRET", self.jwt_secret, min_len=32)
        if not self.jwt_issuer.strip():
            raise ValueError("BILLING_JWT_ISSUER must be set in prod (tokens' iss is checked)")
        return self


class OidcFields(EnvFields):
    """Single sign-on (api/auth.py): access tokens of an OIDC provider (Keycloak), verified
    with the keys it publishes (JWKS: from the issuer's discovery document unless
    oidc_jwks_url is set), issuer and audience checked. Keys are cached and fetched again for
    an unknown ``kid`` (rotation without a restart), at most once per oidc_jwks_min_refresh_s.
    Required in prod, where the HS256 tokens of the local stack are refused (all but the
    console's own sessions)."""

    oidc_issuer: str = ""  # e.g. https://sso.example/realms/cinema; empty: SSO off
    oidc_jwks_url: str = ""
    oidc_audience: str = "cinema-billing"
    oidc_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    # The provider's realm role that means "admin" here (Keycloak realm_access.roles).
    oidc_admin_role: str = "billing-admin"
    oidc_jwks_min_refresh_s: float = Field(default=30.0, ge=0)
    oidc_jwks_max_age_s: float = Field(default=3600.0, gt=0)
    oidc_timeout_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _refuse_weak_oidc(self) -> OidcFields:
        weak = [a for a in self.oidc_algorithms if not a.startswith(("RS", "ES", "PS"))]
        if weak or not self.oidc_algorithms:
            raise ValueError("BILLING_OIDC_ALGORITHMS: asymmetric algorithms only (RS/ES/PS)")
        if self.env != "prod":
            return self
        if not self.oidc_issuer.startswith("https://"):
            raise ValueError("BILLING_OIDC_ISSUER must be an https:// issuer in prod (SSO)")
        if self.oidc_jwks_url and not self.oidc_jwks_url.startswith("https://"):
            raise ValueError("BILLING_OIDC_JWKS_URL must be https:// in prod")
        return self


class WebhookFields(EnvFields):
    """Where provider notifications may come from (the API's webhook route)."""

    webhook_allowed_ips: list[str] = Field(default_factory=lambda: list(YOOKASSA_WEBHOOK_IPS))

    @model_validator(mode="before")
    @classmethod
    def _loopback_outside_prod(cls, data: object) -> object:
        # The emulator notifies from loopback: allowed by default in dev and test only.
        if isinstance(data, dict) and _env_of(data) != "prod" and "webhook_allowed_ips" not in data:
            return {**data, "webhook_allowed_ips": [*YOOKASSA_WEBHOOK_IPS, *LOOPBACK_WEBHOOK_IPS]}
        return data

    @model_validator(mode="after")
    def _refuse_loopback_in_prod(self) -> WebhookFields:
        if self.env != "prod":
            return self
        for cidr in self.webhook_allowed_ips:
            try:
                net = ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"BILLING_WEBHOOK_ALLOWED_IPS: {cidr!r} is no network") from exc
            if net.is_loopback or net.is_unspecified or net.prefixlen == 0:
                raise ValueError(
                    f"BILLING_WEBHOOK_ALLOWED_IPS must not hold {cidr} in prod "
                    "(loopback or any address: anything on the host could notify)"
                )
        return self


class HistoryTokenFields(EnvFields):
    """The shared credential of the history worker's HTTP pages (/analytics/*, /recon/batch/):
    the history worker requires it as a bearer token when set, its callers send it. Required
    in prod; outside prod the pages are open but bind to loopback by default."""

    history_token: SecretStr | None = None

    def history_headers(self) -> dict[str, str]:
        """What a caller of the history worker's pages sends (nothing without a token)."""
        if self.history_token is None:
            return {}
        return {"Authorization": f"Bearer {self.history_token.get_secret_value()}"}

    def history_authorized(self, authorization: str | None) -> bool:
        """The history worker's check of a request's Authorization header (constant time)."""
        if self.history_token is None:
            return True
        sent = (authorization or "").removeprefix("Bearer ").encode()
        return hmac.compare_digest(sent, self.history_token.get_secret_value().encode())

    @model_validator(mode="after")
    def _refuse_open_history_in_prod(self) -> HistoryTokenFields:
        if self.env == "prod":
            _refuse_weak("BILLING_HISTORY_TOKEN", self.history_token, min_len=32)
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


class ReconZoneFields(_Prefixed):
    """The zone a reconciliation day is in (nightly runs, the CLI, the API's gauge of days
    without a complete run)."""

    recon_timezone: str = "Europe/Moscow"


class ReconWindowFields(ReconZoneFields, ReconLagFields):
    """A run's days (in recon_timezone) and how long an in-flight item may stay so (pending /
    held for capture) before it counts as missing (nightly runs, the CLI)."""

    recon_pending_sla_s: float = Field(default=2 * 3600.0, gt=0)
    recon_hold_sla_s: float = Field(default=7 * 86400.0, gt=0)


class RetentionFields(_Prefixed):
    """PostgreSQL retention, applied by ``billing maintain`` on one leader
    (billing/maintenance.py): idempotency keys are kept at least 24 h (clients retry within
    it), closed outbox rows this long, one round every maintenance_interval_s."""

    idempotency_key_ttl_s: float = Field(default=7 * 86400.0, ge=86400.0)
    outbox_closed_retention_s: float = Field(default=30 * 86400.0, ge=0)
    maintenance_interval_s: float = Field(default=3600.0, gt=0)
    # subscription_events months older than this are detached (kept as tables); 0: never.
    events_retention_months: int = Field(default=0, ge=0)


class KeycloakAdminFields(EnvFields):
    """Keycloak's admin REST API as the entitlements bridge uses it: the realm whose users get
    keycloak_subscriber_role, and its credentials: a confidential client with a service
    account (client credentials; it needs realm-management's manage-users) or, outside prod
    only, an admin user (password grant on admin-cli) in keycloak_admin_realm."""

    keycloak_url: str = "http://127.0.0.1:8180"
    keycloak_realm: str = "cinema"
    keycloak_subscriber_role: str = "subscriber"
    keycloak_admin_realm: str = ""  # where the credentials live; empty: keycloak_realm
    keycloak_client_id: str = "billing-entitlements"
    keycloak_client_secret: SecretStr | None = None
    keycloak_admin_user: str = ""
    keycloak_admin_password: SecretStr | None = None
    keycloak_timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _refuse_weak_keycloak_in_prod(self) -> KeycloakAdminFields:
        if self.env != "prod":
            return self
        if not self.keycloak_url.startswith("https://"):
            raise ValueError("BILLING_KEYCLOAK_URL must be https:// in prod")
        if self.keycloak_admin_user:
            raise ValueError(
                "BILLING_KEYCLOAK_ADMIN_USER is for dev only: use a service-account client in prod"
            )
        _refuse_weak("BILLING_KEYCLOAK_CLIENT_SECRET", self.keycloak_client_secret, min_len=16)
        return self


class ReceiptFields(_Prefixed):
    """54-FZ receipts (issue 16): the shop is registered for fiscalisation at YooKassa. On:
    every payment and refund carries a ``receipt`` (the API refuses a payment with no contact
    known, 422 ``receipt_contact_required``; the gateway never sends one without); the local
    emulator then refuses a payment or refund without a valid receipt, as YooKassa does.
    Codes as YooKassa numbers them; tax_system_code 0: not sent."""

    receipts_enabled: bool = False
    receipt_tax_system_code: int = Field(default=0, ge=0, le=6)
    receipt_vat_code: int = Field(default=1, ge=1, le=10)

    def receipt_policy(self) -> ReceiptPolicy:
        return ReceiptPolicy(
            enabled=self.receipts_enabled,
            tax_system_code=self.receipt_tax_system_code,
            vat_code=self.receipt_vat_code,
        )


# ------------------------------------------------------------------------------ processes
# Each lists its groups in the order they are defined above, so that Settings, which inherits
# them all, has a consistent method resolution order.
class ApiSettings(
    ProviderSettings,
    JwtFields,
    OidcFields,
    WebhookFields,
    HistoryTokenFields,
    ApiAddressFields,
    RenewLeadFields,
    ReconZoneFields,
    HistoryUrlFields,
    ClickHouseFields,
    ReceiptFields,
):
    """``python -m api``: HTTP, the outbox relay, webhooks, the console's login and analytics."""

    relay_interval_s: float = 1.0
    relay_delay_s: float = 5.0
    relay_max_backoff_s: float = 300.0
    # The republish wait adds the ledger's lag on billing.commands (api/relay.py): the
    # workers' consumer group (their BILLING_WORKER_ID), read every relay_lag_probe_s.
    relay_lag_group: str = "billing"
    relay_lag_probe_s: float = Field(default=5.0, gt=0)
    publish_timeout_s: float = 5.0
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

    # Capacity and overload (api/limits.py). api_workers processes (uvicorn workers) each hold
    # a pool of api_pool_size connections: size PostgreSQL's max_connections for the product.
    # Each process works on at most api_max_in_flight requests; api_max_waiting more wait at
    # most api_max_wait_s for a place, anything beyond is a 503 "overloaded" at once.
    api_workers: int = Field(default=1, ge=1, le=64)
    api_pool_size: int = Field(default=10, ge=1)
    api_pool_timeout_s: float = Field(default=5.0, gt=0)
    api_max_in_flight: int = Field(default=32, ge=1)
    api_max_waiting: int = Field(default=64, ge=0)
    api_max_wait_s: float = Field(default=0.5, ge=0)
    # Rate limits per process (429 "rate_limited"; 0 turns one off): writes per user, login
    # attempts per client address, notifications to the webhook endpoint. The client address
    # is the X-Forwarded-For hop appended by a proxy only when the peer is in api_trusted_proxies.
    rate_limit_writes_per_s: float = Field(default=10.0, ge=0)
    rate_limit_writes_burst: int = Field(default=50, ge=1)
    rate_limit_logins_per_min: float = Field(default=20.0, ge=0)
    rate_limit_logins_burst: int = Field(default=10, ge=1)
    rate_limit_webhooks_per_s: float = Field(default=500.0, ge=0)
    rate_limit_webhooks_burst: int = Field(default=1000, ge=1)
    api_trusted_proxies: list[str] = Field(default_factory=list)
    # A burst of notifications for one provider payment shares one re-read (and its answer,
    # when it is the state the notification announces) for this long.
    webhook_reread_window_s: float = Field(default=5.0, ge=0)


class WorkerSettings(
    ProviderSettings, RenewLeadFields, FaustFields, ReconWindowFields, ReceiptFields
):
    """``python -m streams worker``: ledger, gateway, projection, notifier, reconcile agents."""

    worker_web_port: int = 6066
    # The worker's web server (/metrics, /healthz, /readyz): loopback unless a scraper on
    # another host must reach it (compose: 0.0.0.0 on the internal network).
    worker_web_host: str = "127.0.0.1"
    # The ledger's state table: on disk (RocksDB, under state_dir/faust, with the changelog
    # offset it holds: a restart replays only what it missed) or "memory://" (rebuilt from
    # the changelog at every start; the test suite's default, tests/conftest.py).
    table_store: str = "rocksdb://"
    table_standby_replicas: int = Field(default=0, ge=0)  # warm copies on other workers
    table_recovery_buffer: int = Field(default=10_000, ge=1)  # changelog records per batch
    # Cold recovery reads the changelog in bulk (streams.ledger.restore); false: Faust's own path
    table_bulk_restore: bool = True
    table_block_cache_mb: int = Field(default=64, ge=1)  # RocksDB, per partition
    table_write_buffer_mb: int = Field(default=16, ge=1)  # RocksDB, per partition
    # How long the worker's producer waits to fill a batch: 0 sends a request per record, a
    # few ms makes them fewer and larger. Nothing waits on it but the commit (a flush).
    producer_linger_ms: float = Field(default=5.0, ge=0, le=100)
    # Renewals of one period end are spread over this much of the lead window, by an offset
    # fixed per subscription (streams.ledger.machine.renewal_at): a cohort does not fire in
    # one tick. 0: every renewal at exactly period end - lead.
    renew_spread_s: float = Field(default=12 * 3600.0, ge=0)
    broker_rebalance_timeout_s: float = 20.0
    gateway_concurrency: int = 16
    # YooKassa honours an Idempotence-Key 24 h: no create is sent for a request older than
    # this (measured from the request's first time); past it the gateway only reads.
    provider_key_safe_window_s: float = Field(default=20 * 3600.0, gt=0, lt=24 * 3600.0)
    # Where the Faust app's consumer group starts when it has no committed offset (a new
    # worker id, offsets expired, a failover). streams/app.py explains why not "earliest".
    worker_offset_reset: Literal["latest", "earliest"] = "latest"
    sweep_interval_s: float = 2.0
    sweep_max_per_tick: int = Field(default=2_000, ge=1)  # due subscriptions per sweeper tick
    # The sweeper sends nothing while the ledger's input is older than this (a peak drains
    # at the rate the ledger takes it, not by queueing more and re-sending it).
    sweep_max_lag_s: float = Field(default=10.0, gt=0)
    # A payment without an outcome is re-driven after this: longer than the provider's retry
    # budget (ProviderSettings.provider_retry_budget_s, 50 s by default), or the ledger
    # re-drives while the gateway still retries and a peak multiplies its calls (issue 13).
    payment_deadline_s: float = 60.0
    payment_redrive_max_backoff_s: float = 3600.0
    # Closed payments and refunds stay in the ledger's state this long (days) after their
    # period ends: refundable and reconcilable until then; older history is in the event
    # log, PostgreSQL and ClickHouse (streams/ledger/machine.py, Policy).
    ledger_closed_retention_days: float = Field(default=180.0, gt=0)
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

    @model_validator(mode="after")
    def _deadline_past_the_retry_budget(self) -> WorkerSettings:
        # The test suite shortens deadlines on purpose (re-drives in seconds); nothing else may.
        if self.env != "test" and self.payment_deadline_s <= self.provider_retry_budget_s:
            raise ValueError(
                f"BILLING_PAYMENT_DEADLINE_S ({self.payment_deadline_s:g}) must exceed the"
                f" provider's retry budget ({self.provider_retry_budget_s:g} s: attempts x"
                " timeout + waits), or the ledger re-drives payments the gateway still retries"
            )
        return self


class HistorySettings(
    ProviderSettings, HistoryTokenFields, FaustFields, ReconLagFields, ClickHouseFields
):
    """``python -m streams.history``: billing.events into ClickHouse, the analytics queries
    on its port, batch reconciliation runs (which read the provider's report)."""

    history_host: str = "127.0.0.1"  # bind address of the history worker's query port
    history_port: int = 6067
    history_batch: int = 10_000


class EmulatorSettings(ShopFields, LogFields, EmulatorAddressFields, ReceiptFields):
    """``python -m providers.emulator``: the shop it accepts and where it notifies."""

    public_base_url: str = "http://127.0.0.1:8000"
    emulator_webhook_url: str = ""
    # A file the emulator keeps its payments, refunds and keys in (the local stack sets
    # .state/emulator/objects.json), so a restarted emulator still knows them; empty: memory.
    emulator_state_path: Path | None = None

    @property
    def webhook_url(self) -> str:
        return self.emulator_webhook_url or f"{self.public_base_url}/api/v1/webhooks/yookassa"


class ConsoleSettings(ApiAddressFields):
    """``python -m dashboard`` (Streamlit): no secret; it acts only through the API."""

    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8501
    dashboard_api_url: str = ""  # the API as the console reaches it; empty: api_host:api_port
    dashboard_api_timeout_s: float = Field(default=15.0, gt=0)


class ReconcileSettings(ProviderSettings, HistoryTokenFields, ReconWindowFields, HistoryUrlFields):
    """``billing reconcile`` / ``python -m reconciler``: feeds a report, or asks the history
    worker for a batch run; waits at most recon_wait_timeout_s with --wait."""

    recon_wait_timeout_s: float = Field(default=900.0, gt=0)


class EntitlementsSettings(CommonSettings, KeycloakAdminFields):
    """``python -m streams.entitlements``: billing.entitlements → Keycloak realm roles."""

    entitlements_group: str = "billing-entitlements"
    # A new group replays what billing.entitlements still holds: the last message per user
    # wins, so a replay converges on the current roles.
    entitlements_offset_reset: Literal["latest", "earliest"] = "earliest"
    entitlements_web_host: str = "127.0.0.1"
    entitlements_web_port: int = 6068


class CliSettings(CommonSettings, JwtFields, RetentionFields):
    """``billing token | migrate | init-topics | maintain``."""


class Settings(
    ApiSettings,
    WorkerSettings,
    HistorySettings,
    EmulatorSettings,
    ConsoleSettings,
    ReconcileSettings,
    EntitlementsSettings,
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
    EntitlementsSettings,
    CliSettings,
)
