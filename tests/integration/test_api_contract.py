"""The OpenAPI document says what the server does (issue 14), checked rule by rule here (the
fuzzer, tests/integration/test_api_fuzz.py, checks it wholesale): Idempotency-Key on every
write, the error answers of the layers around the routes, ``Allow`` on 405, the webhook body,
/docs without a CDN, and plans put back on sale."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import httpx
import pytest

from api.deps import IDEMPOTENCY_KEY_PATTERN
from billing.kafka_local import free_port
from schemas.http import ErrorOut
from tests.integration.api_support import Api, error_code, new_user, running_api

pytestmark = pytest.mark.integration

# Writes without an Idempotency-Key, on purpose: a login creates nothing (and storing its
# answer would store a credential); YooKassa sends no key (its notifications are re-read).
KEYLESS_WRITES = {("post", "/api/v1/admin/session"), ("post", "/api/v1/webhooks/yookassa")}


async def document(api: Api) -> dict[str, Any]:
    resp = await api.client.get("/openapi.json")
    assert resp.status_code == 200
    doc: dict[str, Any] = resp.json()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


async def test_every_write_requires_an_idempotency_key(api: Api) -> None:
    writes = 0
    for method, path, op in operations(await document(api)):
        if method not in {"post", "put", "patch"} or (method, path) in KEYLESS_WRITES:
            continue
        writes += 1
        [key] = [p for p in op.get("parameters", []) if p["name"] == "Idempotency-Key"]
        assert key["in"] == "header" and key["required"] is True, (method, path)
        assert key["schema"]["pattern"] == IDEMPOTENCY_KEY_PATTERN, (method, path)
        assert key["schema"]["maxLength"] == 255, (method, path)
    assert writes >= 15


async def test_every_operation_declares_the_answers_of_the_layers_around_it(api: Api) -> None:
    doc = await document(api)
    assert "HTTPValidationError" not in json.dumps(doc)  # FastAPI's 422 body: never sent
    for method, path, op in operations(doc):
        responses = op["responses"]
        if path != "/healthz":
            assert "503" in responses, (method, path)  # admission control
        if "requestBody" in op:
            assert "413" in responses, (method, path)  # the body limit
        for status in ("429", "503"):
            if status in responses:
                assert responses[status]["headers"]["Retry-After"]["required"], (method, path)
        if "422" in responses:
            schema = responses["422"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path)


async def test_authenticated_operations_document_auth_unavailable(api: Api) -> None:
    """Any route behind a token can answer 503 auth_unavailable (the SSO provider's keys
    cannot be fetched, api/auth.py): in the error body's schema, with Retry-After."""
    secured = 0
    for method, path, op in operations(await document(api)):
        if not op.get("security"):
            continue
        secured += 1
        answer = op["responses"]["503"]
        media = answer["content"]["application/json"]
        assert media["schema"] == {"$ref": "#/components/schemas/ErrorOut"}, (method, path)
        example = media["examples"]["auth_unavailable"]["value"]
        assert ErrorOut.model_validate(example).error.code == "auth_unavailable", (method, path)
        assert "auth_unavailable" in answer["description"], (method, path)
        assert answer["headers"]["Retry-After"]["required"], (method, path)
    assert secured >= 40


def _unverifiable_sso_token() -> str:
    """An RS256 token (only its header is read before the keys are needed)."""

    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return ".".join([part({"alg": "RS256", "typ": "JWT", "kid": "k1"}), part({"sub": "u"}), "c2ln"])


async def test_auth_unavailable_is_answered_as_documented(module_pg_dsn: str) -> None:
    """The JWKS endpoint does not answer: an SSO token gets the documented 503 (not a 401,
    the token may be good; not a 500), the second request too, inside the refetch interval
    (it was a 401 token_invalid: a user logged out because the provider was down)."""
    nobody = f"http://127.0.0.1:{free_port()}"
    async with running_api(
        module_pg_dsn,
        oidc_issuer=f"{nobody}/realms/cinema",
        oidc_jwks_url=f"{nobody}/realms/cinema/protocol/openid-connect/certs",
        oidc_timeout_s=0.5,
    ) as sso:
        headers = {"Authorization": f"Bearer {_unverifiable_sso_token()}"}
        doc = await document(sso)
        for path in ("/api/v1/subscriptions/me", "/api/v1/admin/plans"):
            resp = await sso.client.get(path, headers=headers)
            assert resp.status_code == 503, (path, resp.text)
            assert error_code(resp) == "auth_unavailable"
            ErrorOut.model_validate(resp.json())
            assert re.fullmatch(r"[0-9]+", resp.headers["retry-after"])
            documented = doc["paths"][path]["get"]["responses"]["503"]["content"]
            assert "auth_unavailable" in documented["application/json"]["examples"]


