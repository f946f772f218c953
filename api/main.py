"""The FastAPI application: ``create_app(settings)`` wires routers, the error handlers and a
lifespan that opens the PostgreSQL pool, the Kafka producer and the outbox relay.

Tests pass fakes (``publisher=``, ``provider=``, ``normalise=``) and ``relay=False`` to
drive :func:`api.relay.relay_once` themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from psycopg_pool import AsyncConnectionPool

from api import errors, openapi
from api.deps import Normaliser
from api.gauges import run_gauges
from api.limits import Admission, Limits
from api.middleware import AdmissionControl, BodyLimit
from api.observability import RequestMetrics
from api.publisher import KafkaPublisher, OutboxSender, Publisher
from api.relay import Background, run_relay
from api.routes import (
    admin,
    analytics,
    health,
    metrics,
    payment_methods,
    payments,
    plans,
    profile,
    promo,
    reconciliation,
    refunds,
    session,
    subscriptions,
    webhooks,
)
from billing.config import ApiSettings
from providers.port import PaymentProvider

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024  # YooKassa notifications are a few KiB; our own bodies far less
SHUTDOWN_DRAIN_S = 5.0
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})  # never refused by admission control


def _operation_id(route: APIRoute) -> str:
    tag = str(route.tags[0]) if route.tags else "api"
    return f"{tag}-{route.name}"


def _dsn(settings: ApiSettings) -> str:
    if settings.postgres_dsn is None:
        raise RuntimeError("BILLING_POSTGRES_DSN is not set (the local stack sets it)")
    return settings.postgres_dsn.get_secret_value()


def _default_provider(settings: ApiSettings) -> PaymentProvider | None:
    try:
        from providers.yookassa_adapter import YooKassaProvider
    except ImportError:
        log.error("providers.yookassa_adapter is missing: webhooks will answer 503")
        return None
    provider: PaymentProvider = YooKassaProvider(settings)
    return provider


def create_app(
    settings: ApiSettings,
    *,
    publisher: Publisher | None = None,
    provider: PaymentProvider | None = None,
    normalise: Normaliser | None = None,
    relay: bool = True,
    pool_timeout_s: float | None = None,
) -> FastAPI:
    dsn = _dsn(settings)
    networks = webhooks.allowed_networks(settings)
    if len(settings.jwt_secret.get_secret_value().encode()) < 32:
        log.warning("BILLING_JWT_SECRET is shorter than 32 bytes: fine for dev, not for prod")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=settings.api_pool_size,
            open=False,
            timeout=pool_timeout_s or settings.api_pool_timeout_s,
            kwargs={"autocommit": True},
            name="api",
        )
        # Not waiting: the API starts (and /readyz says so) while the database is down.
        await pool.open(wait=False)
        own_publisher = publisher is None
        pub: Publisher
        if publisher is None:
            kafka = KafkaPublisher(settings)
            await kafka.start()
            pub = kafka
        else:
            pub = publisher
        own_provider = provider is None
        prov = provider if provider is not None else _default_provider(settings)
        background = Background()
        app.state.pool = pool
        app.state.publisher = pub
        app.state.provider = prov
        app.state.background = background
        app.state.sender = OutboxSender(pool, pub, settings, background.spawn)
        stop = asyncio.Event()
        relay_task = (
            asyncio.create_task(run_relay(pool, pub, settings, stop), name="outbox-relay")
            if relay
            else None
        )
        app.state.broker_ok = None  # unknown until the gauges' first Kafka refresh
        gauges_task = (
            asyncio.create_task(
                run_gauges(pool, settings, stop, app_state=app.state), name="gauges"
            )
            if relay
            else None
        )
        try:
            yield
        finally:
            stop.set()
            if gauges_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(gauges_task, SHUTDOWN_DRAIN_S)
            if relay_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(relay_task, SHUTDOWN_DRAIN_S)
            await background.drain(SHUTDOWN_DRAIN_S)
            if own_publisher:
                await pub.close()
            if own_provider and prov is not None:
                with contextlib.suppress(Exception):
                    await prov.close()
            await pool.close()

    app = FastAPI(
        title="Cinema billing API",
        version="0.1.0",
        description=(
            "Subscriptions and payments. Errors are JSON "
            '`{"error": {"code", "message", "details"}}`; branch on `code`.'
        ),
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url=None,  # served by api.openapi, with Swagger UI's assets from this process
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.webhook_networks = networks
    app.state.normalise = normalise
    app.state.limits = Limits(settings)
    errors.install(app)
    openapi.install(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    admission = Admission(
        settings.api_max_in_flight, settings.api_max_waiting, settings.api_max_wait_s
    )
    app.state.admission = admission
    app.add_middleware(AdmissionControl, admission=admission, exempt=PROBES)  # outermost
    for module in (health, metrics, plans, payments, refunds, subscriptions, webhooks, admin):
        app.include_router(module.router)
    app.include_router(payment_methods.router)  # the wallet (issue 16)
    app.include_router(payment_methods.admin_router)
    app.include_router(profile.router)  # receipts' contact (issue 16)
    app.include_router(promo.router)  # promo codes (issue 16): the quote
    app.include_router(promo.admin_router)
    app.include_router(promo.analytics_router)
    for module in (session, analytics, reconciliation):  # the admin console's
        app.include_router(module.router)
    app.add_middleware(RequestMetrics)  # the outermost: counts every answer, refusals too
    return app
