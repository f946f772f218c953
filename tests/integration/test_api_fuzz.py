"""schemathesis fuzzes the live API from its own OpenAPI document (issue 14): every operation,
with a user's token and then an admin's, every check schemathesis has, bounded in time. It
must find no server error and no answer the document does not describe.

The API runs under uvicorn on a loopback port (``serving_api``: real PostgreSQL, this
module's own database; the in-memory broker and provider of the API tests, so the webhook's
re-reads answer "unknown payment"). schemathesis runs as its CLI, in a subprocess, so a
failure prints its own report (with a curl line to reproduce each case).

Bounded: ``FUZZ_SECONDS`` per token (``BILLING_FUZZ_SECONDS`` overrides it; two runs, so
about twice that in all). The admin run archives plans (and makes its own): the catalogue is
put back on sale after it, through the unarchive endpoint.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from billing.passwords import hash_password
from tests.integration.api_support import LiveApi, serving_api

pytestmark = pytest.mark.integration

FUZZ_SECONDS = int(os.environ.get("BILLING_FUZZ_SECONDS", "60"))
SEED_PLANS = ("monthly", "quarterly", "yearly")
ROOT = Path(__file__).resolve().parents[2]

# Every check schemathesis has, with its defaults; none is switched off. The answers to valid
# data that no JSON Schema can foresee (a cursor never issued, an empty date range, a plan
# off sale, ...) are let through by error code only, each with its reason, in
# tests/integration/fuzz_hooks.py. The token is the document's bearer scheme, so the fuzzer
# also tries every operation without it.
CONFIG = """
[auth.openapi.HTTPBearer]
bearer = "${FUZZ_TOKEN}"
"""


def fake_history(request: httpx.Request) -> httpx.Response:
    """The history worker's query pages, empty: the API's analytics routes answer from it
    (api/routes/analytics.py), so they are fuzzed down to their answer's schema."""
    name = request.url.path.strip("/").split("/")[-1]
    active = {"at_ms": 0, "total": 0, "by_plan": {}}
    if name == "active_subscribers":
        return httpx.Response(200, json=active)
    if name == "overview":
        empty = ("revenue", "success", "declines", "mrr", "refund_rate", "dunning")
        return httpx.Response(200, json={"active": active} | {k: [] for k in empty})
    return httpx.Response(200, json=[])


@pytest.fixture(scope="module")
def live(module_pg_dsn: str) -> Iterator[LiveApi]:
    with serving_api(
        module_pg_dsn,
        # The fuzzer writes far faster than a person: the per-user write limit would answer
        # nearly everything 429 and hide the code behind it (429 itself stays declared).
        rate_limit_writes_per_s=0.0,
        history_url="http://history.fuzz",
        # The console login, configured (a cheap scrypt: the fuzzer tries it often).
        dashboard_admin_password_hash=SecretStr(hash_password(secrets.token_urlsafe(), n=16)),
    ) as api:
        api.app.state.analytics_transport = httpx.MockTransport(fake_history)
        yield api


def schemathesis(
    live: LiveApi, token: str, tmp: Path, name: str, *filters: str
) -> subprocess.CompletedProcess[str]:
    config = tmp / "schemathesis.toml"
    config.write_text(CONFIG)
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe),
        "--config-file",
        str(config),
        "run",
        f"{live.url}/openapi.json",
        "--checks",
        "all",
        "--max-time",
        str(FUZZ_SECONDS),
        # One worker: with two, hypothesis's lambda descriptions (ast.parse) sometimes fail
        # with "AST constructor recursion depth mismatch" (a CPython 3.11 issue with threads).
        "--workers",
        "1",
        "--seed",
        os.environ.get("BILLING_FUZZ_SEED", "14"),
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp / name),
        *filters,
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.integration.fuzz_hooks",
        "FUZZ_TOKEN": token,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        cmd,
        env=env,
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS * 3 + 60,
        check=False,
        cwd=tmp,  # its own files (a .schemathesis folder) stay out of the work tree
    )


def put_plans_back_on_sale(live: LiveApi) -> None:
    headers = {"Authorization": f"Bearer {live.token('fuzz-cleanup', admin=True)}"}
    with httpx.Client(base_url=live.url, timeout=10) as client:
        for plan in SEED_PLANS:
            resp = client.post(
                f"/api/v1/admin/plans/{plan}/unarchive",
                json={"reason": "fuzzing archived it"},
                headers={**headers, "Idempotency-Key": f"fuzz-unarchive-{plan}-{os.getpid()}"},
            )
            assert resp.status_code == 200, resp.text
        on_sale = {p["plan_id"] for p in client.get("/api/v1/plans").json()}
    assert set(SEED_PLANS) <= on_sale


def test_fuzz_as_a_user(live: LiveApi, tmp_path: Path) -> None:
    run = schemathesis(
        live,
        live.token("fuzz-user"),
        tmp_path,
        "user",
        "--exclude-path-regex",
        "^/api/v1/admin/(?!session)",
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]


def test_fuzz_as_an_admin(live: LiveApi, tmp_path: Path) -> None:
    try:
        run = schemathesis(
            live,
            live.token("fuzz-admin", admin=True),
            tmp_path,
            "admin",
            "--include-path-regex",
            "^/api/v1/admin/(?!session)",
        )
    finally:
        put_plans_back_on_sale(live)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
