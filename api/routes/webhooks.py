"""YooKassa notifications: verify, normalise, publish, nothing else.

YooKassa does not sign notifications, so a notification is only a hint: the source address
must be on the allowlist, and the payment is re-read from the provider API; only the re-read
object is trusted and published to billing.provider-events (keyed by subscription). YooKassa
redelivers for 24 h until it gets a 200, so anything we could not do (provider or broker down)
answers 503, and anything that will never work (not ours, unknown event) answers 200.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from api.deps import NormaliserDep, ProviderDep, PublisherDep, SettingsDep
from api.errors import ServiceUnavailable, WebhookMalformed, WebhookSourceForbidden
from billing.clock import now_ms
from billing.config import ApiSettings
from providers.port import ProviderError, ProviderNotFound
from schemas.http import WebhookAck, error_responses
from schemas.messages import encode
from schemas.topics import PROVIDER_EVENTS

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Object(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class _Notification(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["notification"]
    event: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    object: _Object


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


def _ignored(reason: str, **context: Any) -> WebhookAck:
    log.info("webhook ignored (%s) %s", reason, context)
    return WebhookAck(status="ignored", reason=reason)


async def _read_notification(request: Request) -> _Notification:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested too deep too
        raise WebhookMalformed("the body is not JSON") from exc
    try:
        return _Notification.model_validate(data)
    except ValidationError as exc:
        details = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        raise WebhookMalformed(details=details) from exc


@router.post(
    "/yookassa",
    response_model=WebhookAck,
    dependencies=[Depends(check_source)],
    responses=error_responses(400, 403, 413, 503),
)
async def yookassa(
    request: Request,
    settings: SettingsDep,
    provider: ProviderDep,
    normalise: NormaliserDep,
    publisher: PublisherDep,
) -> WebhookAck:
    """Receive a YooKassa notification. The payment is re-read from YooKassa and only that
    copy is published; 200 acknowledges, 503 asks YooKassa to deliver it again."""
    note = await _read_notification(request)
    if not note.event.startswith("payment."):
        return _ignored("event not handled", event=note.event, object_id=note.object.id)

    try:
        async with asyncio.timeout(settings.provider_timeout_s):
            payment = await provider.get_payment(note.object.id)
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

    try:
        await asyncio.wait_for(
            publisher.publish(PROVIDER_EVENTS, observed.subscription_id.encode(), encode(observed)),
            settings.publish_timeout_s,
        )
    except Exception as exc:
        log.warning("webhook: publishing payment %s failed: %r", note.object.id, exc)
        raise ServiceUnavailable(
            "the event could not be recorded; deliver again later", code="publish_failed"
        ) from exc
    log.info("webhook %s: payment %s is %s", note.event, observed.payment_id, observed.status)
    return WebhookAck(status="accepted")
