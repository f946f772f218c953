"""``python -m streams.entitlements``: the entitlements bridge (bridge.py) as a process.

A plain consumer in group ``entitlements_group`` (streams.consumer.run_consumer: offsets
committed after Keycloak has the roles), and a small web server on
``entitlements_web_host:entitlements_web_port`` with ``/metrics``, ``/healthz`` and
``/readyz`` (ready once Keycloak accepted our credentials and the role exists: before that no
change could be applied). Settings: EntitlementsSettings (BILLING_KEYCLOAK_*).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from billing import logs, metrics
from billing.config import EntitlementsSettings
from billing.kafka_client import client_kwargs, exit_on_topic_mismatch
from schemas import topics
from streams.consumer import Start, run_consumer
from streams.entitlements.bridge import KeycloakRoles, apply_batch

log = logging.getLogger("streams.entitlements")


def web_app(roles: KeycloakRoles) -> web.Application:
    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if roles.last_ok > 0:
            metrics.PROCESS_READY.set(1)
            return web.json_response({"status": "ready"})
        metrics.PROCESS_READY.set(0)
        body = {
            "error": {"code": "not_ready", "message": "Keycloak not reached yet", "details": {}}
        }
        return web.json_response(body, status=503)

    app = web.Application()
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def _until_keycloak(roles: KeycloakRoles) -> None:
    backoff = 0.5
    while True:
        try:
            await roles.ping()
            return
        except Exception as exc:  # down, or credentials/role wrong: say so and keep trying
            log.warning("Keycloak not usable yet (%r); retrying in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


async def run(settings: EntitlementsSettings) -> None:
    roles = KeycloakRoles(settings)
    runner = web.AppRunner(web_app(roles), access_log=None)  # probes every second
    await runner.setup()
    await web.TCPSite(
        runner, settings.entitlements_web_host, settings.entitlements_web_port
    ).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await _until_keycloak(roles)
        consumer = asyncio.create_task(
            run_consumer(
                "entitlements",
                bootstrap=client_kwargs(settings),
                topic=topics.ENTITLEMENTS,
                group=settings.entitlements_group,
                start=Start(settings.entitlements_offset_reset),
                handle=lambda records: apply_batch(roles, records),
            )
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({consumer, stopping}, return_when=asyncio.FIRST_COMPLETED)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer  # a crash of the loop surfaces here
        stopping.cancel()
    finally:
        await roles.close()
        await runner.cleanup()


def main() -> None:
    settings = EntitlementsSettings()
    logs.configure(settings, "entitlements")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per Keycloak call otherwise
    exit_on_topic_mismatch(settings, "the entitlements bridge")
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
