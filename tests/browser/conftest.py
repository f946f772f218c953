"""The admin console in a real browser: the whole stack (tests/e2e/harness.py), the console as
a process against its API, headless Chromium driven by Selenium. Screenshots are kept under
``artifacts/browser/`` (or ``$BILLING_ARTIFACTS_DIR/browser``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from billing.kafka_local import free_port
from billing.passwords import hash_password
from billing.processes import ManagedProcess, http_ok
from tests.e2e.harness import Stack
from tests.fixtures.postgres import FreshDatabase

ROOT = Path(__file__).resolve().parents[2]
ADMIN_USER = "ops-console"
ADMIN_PASSWORD = "browser-test-password"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = ("chromedriver",)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real (headless) browser")


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def artifacts() -> Path:
    base = Path(os.environ.get("BILLING_ARTIFACTS_DIR", ROOT / "artifacts"))
    out = base / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser_stack(
    tmp_path_factory: pytest.TempPathFactory, fresh_database: FreshDatabase
) -> Iterator[Stack]:
    """The stack, its history worker included, with a console account on its API."""
    extra = {
        "BILLING_DASHBOARD_ADMIN_USER": ADMIN_USER,
        "BILLING_DASHBOARD_ADMIN_PASSWORD_HASH": hash_password(ADMIN_PASSWORD),
    }
    stack = Stack(
        tmp_path_factory.mktemp("stack"),
        fresh_database("browser"),
        extra_env=extra,
        history=True,  # the analytics behind the overview (ClickHouse, embedded)
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def console(browser_stack: Stack) -> Iterator[str]:
    """``python -m dashboard`` against the stack's API, on a free port."""
    port = free_port()
    env = dict(
        browser_stack.env,
        BILLING_DASHBOARD_API_URL=browser_stack.api_url,
        BILLING_DASHBOARD_HOST="127.0.0.1",
        BILLING_DASHBOARD_PORT=str(port),
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
    )
    proc = ManagedProcess.python(
        "console", ["dashboard"], log_path=browser_stack.root / "logs" / "console.log", env=env
    )
    proc.cwd = ROOT
    url = f"http://127.0.0.1:{port}"
    proc.start()
    try:
        proc.wait_ready(http_ok(f"{url}/_stcore/health"), timeout=60)
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    chromium, chromedriver = _which(CHROMIUM), _which(CHROMEDRIVER)
    if chromium is None or chromedriver is None:
        pytest.skip(
            "headless Chromium is not installed here (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,1200",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()
