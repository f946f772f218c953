"""The OpenAPI document as the server behaves, and ``/docs`` without a CDN.

Routes declare the answers of their own code (``responses=`` in api/routes); what every route
can answer because of the layers around it is added here, once:

- 503 ``overloaded`` with ``Retry-After`` from admission control (api/middleware.py), on every
  operation but ``/healthz`` (probes are exempt);
- 503 ``auth_unavailable`` with ``Retry-After`` on every authenticated operation (one with a
  ``security`` requirement): the SSO provider's keys (OIDC JWKS) cannot be fetched, so a
  token that may be good can be neither accepted nor refused (api/auth.py);
- 413 ``payload_too_large`` from the body limit, on every operation that takes a body;
- 422 in the API's error shape (``ErrorOut``): FastAPI's default 422 describes its own
  ``{"detail": [...]}`` body, which this API never sends (api/errors.py);
- ``Retry-After`` (required) on every 429 and 503.

Swagger UI's script and stylesheet are the ``fastapi-offline`` wheel's copies (Swagger UI 5,
which reads OpenAPI 3.1), served from this process under ``/docs/assets``: an operator's
browser on a closed network needs nothing from the internet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse

from api.errors import ApiError, AuthUnavailable, NotFound
from schemas.http import ErrorOut, WebhookNotification

METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
NOT_ADMITTED = frozenset({"/healthz"})  # api.main.PROBES that are in the document
ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
DOCS_ASSETS = "/docs/assets"
# Referenced from the document without a route model: the error body (added below to every
# operation) and the webhook's body (declared by hand in api/routes/webhooks.py).
COMPONENTS = (ErrorOut, WebhookNotification)


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def _example(error: type[ApiError], summary: str) -> dict[str, Any]:
    """An example error body of ``error``: its code and message as the server sends them."""
    body = {"error": {"code": error.code, "message": error.message, "details": None}}
    return {error.code: {"summary": summary, "value": body}}


AUTH_UNAVAILABLE = _example(
    AuthUnavailable, "the sign-on provider's keys (OIDC JWKS) cannot be fetched: retry later"
)


def _auth_unavailable(response: dict[str, Any]) -> dict[str, Any]:
    """A 503 that also says ``auth_unavailable`` (description and an example), in the error
    body's schema; a copy, so no other operation's answer changes."""
    content = dict(response.get("content") or {"application/json": {"schema": ERROR_REF}})
    media = dict(content.get("application/json") or {"schema": ERROR_REF})
    media["examples"] = {**media.get("examples", {}), **AUTH_UNAVAILABLE}
    content["application/json"] = media
    description = str(response.get("description") or "Service Unavailable")
    return {
        **response,
        "description": f"{description}; or auth_unavailable: the sign-on provider's keys"
        " cannot be fetched",
        "content": content,
    }


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add the answers of the layers around the routes to every operation (see above)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in COMPONENTS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in schema.pop("$defs", {}).items():
            schemas.setdefault(name, nested)
        schemas.setdefault(model.__name__, schema)
    for path, item in document.get("paths", {}).items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            responses: dict[str, Any] = op.setdefault("responses", {})
            unprocessable = responses.get("422")
            if unprocessable is not None and "HTTPValidationError" in str(unprocessable):
                responses["422"] = _error("the request is invalid (validation_error)")
            if "requestBody" in op and "413" not in responses:
                responses["413"] = _error("the body is larger than the API accepts")
            if path not in NOT_ADMITTED and "503" not in responses:
                responses["503"] = _error("overloaded (admission control) or a dependency down")
            if op.get("security"):
                responses["503"] = _auth_unavailable(responses.get("503", {}))
            for status in ("429", "503"):
                if status in responses:
                    responses[status].setdefault("headers", {}).update(RETRY_AFTER)
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused not in str(document.get("paths", {})):
            schemas.pop(unused, None)
    return document


def install(app: FastAPI) -> None:
    """The completed document at ``/openapi.json``, and ``/docs`` and ``/redoc`` served
    with their assets from here (``FastAPI(docs_url=None, redoc_url=None)``)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    static = _static_dir()

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    assets = {
        "swagger-ui-bundle.js": "text/javascript",
        "swagger-ui.css": "text/css",
        "redoc.standalone.js": "text/javascript",
        "favicon.png": "image/png",
    }

    @app.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        media = assets.get(name)
        if media is None:
            raise NotFound("no such documentation asset")
        return FileResponse(
            static / name, media_type=media, headers={"Cache-Control": "public, max-age=86400"}
        )


def _static_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"
