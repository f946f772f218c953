"""YooKassa notifications: verify, normalise, publish, nothing else.

YooKassa does not sign notifications, so a notification is only a hint: the source address
must be on the allowlist, and the payment is re-read from the provider API; only the re-read
object is trusted and published to billing.provider-events (keyed by subscription). YooKassa
redelivers for 24 h until it gets a 200, so anything we could not do (provider or broker down)
answers 503, and anything that will never work (not ours, unknown event) answers 200.

A burst of redeliveries must not become a burst of provider reads (issue 14). Per process,
:class:`ReReads` shares one read of an object among the notifications that arrive while it
runs or within ``webhook_reread_window_s`` after, as long as what it read is the state the
notification announces (or a final one): a notification of a newer state always reads again.
A notification for a state already published from here in that window, or already final in
our books (``payments``), is acknowledged without a read or a publish. The endpoint as a
whole is rate-limited (``rate_limit_webhooks_per_s``; 429, which YooKassa redelivers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from api.deps import NormaliserDep, PoolDep, ProviderDep, PublisherDep, SettingsDep
from api.errors import ServiceUnavailable, WebhookMalformed, WebhookSourceForbidden
from api.limits import limit_webhooks
from billing.clock import now_ms
from billing.config import ApiSettings
from providers.port import ProviderError, ProviderNotFound, ProviderPayment
from schemas.http import WebhookAck, WebhookNotification, error_responses
from schemas.messages import encode
from schemas.topics import PROVIDER_EVENTS

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def allowed_networks(settings: ApiSettings) -> list[IpNetwork]:
    """Parsed once at start-up: a bad CIDR in the settings fails the start, not a request."""
    return [
        ipaddress.ip_network(cidr.strip(), strict=False) for cidr in settings.webhook_allowed_ips
    ]


def source_ip(request: Request, settings: ApiSettings) -> IpAddress | None:
    """The peer address, or with a trusted proxy in front the last X-Forwarded-For hop (the
    one our proxy appended; earlier entries are whatever the client claimed)."""
    raw: str | None = request.client.host if request.client else None
    if settings.webhook_trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            raw = forwarded.split(",")[-1].strip()
    if not raw:
        return None
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def check_source(request: Request, settings: SettingsDep) -> None:
    networks: list[IpNetwork] = getattr(request.app.state, "webhook_networks", None) or (
        allowed_networks(settings)
    )
    ip = source_ip(request, settings)
    if ip is None or not any(ip.version == n.version and ip in n for n in networks):
        log.warning("webhook from a source not on the allowlist: %s", ip)
        raise WebhookSourceForbidden()


FINAL = frozenset({"succeeded", "canceled"})  # a YooKassa payment in these never changes again
BOOKS_TIMEOUT_S = 0.5  # the books check is an optimisation: never wait long for it
MAX_REMEMBERED = 10_000


def announced_status(event: str) -> str:
    """The payment status a ``payment.<status>`` notification announces."""
    return event.removeprefix("payment.")


@dataclass
class _Read:
    started: float
    task: asyncio.Task[ProviderPayment]
    # The publish of each status this read showed: shared like the read (one per burst).
    published: dict[str, asyncio.Task[None]] = field(default_factory=dict)


class ReReads:
    """Provider re-reads shared per object id for ``window_s`` (per process; see the module
    docstring). A read's answer serves a notification only if it shows the announced status
    or a final one; otherwise that notification reads again. A failed read is shared only
    by those that waited for it (each gets the same 503)."""

    def __init__(
        self,
        window_s: float,
        *,
        max_entries: int = MAX_REMEMBERED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self._reads: OrderedDict[str, _Read] = OrderedDict()
        self.started = 0  # reads actually sent to the provider

    def _recent(self, object_id: str) -> _Read | None:
        entry = self._reads.get(object_id)
        if entry is None or self._clock() - entry.started > self.window_s:
            return None
        return entry

    def already_published(self, object_id: str, status: str) -> bool:
        """A read of this window showed ``status`` and it was published from here."""
        entry = self._recent(object_id)
        task = entry.published.get(status) if entry is not None else None
        return task is not None and task.done() and not task.cancelled() and not task.exception()

    async def publish_once(
        self, object_id: str, status: str, publish: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``publish`` for this object's ``status`` once per read, the notifications of a
        burst waiting for the same one (a failed publish is tried again by the next)."""
        entry = self._reads.get(object_id)
        if entry is None:
            await publish()
            return
        task = entry.published.get(status)
        if task is None or (task.done() and (task.cancelled() or task.exception())):

            async def run() -> None:
                await publish()

            task = asyncio.get_running_loop().create_task(run())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            entry.published[status] = task
        await asyncio.shield(task)

    async def read(
        self, object_id: str, announced: str, fetch: Callable[[], Awaitable[ProviderPayment]]
    ) -> ProviderPayment:
        entry = self._recent(object_id)
        if entry is not None:
            payment = await asyncio.shield(entry.task)
            if payment.status == announced or payment.status in FINAL:
                return payment
        entry = self._start(object_id, fetch)
        return await asyncio.shield(entry.task)

    def _start(self, object_id: str, fetch: Callable[[], Awaitable[ProviderPayment]]) -> _Read:
        async def run() -> ProviderPayment:
            return await fetch()

        task = asyncio.get_running_loop().create_task(run())
        entry = _Read(self._clock(), task)
        self.started += 1
        self._reads[object_id] = entry
        self._reads.move_to_end(object_id)
        while len(self._reads) > self.max_entries:
            self._reads.popitem(last=False)

        def done(t: asyncio.Task[ProviderPayment]) -> None:
            failed = t.cancelled() or t.exception() is not None
            if failed and self._reads.get(object_id) is entry:  # never share a failure later
                del self._reads[object_id]

        task.add_done_callback(done)
        return entry


