"""The HTTP face of the emulator: YooKassa API v3 under ``/v3``, a checkout page for humans
under ``/checkout``, and the control API for tests under ``/__emulator`` (loopback only).

Where the official SDK is picky (YOOKASSA-API.md §8) this follows it: success is exactly 200,
absent fields are omitted, errors carry ``{"type":"error","id","code",...}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hmac
import html
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from providers.emulator.faults import Fault, FaultBook
from providers.emulator.notifier import Notifier
from providers.emulator.store import JSON, ApiFailure, EmulatorConfig, Store, iso

log = logging.getLogger(__name__)

JSON_CT = "application/json;charset=UTF-8"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
TICK_MAX_S = 0.05
SAVE_EVERY_S = 0.2  # with a state file: the longest a change waits to be written


class Emulator:
    """State, faults and notifier of one emulator instance (shared by app and runner).

    With ``state_path`` the store is read from that file at start and written back when it
    changed (at most every SAVE_EVERY_S, and on shutdown), so a restart keeps the objects."""

    def __init__(self, config: EmulatorConfig, state_path: Path | None = None) -> None:
        self.initial = copy.deepcopy(config)
        self.config = config
        self.faults = FaultBook(config.seed)
        self.notifier = Notifier(config, self.faults)
        self.store = Store(config)
        self.store.notify = self.notifier.submit
        # Set on shutdown so that hung (fault-injected) requests end instead of blocking it.
        self.stopping = threading.Event()
        self.state_path = state_path
        if state_path is not None and state_path.is_file():
            self.store.restore(state_path.read_bytes())
            log.info("emulator: %d payments restored from %s", len(self.store.payments), state_path)
        self._saved_changes = self.store.changes

    def save_if_changed(self) -> None:
        if self.state_path is None or self.store.changes == self._saved_changes:
            return
        changes = self.store.changes
        self.store.save(self.state_path)
        self._saved_changes = changes

    async def pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.stopping.is_set():
                return
            await asyncio.sleep(min(left, 0.1))

    def reset(self, seed: int | None = None) -> None:
        config = copy.deepcopy(self.initial)
        if seed is not None:
            config.seed = seed
        self.config = config
        self.faults.reset(config.seed)
        self.notifier.reset(config)
        self.store.reset(config)

    def configure(self, changes: JSON) -> None:
        candidate = replace(self.config)
        candidate.update(changes)
        # Mutate in place: store and notifier hold the same object.
        for key in changes:
            setattr(self.config, key, getattr(candidate, key))


def _error(status: int, code: str, description: str, parameter: str | None = None) -> Response:
    body: JSON = {
        "type": "error",
        "id": str(uuid.uuid4()),
        "code": code,
        "description": description,
    }
    if parameter is not None:
        body["parameter"] = parameter
    return JSONResponse(body, status_code=status, media_type=JSON_CT)


def _ok(body: JSON) -> Response:
    return JSONResponse(body, status_code=200, media_type=JSON_CT)


def _fault_response(fault: Fault) -> Response:
    if fault.kind == "202":
        body: JSON = {"type": "processing", "description": "Request accepted", "retry_after": 1800}
        return JSONResponse(body, status_code=202, media_type=JSON_CT)
    if fault.kind == "429":
        # The rule's delay_s is the wait asked for (seconds), as a shop over its limit is told.
        answer = _error(429, "too_many_requests", "Too many requests")
        answer.headers["Retry-After"] = f"{fault.delay_s:g}"
        return answer
    return _error(500, "internal_server_error", "Internal server error (injected)")


def _authorised(emu: Emulator, request: Request) -> bool:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return False
    return hmac.compare_digest(user.encode(), emu.config.shop_id.encode()) and hmac.compare_digest(
        password.encode(), emu.config.secret_key.encode()
    )


async def _json_body(request: Request) -> JSON:
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("application/json"):
        raise ApiFailure(415, "invalid_request", "Content-Type must be application/json")
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ApiFailure(400, "invalid_request", "the body is not JSON") from exc
    if not isinstance(data, dict):
        raise ApiFailure(400, "invalid_request", "the body must be a JSON object")
    return data


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def create_app(emu: Emulator) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await emu.notifier.start()
        ticker = asyncio.create_task(_tick_forever(emu), name="emulator-ticker")
        saver = asyncio.create_task(_save_forever(emu), name="emulator-saver")
        try:
            yield
        finally:
            for task in (ticker, saver):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            emu.save_if_changed()
            await emu.notifier.stop()

    app = FastAPI(title="YooKassa emulator", lifespan=lifespan, docs_url=None, redoc_url=None)

    async def api_call(
        request: Request, endpoint: str, work: Callable[[JSON], JSON], *, post: bool
    ) -> Response:
        """Auth, body, faults before and after the work, error mapping."""
        emu.store.count_request(endpoint)
        if not _authorised(emu, request):
            return _error(401, "invalid_credentials", "Basic authentication failed")
        try:
            body = await _json_body(request) if post else {}
        except ApiFailure as exc:
            return _error(exc.status, exc.code, exc.description, exc.parameter)
        fault = emu.faults.pick(endpoint, "before")
        if fault is not None:
            if fault.kind == "delay":
                await emu.pause(fault.delay_s)
            elif fault.kind == "timeout":
                await emu.pause(fault.delay_s)
                return _fault_response(fault)
            else:
                return _fault_response(fault)
        try:
            result = work(body)
        except ApiFailure as exc:
            return _error(exc.status, exc.code, exc.description, exc.parameter)
        fault = emu.faults.pick(endpoint, "after")
        if fault is not None:
            if fault.kind in ("delay", "timeout"):
                await emu.pause(fault.delay_s)
            else:
                return _fault_response(fault)
        return _ok(result)

    def key_of(request: Request) -> str | None:
        return request.headers.get("idempotence-key")

    # ------------------------------------------------------------------ YooKassa API v3
    @app.post("/v3/payments")
    async def create_payment(request: Request) -> Response:
        base = _base_url(request)
        key = key_of(request)
        return await api_call(
            request,
            "payments.create",
            lambda body: emu.store.create_payment(body, key, base)[0],
            post=True,
        )

    @app.get("/v3/payments")
    async def list_payments(request: Request) -> Response:
        query = dict(request.query_params)
        return await api_call(
            request,
            "payments.list",
            lambda _: emu.store.list_objects("payments", query),
            post=False,
        )

    @app.get("/v3/payments/{payment_id}")
    async def get_payment(request: Request, payment_id: str) -> Response:
        return await api_call(
            request, "payments.get", lambda _: emu.store.get_payment(payment_id), post=False
        )

    def settle_route(action: Literal["capture", "cancel"]) -> None:
        @app.post(f"/v3/payments/{{payment_id}}/{action}", name=f"{action}_payment")
        async def settle_payment(request: Request, payment_id: str) -> Response:
            key = key_of(request)
            return await api_call(
                request,
                f"payments.{action}",
                lambda body: emu.store.settle(payment_id, action, body, key),
                post=True,
            )

    settle_route("capture")
    settle_route("cancel")

    @app.post("/v3/refunds")
    async def create_refund(request: Request) -> Response:
        key = key_of(request)
        return await api_call(
            request, "refunds.create", lambda body: emu.store.create_refund(body, key)[0], post=True
        )

    @app.get("/v3/refunds")
    async def list_refunds(request: Request) -> Response:
        query = dict(request.query_params)
        return await api_call(
            request, "refunds.list", lambda _: emu.store.list_objects("refunds", query), post=False
        )

    @app.get("/v3/refunds/{refund_id}")
    async def get_refund(request: Request, refund_id: str) -> Response:
        return await api_call(
            request, "refunds.get", lambda _: emu.store.get_refund(refund_id), post=False
        )

    # ------------------------------------------------------------ checkout page (humans)
    @app.get("/checkout/{payment_id}", response_class=HTMLResponse)
    async def checkout_page(payment_id: str) -> Response:
        p = emu.store.payments.get(payment_id)
        if p is None:
            return HTMLResponse("<h1>Unknown payment</h1>", status_code=404)
        pid = html.escape(p.id)
        text = html.escape(f"{p.amount} — {p.description or ''}")
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Pay</title></head><body>"
            f"<h1>YooKassa emulator</h1><p>Payment {pid}: {text}</p>"
            f"<p>Status: {html.escape(p.status)}</p>"
            f"<form method='post' action='/checkout/{pid}'>"
            "<button name='action' value='succeed'>Pay</button> "
            "<button name='action' value='cancel'>Decline</button></form></body></html>"
        )
        return HTMLResponse(page)

    @app.post("/checkout/{payment_id}")
    async def checkout_submit(request: Request, payment_id: str) -> Response:
        form = parse_qs((await request.body()).decode())
        action = (form.get("action") or ["cancel"])[0]
        try:
            emu.store.confirm(payment_id, action == "succeed", "canceled_by_user")
        except ApiFailure as exc:
            return HTMLResponse(f"<p>{html.escape(exc.description)}</p>", status_code=exc.status)
        p = emu.store.payments[payment_id]
        return RedirectResponse(p.return_url or "/", status_code=303)

    # ------------------------------------------------------------------- control API
    control = "/__emulator"

    def loopback(request: Request) -> Response | None:
        host = request.client.host if request.client else ""
        if host not in LOOPBACK:
            return _error(403, "forbidden", "the control API is loopback only")
        return None

    async def control_body(request: Request) -> JSON:
        raw = await request.body()
        data = json.loads(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    @app.get(f"{control}/health")
    async def health() -> Response:
        return _ok({"status": "ok"})

    @app.get(f"{control}/config")
    async def get_config(request: Request) -> Response:
        return loopback(request) or _ok(emu.config.public())

    @app.post(f"{control}/config")
    async def set_config(request: Request) -> Response:
        if (denied := loopback(request)) is not None:
            return denied
        try:
            emu.configure(await control_body(request))
        except (ValueError, TypeError) as exc:
            return _error(400, "invalid_request", str(exc))
        return _ok(emu.config.public())

    @app.post(f"{control}/reset")
    async def reset(request: Request) -> Response:
        if (denied := loopback(request)) is not None:
            return denied
        seed = (await control_body(request)).get("seed")
        emu.reset(None if seed is None else int(seed))
        return _ok(emu.config.public())

    @app.post(f"{control}/payments/{{payment_id}}/confirm")
    async def confirm(request: Request, payment_id: str) -> Response:
        if (denied := loopback(request)) is not None:
            return denied
        data = await control_body(request)
        result = data.get("result", "succeed")
        if result not in ("succeed", "cancel"):
            return _error(400, "invalid_request", "result must be succeed or cancel", "result")
        try:
            obj = emu.store.confirm(payment_id, result == "succeed", data.get("reason"))
        except ApiFailure as exc:
            return _error(exc.status, exc.code, exc.description, exc.parameter)
        return _ok(obj)

    @app.post(f"{control}/payment-methods/{{method_id}}/revoke")
    async def revoke(request: Request, method_id: str) -> Response:
        if (denied := loopback(request)) is not None:
            return denied
        try:
            emu.store.revoke_method(method_id)
        except ApiFailure as exc:
            return _error(exc.status, exc.code, exc.description, exc.parameter)
        return _ok({"revoked": method_id})

    @app.get(f"{control}/faults")
    async def list_faults(request: Request) -> Response:
        return loopback(request) or _ok({"faults": [f.public() for f in emu.faults.list()]})

    @app.post(f"{control}/faults")
    async def add_fault(request: Request) -> Response:
        if (denied := loopback(request)) is not None:
            return denied
        try:
            fault = emu.faults.add(await control_body(request))
        except (ValueError, TypeError) as exc:
            return _error(400, "invalid_request", str(exc))
        return _ok(fault.public())

    @app.delete(f"{control}/faults")
    async def clear_faults(request: Request) -> Response:
        if (denied := loopback(request)) is not None:
            return denied
        emu.faults.clear()
        return _ok({"faults": []})

    @app.delete(f"{control}/faults/{{fault_id}}")
    async def delete_fault(request: Request, fault_id: int) -> Response:
        if (denied := loopback(request)) is not None:
            return denied
        if not emu.faults.remove(fault_id):
            return _error(404, "not_found", "no such fault")
        return _ok({"deleted": fault_id})

    @app.get(f"{control}/stats")
    async def stats(request: Request) -> Response:
        return loopback(request) or _ok(emu.store.stats_json())

    @app.get(f"{control}/objects")
    async def objects(request: Request) -> Response:
        return loopback(request) or _ok(emu.store.snapshot())

    @app.get(f"{control}/notifications")
    async def notifications(request: Request) -> Response:
        if (denied := loopback(request)) is not None:
            return denied
        return _ok({"deliveries": [asdict(d) for d in emu.notifier.log]})

    @app.post(f"{control}/clock")
    async def clock(request: Request) -> Response:
        if (denied := loopback(request)) is not None:
            return denied
        try:
            emu.store.clock.advance(float((await control_body(request)).get("advance_s", 0)))
        except (ValueError, TypeError) as exc:
            return _error(400, "invalid_request", str(exc))
        emu.store.changes += 1
        emu.store.tick()
        return _ok({"now": iso(emu.store.clock.now()), "offset_s": emu.store.clock.offset_s})

    return app


async def _tick_forever(emu: Emulator) -> None:
    """Timers (auto-confirm, confirmation timeout, hold expiry) fire without a request."""
    while True:
        try:
            emu.store.tick()
        except Exception:
            log.exception("emulator tick failed")
        wait = emu.store.next_timer_in()
        await asyncio.sleep(TICK_MAX_S if wait is None else min(max(wait, 0.005), TICK_MAX_S))


async def _save_forever(emu: Emulator) -> None:
    """Write the store to its file when it changed (no file: nothing to do)."""
    if emu.state_path is None:
        return
    while True:
        await asyncio.sleep(SAVE_EVERY_S)
        try:
            await asyncio.to_thread(emu.save_if_changed)
        except Exception:
            log.exception("emulator: saving %s failed", emu.state_path)