async def test_the_webhook_body_is_declared(api: Api) -> None:
    doc = await document(api)
    body = doc["paths"]["/api/v1/webhooks/yookassa"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert set(schema["required"]) == {"type", "event", "object"}


async def test_405_allows_every_method_of_the_path(api: Api) -> None:
    """GET and POST /admin/plans are two routes: Starlette's own Allow named only the first."""
    resp = await api.client.request("OPTIONS", "/api/v1/admin/plans", headers=api.auth("a"))
    assert resp.status_code == 405
    assert error_code(resp) == "method_not_allowed"
    assert set(resp.headers["allow"].split(", ")) == {"GET", "POST"}
    resp = await api.client.delete("/api/v1/payments", headers=api.auth("a"))
    assert set(resp.headers["allow"].split(", ")) == {"GET", "POST"}


async def test_idempotency_key_rules_match_the_document(api: Api) -> None:
    for key, status, code in [
        (None, 400, "idempotency_key_missing"),
        ("", 400, "idempotency_key_missing"),
        ("a\tb", 400, "idempotency_key_invalid"),
        ("k" * 256, 400, "idempotency_key_invalid"),
        ("k" * 255, 202, None),
    ]:
        headers = api.auth(new_user())
        if key is not None:
            headers["Idempotency-Key"] = key
        resp = await api.client.post(
            "/api/v1/payments",
            json={"plan_id": "monthly", "return_url": "https://cinema.example/r"},
            headers=headers,
        )
        assert resp.status_code == status, (key, resp.text)
        if code is not None:
            assert error_code(resp) == code
        assert key is None or (re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key) is not None) == (
            status == 202
        )


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"created_from": "2026-01-01T00:00:00Z"}, 200),
        ({"created_from": "2026-01-01T00:00:00+03:00"}, 200),
        ({"created_from": "-109"}, 422),  # pydantic alone read it as seconds since 1970
        ({"created_from": "2026-01-01 00:00:00Z"}, 422),
        ({"created_from": "2026-01-01T00:00Z"}, 422),
        ({"created_from": "2026-01-01T00:00:00"}, 422),  # no zone
        ({"created_from": "2026-02-01T00:00:00Z", "created_to": "2026-01-01T00:00:00Z"}, 422),
        ({"cursor": "AAAA"}, 400),  # well-formed, never issued
        ({"cursor": "a+b/"}, 422),  # not base64url
    ],
)
async def test_payment_list_filters(api: Api, params: dict[str, str], status: int) -> None:
    resp = await api.client.get("/api/v1/payments", params=params, headers=api.auth(new_user()))
    assert resp.status_code == status, resp.text


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"days": 2.0, "reason": "whole"}, True),  # JSON's 2.0 is the integer 2
        ({"days": 2.5, "reason": "half"}, False),
        ({"days": "2", "reason": "text"}, False),
        ({"days": True, "reason": "bool"}, False),
        ({"days": 2, "reason": " "}, False),  # nothing visible
        ({"days": 2, "reason": "a\u0000b"}, False),
        ({"days": 2, "reason": " spaced, kept as sent "}, True),
    ],
)
async def test_admin_bodies(api: Api, body: dict[str, Any], valid: bool) -> None:
    resp = await api.client.post(
        f"/api/v1/admin/subscriptions/{uuid.uuid4()}/extend",
        json=body,
        headers={**api.auth("contract-admin", admin=True), "Idempotency-Key": str(uuid.uuid4())},
    )
    # Valid: past validation, to the (missing) subscription.
    assert resp.status_code == (404 if valid else 422), resp.text


