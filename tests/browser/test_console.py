"""An admin, in headless Chromium, logs in to the console, finds a user's subscription, refunds
its payment and sees the refund appear; the API (and so the ledger) agrees. Screenshots of
every step are saved as test artifacts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ADMIN_PASSWORD, ADMIN_USER
from tests.e2e.client import get, paid_user
from tests.e2e.harness import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

STEP_TIMEOUT_S = 30.0


class Page:
    """A few waits and clicks over Streamlit's DOM (it renders client-side and reruns the
    script on every interaction, so every step waits for what it expects to see)."""

    def __init__(self, driver: Any, artifacts: Path) -> None:
        from selenium.webdriver.common.by import By

        self.d = driver
        self.by = By
        self.artifacts = artifacts
        self.shots: list[Path] = []

    def text(self) -> str:
        body: str = self.d.find_element(self.by.TAG_NAME, "body").text
        return body

    def wait(
        self, predicate: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except Exception as exc:  # the DOM changes under us while Streamlit reruns
                last = exc
            time.sleep(0.25)
        raise AssertionError(
            f"timed out waiting for {what} ({last!r})\n--- page ---\n{self.text()}"
        )

    def wait_text(self, *needles: str, timeout: float = STEP_TIMEOUT_S) -> None:
        self.wait(lambda: all(n in self.text() for n in needles), f"text {needles}", timeout)

    def idle(self, quiet_s: float = 1.0) -> None:
        """Until Streamlit has finished running the script: its "running" status widget
        absent for ``quiet_s`` in a row (it shows up a moment after a run starts)."""
        quiet_since: list[float] = []

        def quiet() -> bool:
            busy = self.d.find_elements(self.by.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
            now = time.monotonic()
            if busy:
                quiet_since.clear()
                return False
            if not quiet_since:
                quiet_since.append(now)
            return now - quiet_since[0] >= quiet_s

        self.wait(quiet, "the script run to finish")

    def input(self, label: str) -> Any:
        return self.d.find_element(self.by.CSS_SELECTOR, f'input[aria-label="{label}"]')

    def type(self, label: str, value: str) -> None:
        self.wait(lambda: self.input(label).is_displayed(), f"input {label!r}")
        from selenium.webdriver.common.keys import Keys

        field = self.input(label)
        # React owns the value: clear() would not tell it; select everything and type over.
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        field.send_keys(value)

    def click(self, label: str) -> None:
        xpath = f"//button[normalize-space(.)={_xpath_literal(label)}]"
        self.wait(
            lambda: any(b.is_displayed() for b in self.d.find_elements(self.by.XPATH, xpath)),
            f"button {label!r}",
        )
        next(b for b in self.d.find_elements(self.by.XPATH, xpath) if b.is_displayed()).click()

    def nav(self, title: str) -> None:
        xpath = (
            "//a[@data-testid='stSidebarNavLink']"
            f"[.//span[normalize-space(.)={_xpath_literal(title)}]]"
        )
        self.wait(lambda: bool(self.d.find_elements(self.by.XPATH, xpath)), f"nav {title!r}")
        self.d.find_element(self.by.XPATH, xpath).click()

    def tab(self, prefix: str) -> None:
        xpath = f"//*[@role='tab'][starts-with(normalize-space(.), {_xpath_literal(prefix)})]"
        self.wait(lambda: bool(self.d.find_elements(self.by.XPATH, xpath)), f"tab {prefix!r}")
        self.d.find_element(self.by.XPATH, xpath).click()

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.d.save_screenshot(str(path))
        self.shots.append(path)
        return path


def _xpath_literal(s: str) -> str:
    if "'" not in s:
        return f"'{s}'"
    return "concat('" + "', \"'\", '".join(s.split("'")) + "')"


def test_log_in_find_refund_and_see_the_refund(
    driver: Any, browser_stack: Stack, console: str, artifacts: Path
) -> None:
    # ``driver`` first: without Chromium the test is skipped before a stack is started.
    stack = browser_stack
    user, pid = paid_user(stack, prefix="browser-")
    page = Page(driver, artifacts)
    try:
        driver.get(console)
        page.wait_text("Cinema billing · admin console", "Username")
        assert "Subscriptions" not in page.text()  # nothing else renders before a login
        page.shot("01-login")

        page.type("Username", ADMIN_USER)
        page.type("Password", "not-the-password")
        page.click("Log in")
        page.wait_text("Wrong username or password.")
        page.type("Password", ADMIN_PASSWORD)
        page.click("Log in")
        page.wait_text("Overview", "Commands not done", f"Signed in as {ADMIN_USER}")
        page.idle()
        page.shot("02-overview")

        page.nav("Subscriptions")
        page.type("User id", user)
        page.click("Search")
        page.wait_text(f"Subscription of {user}", "Payments (1)", "Refunds (0)")
        page.idle()
        page.shot("03-subscription")

        page.click("Refund, cancel, extend, grant… →")
        page.wait_text("Actions", "Reason (recorded in the audit trail)")
        page.type("Reason (recorded in the audit trail)", "browser test: full refund")
        page.shot("04-refund-form")
        page.click("Refund")
        page.wait_text("Refund (full) of payment", "succeeded", timeout=60)
        page.idle()
        refunded_banner = page.text()
        page.shot("05-refunded")

        page.nav("Subscriptions")
        page.wait_text(f"Subscription of {user}", "Refunds (1)")
        page.tab("Refunds (1)")
        page.idle()
        page.shot("06-refund-in-subscription")
        assert "Status\ncanceled" in page.text()  # a full refund of the period ends access

        page.nav("Overview")
        page.wait_text("Active subscribers by plan", "Revenue, last 30 days")
        page.idle()
        page.shot("07-overview-after")

        # Every other page renders against the running stack, without an exception.
        for i, (title, needles) in enumerate(
            [
                ("Analytics", ("MRR movements", "Revenue per plan", "Decline reasons")),
                ("Plans", ("Prices over time", "Schedule a price")),
                ("Reconciliation", ("Open discrepancies", "Runs", "Resolve an escalation")),
                ("Trials", ("Trials started", "Converted", "Conversion")),
            ],
            start=8,
        ):
            page.nav(title)
            page.wait_text(*needles, timeout=60)
            page.idle()
            page.shot(f"{i:02d}-{title.lower()}")
            errors = driver.find_elements(page.by.CSS_SELECTOR, '[data-testid="stException"]')
            assert not errors, f"{title}: {errors[0].text}"

        # The wallet of the user who paid, read from the real admin route.
        page.nav("Wallet")
        page.type("Subscription id or user id", user)
        page.click("Show")
        page.wait_text(f"Saved payment methods of {user}", "Saved methods", timeout=60)
        page.idle()
        page.shot("12-wallet")
        errors = driver.find_elements(page.by.CSS_SELECTOR, '[data-testid="stException"]')
        assert not errors, f"Wallet: {errors[0].text}"
        assert "Could not read" not in page.text()
    except Exception:
        page.shot("failure")
        (artifacts / "failure.html").write_text(driver.page_source)
        raise

    # The API (the ledger's read model) agrees: one succeeded full refund, by this admin,
    # the one the console said it made.
    refunds = get(stack, user, f"/api/v1/payments/{pid}/refunds").json()
    items = refunds["items"] if isinstance(refunds, dict) else refunds
    assert [(r["status"], r["amount"]["value"]) for r in items] == [("succeeded", "299.00")]
    assert f"refund {items[0]['refund_id']}: succeeded" in refunded_banner
    actors = stack.query("SELECT actor FROM refunds WHERE payment_id = %s", pid)
    assert actors == [(f"admin:{ADMIN_USER}",)]
    assert all(p.stat().st_size > 10_000 for p in page.shots), page.shots