def get_rereads(request: Request) -> ReReads:
    rereads: ReReads | None = getattr(request.app.state, "rereads", None)
    if rereads is None:
        rereads = ReReads(request.app.state.settings.webhook_reread_window_s)
        request.app.state.rereads = rereads
    return rereads


async def final_in_books(pool: Any, provider_payment_id: str, status: str) -> bool:
    """Our books already hold this payment in this final status (nothing new to learn). Best
    effort: a slow or down database only means the provider is asked."""
    if status not in FINAL:
        return False
    try:
        async with asyncio.timeout(BOOKS_TIMEOUT_S), pool.connection() as conn:
            cur = await conn.execute(
                "SELECT status FROM payments WHERE provider_payment_id = %s",
                (provider_payment_id,),
            )
            row = await cur.fetchone()
    except Exception as exc:
        log.info("webhook: books check skipped (%r)", exc)
        return False
    return row is not None and row[0] == status


def _ignored(reason: str, **context: Any) -> WebhookAck:
    log.info("webhook ignored (%s) %s", reason, context)
    return WebhookAck(status="ignored", reason=reason)


async def _read_notification(request: Request) -> WebhookNotification:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested too deep too
        raise WebhookMalformed("the body is not JSON") from exc
    try:
        return WebhookNotification.model_validate(data)
    except ValidationError as exc:
        details = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        raise WebhookMalformed(details=details) from exc


@router.post(
    "/yookassa",
    response_model=WebhookAck,
    dependencies=[Depends(check_source), Depends(limit_webhooks)],
    responses=error_responses(400, 403, 413, 429, 503),
    # The body is read and parsed here (a RecursionError or a bad body must be a 400, not
    # FastAPI's parser's): declared by hand.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/WebhookNotification"}}
            },
        }
    },
)
async def yookassa(
    request: Request,
    settings: SettingsDep,
    provider: ProviderDep,
    normalise: NormaliserDep,
    publisher: PublisherDep,
    pool: PoolDep,
) -> WebhookAck:
    """Receive a YooKassa notification. The payment is re-read from YooKassa and only that
    copy is published; 200 acknowledges, 503 asks YooKassa to deliver it again."""
    note = await _read_notification(request)
    if not note.event.startswith("payment."):
        return _ignored("event not handled", event=note.event, object_id=note.object.id)

    object_id, announced = note.object.id, announced_status(note.event)
    rereads = get_rereads(request)
    if rereads.already_published(object_id, announced):
        return WebhookAck(status="accepted", reason="already recorded")
    if await final_in_books(pool, object_id, announced):
        return WebhookAck(status="accepted", reason="already final")

    async def fetch() -> ProviderPayment:
        async with asyncio.timeout(settings.provider_timeout_s):
            return await provider.get_payment(object_id)

    try:
        payment = await rereads.read(object_id, announced, fetch)
    except ProviderNotFound:
        return _ignored("payment unknown to the provider", object_id=note.object.id)
    except (ProviderError, TimeoutError) as exc:
        log.warning("webhook: re-reading payment %s failed: %r", note.object.id, exc)
        raise ServiceUnavailable(
            "the provider could not be asked; deliver again later", code="provider_unavailable"
        ) from exc

    subscription_id = payment.subscription_id
    if not payment.payment_id or not subscription_id:
        return _ignored("payment carries no billing metadata", object_id=note.object.id)
    try:
        uuid.UUID(subscription_id)
        uuid.UUID(payment.payment_id)
    except ValueError:
        return _ignored("payment metadata is not ours", object_id=note.object.id)

    try:
        observed = normalise(payment, source="webhook", observed_at=now_ms())
    except Exception:
        # Retrying cannot fix it; reconciliation will classify this payment. Logged loudly.
        log.exception("webhook: could not normalise payment %s", note.object.id)
        return _ignored("payment could not be normalised", object_id=note.object.id)

    async def publish() -> None:
        await asyncio.wait_for(
            publisher.publish(PROVIDER_EVENTS, observed.subscription_id.encode(), encode(observed)),
            settings.publish_timeout_s,
        )

    try:
        await rereads.publish_once(object_id, payment.status, publish)
    except Exception as exc:
        log.warning("webhook: publishing payment %s failed: %r", note.object.id, exc)
        raise ServiceUnavailable(
            "the event could not be recorded; deliver again later", code="publish_failed"
        ) from exc
    log.info("webhook %s: payment %s is %s", note.event, observed.payment_id, observed.status)
    return WebhookAck(status="accepted")
