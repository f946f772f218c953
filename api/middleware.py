"""Request body limit with the API's own error body, and admission control.

Starlette's built-in limit (``FastAPI(max_body_size=...)``) sits outside the exception
handlers and answers a declared oversize body in plain text, so this one runs inside them: a
too-large ``Content-Length`` is refused before the body is read, and a streamed body is cut off
at the limit (the 413 then goes through the normal handlers).
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BadRequest, PayloadTooLarge, error_body, error_response
from api.limits import Admission, Overloaded


def _content_length(scope: Scope) -> str | None:
    """The Content-Length header, read straight from the raw headers (no Headers object)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return str(value.decode("latin-1"))
    return None


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await error_response(BadRequest("invalid Content-Length"))(scope, receive, send)
                return
            if length > self.max_bytes:
                await error_response(PayloadTooLarge())(scope, receive, send)
                return
            # The server frames the body by the declared length: it cannot grow past it, so
            # only a chunked body needs counting (a wrapper per request is not free).
            await self.app(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(status_code=413)
            return message

        await self.app(scope, limited, send)


class AdmissionControl:
    """The outermost layer: a request the process cannot start within ``max_wait_s`` is
    refused at once with 503 ``overloaded`` and ``Retry-After`` (api/limits.py), before any
    routing, validation or database work, so refusing costs a small part of serving.

    Probes (``exempt``) always pass: an overloaded process is alive, and restarting it would
    only lose capacity."""

    def __init__(self, app: ASGIApp, admission: Admission, exempt: frozenset[str]) -> None:
        self.app = app
        self.admission = admission
        self.exempt = exempt
        refusal = Overloaded()
        self._status = refusal.status_code
        self._body = json.dumps(
            error_body(refusal.code, refusal.message, refusal.details), separators=(",", ":")
        ).encode()
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in refusal.headers.items()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if not await self.admission.enter():
            await send(
                {"type": "http.response.start", "status": self._status, "headers": self._headers}
            )
            await send({"type": "http.response.body", "body": self._body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.leave()