async def test_archived_plans_go_back_on_sale(api: Api) -> None:
    admin = api.auth("contract-admin", admin=True)
    plan_id = f"c-{uuid.uuid4().hex[:10]}"

    async def write(path: str, body: dict[str, Any]) -> httpx.Response:
        return await api.client.post(
            path, json=body, headers={**admin, "Idempotency-Key": str(uuid.uuid4())}
        )

    async def on_sale() -> set[str]:
        return {p["plan_id"] for p in (await api.client.get("/api/v1/plans")).json()}

    created = await write(
        "/api/v1/admin/plans",
        {
            "plan_id": plan_id,
            "name": "Contract",
            "price": {"value": "10.00", "currency": "RUB"},
            "period_months": 1,
            "reason": "test",
        },
    )
    assert created.status_code == 201, created.text
    archived = await write(f"/api/v1/admin/plans/{plan_id}/archive", {"reason": "off"})
    assert archived.json()["archived"] is True
    assert plan_id not in await on_sale()
    back = await write(f"/api/v1/admin/plans/{plan_id}/unarchive", {"reason": "back"})
    assert back.status_code == 200, back.text
    assert back.json()["archived"] is False
    assert plan_id in await on_sale()
    again = await write(f"/api/v1/admin/plans/{plan_id}/unarchive", {"reason": "twice"})
    assert again.status_code == 200 and again.json()["archived"] is False
    missing = await write("/api/v1/admin/plans/no-such-plan/unarchive", {"reason": "x"})
    assert missing.status_code == 404 and error_code(missing) == "plan_not_found"


async def test_docs_are_served_without_a_cdn(api: Api) -> None:
    """/docs and /redoc load only this API's own files: an operator's browser on a closed
    network needs nothing from outside."""
    for page in ("/docs", "/redoc"):
        resp = await api.client.get(page)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/html")
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", resp.text) + re.findall(
            r"""url: ?['"]([^'"]+)""", resp.text
        )
        assert urls, resp.text
        external = [u for u in urls if re.match(r"^(https?:)?//", u)]
        assert not external, external
        for url in urls:
            asset = await api.client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 100, url
    bundle = await api.client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert b"SwaggerUIBundle" in bundle.content
    assert (await api.client.get("/docs/assets/../../api/main.py")).status_code == 404
    assert (await api.client.get("/docs/assets/index.html")).status_code == 404


NOTE = {"type": "notification", "event": "payment.succeeded"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        # Wrong types where the notification has its fields: 400, never a 500.
        ({**NOTE, "object": {"id": 10**30}}, 400),
        ({**NOTE, "object": {"id": ["x"]}}, 400),
        ({**NOTE, "object": "x"}, 400),
        ({**NOTE, "event": None, "object": {"id": "x"}}, 400),
        ({**NOTE, "type": 1e308, "object": {"id": "x"}}, 400),
        # Huge numbers elsewhere are ignored like anything else beside event and object.id
        # (the payment is re-read; here the provider does not know it).
        ({**NOTE, "object": {"id": "x", "amount": {"value": 1e308}}}, 200),
        ({**NOTE, "object": {"id": "x", "n": -(10**300)}}, 200),
    ],
)
async def test_webhook_wrong_types_and_huge_numbers(
    api: Api, body: dict[str, Any], status: int
) -> None:
    resp = await api.client_from("127.0.0.1").post(
        "/api/v1/webhooks/yookassa", content=json.dumps(body)
    )
    assert resp.status_code == status, resp.text
    if status == 400:
        assert error_code(resp) == "webhook_malformed"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "notification", "object": {"id": "x", "n": 1' + b"0" * 5000 + b"}}",
        b'{"type": "notification", "event": "payment.x", "object": {"id": "x"}, "n": 1e99999}',
        b'{"a":' * 900 + b"1" + b"}" * 900,  # deep, but within the parser's limit
    ],
)
async def test_webhook_odd_json(api: Api, raw: bytes) -> None:
    resp = await api.client_from("127.0.0.1").post("/api/v1/webhooks/yookassa", content=raw)
    assert resp.status_code in (200, 400), resp.text
