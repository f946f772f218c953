"""Request body limit with the API's own error body.

Starlette's built-in limit (``FastAPI(max_body_size=...)``) sits outside the exception
handlers and answers a declared oversize body in plain text, so this one runs inside them: a
too-large ``Content-Length`` is refused before the body is read, and a streamed body is cut off
at the limit (the 413 then goes through the normal handlers).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BadRequest, PayloadTooLarge, error_response


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await error_response(BadRequest("invalid Content-Length"))(scope, receive, send)
                return
            if length > self.max_bytes:
                await error_response(PayloadTooLarge())(scope, receive, send)
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
