"""``billing demo``: a few months of realistic traffic played into the RUNNING local stack, so
every console page and chart has something a person can judge.

Everything goes through the real path: users pay through the API and confirm (or decline, or
abandon) at the emulator's checkout; the emulator loses some webhooks (its ``notifications
lost`` fault) and declines some renewals (``autopay_decline_rate``); the ledger's timer
renews, dunns and expires subscriptions as the stack's clock is moved forward; users ask for
refunds, turn auto-renew off, retry a declined payment, upgrade their plan; an admin extends a
subscription. At the end, differences are planted at the provider (a double charge, a charge
for a payment we hold as declined, a payment whose webhook was lost, a wrong amount) and
``billing reconcile`` finds them and repairs what can be repaired (the wrong amount waits for
an admin on the console's reconciliation page).

The clock: every process of the local stack reads ``BILLING_CLOCK_FILE`` (``billing.stack``
sets ``.state/clock``) and the emulator keeps its own offset; the demo moves both forward
together, from one due moment to the next, and waits for the stack to settle after each jump.
The clock never goes back, so after a demo the stack lives that many months ahead of the wall
clock (``make clean`` starts over). A second demo adds more months and new users.

A progress bar goes to stderr; stdout gets a short summary (bounded whatever the size).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from billing.config import Settings

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
RETURN_URL = "https://cinema.example/return"
MAX_STEP_MS = 10 * DAY_MS  # the longest clock jump
DECLINE_REASONS = ("insufficient_funds", "card_expired", "3d_secure_failed")


@dataclass(frozen=True)
class DemoPlan:
    users: int = 30
    months: int = 3
    seed: int = 0
    tag: str = ""  # user ids are demo-<tag>-NNN: a second demo makes new users


@dataclass(order=True)
class Action:
    at_ms: int
    kind: str = field(compare=False)
    users: list[str] = field(compare=False, default_factory=list)
    ref: str = field(compare=False, default="")  # the payment a retry is for


def plan_actions(plan: DemoPlan, start_ms: int) -> tuple[list[Action], dict[str, str]]:
    """The timeline (pure): cohorts of sign-ups in the first month, then the users' own
    actions; and each user's first plan. Every kind of action happens at least once, whatever
    the size, so a small demo still shows every page."""
    rng = random.Random(plan.seed)
    users = [f"demo-{plan.tag}-{i:03d}" for i in range(plan.users)]
    span = demo_end(start_ms, plan.months) - start_ms
    plans = {u: rng.choices(["monthly", "quarterly", "yearly"], [75, 18, 7])[0] for u in users}
    for user in users[:4]:  # the roles below: renewals, the upgrade, the refunds
        plans[user] = "monthly"
    n_cohorts = max(2, min(6, plan.users // 5))
    days = sorted({0, *rng.sample(range(1, 27), n_cohorts - 1)})
    actions: list[Action] = []
    for c, day in enumerate(days):
        cohort = users[c :: len(days)]
        if cohort:
            actions.append(Action(start_ms + day * DAY_MS + 10 * HOUR_MS, "signup", cohort))

    def later(user: str, lo_days: float, hi_days: float, kind: str) -> None:
        signup = next(a.at_ms for a in actions if a.kind == "signup" and user in a.users)
        at = signup + int(rng.uniform(lo_days, hi_days) * DAY_MS)
        actions.append(Action(min(at, start_ms + span - DAY_MS), kind, [user]))

    # Roles first (users[0] signs up on day 0 and renews within one month; users[3] is
    # declined at the checkout and retries), then a few more of each at random.
    later(users[1], 8, 25, "upgrade")
    later(users[2], 3, 20, "refund_partial")
    later(users[3], 4, 10, "refund_full")
    later(users[min(4, len(users) - 1)], 5, 25, "auto_renew_off")
    later(users[-1], 10, 20, "admin_extend")
    # A newcomer declined at the checkout near the end: the overview shows the last 30 days,
    # and the roles' own declines may all fall in the first month.
    newcomer = f"demo-{plan.tag}-new"
    actions.append(Action(start_ms + span - 3 * DAY_MS, "newcomer_declined", [newcomer]))
    for user in users[5:]:
        roll = rng.random()
        if roll < 0.06:
            later(user, 3, 20, "refund_partial")
        elif roll < 0.09:
            later(user, 4, 10, "refund_full")
        elif roll < 0.18:
            later(user, 5, 25, "auto_renew_off")
        elif roll < 0.21:
            later(user, 8, 25, "upgrade")
    actions.sort()
    return actions, plans


def demo_end(start_ms: int, months: int) -> int:
    """The demo's last moment: two days past ``months`` calendar months, so the first
    cohort's last renewal (a day before its period end) falls inside even for one month."""
    from schemas.periods import period_end_ms

    return period_end_ms(start_ms, months) + 2 * DAY_MS


class Stack:
    """The running local stack as the demo sees it: the API, the emulator's control API,
    PostgreSQL (to know what is due and when the stack has settled) and the clock."""

    def __init__(self, settings: Settings) -> None:
        if settings.postgres_dsn is None:
            sys.exit(
                "billing demo needs the running local stack (`make run`): no .state/stack.env"
                " and BILLING_POSTGRES_DSN is not set"
            )
        if settings.env not in ("dev", "test") or (
            settings.yookassa_api_url and "127.0.0.1" not in settings.yookassa_api_url
        ):
            sys.exit("billing demo plays into the local stack and its emulator only (dev)")
        self.settings = settings
        self.api = httpx.Client(
            base_url=f"http://{settings.api_host}:{settings.api_port}", timeout=30
        )
        self.emulator_url = f"http://{settings.emulator_host}:{settings.emulator_port}"
        self.emu = httpx.Client(base_url=f"{self.emulator_url}/__emulator", timeout=30)
        self.db = psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True)
        path = os.environ.get("BILLING_CLOCK_FILE")  # the stack's, from .state/stack.env
        if not path:
            sys.exit("the stack has no BILLING_CLOCK_FILE: restart it with this version")
        self.clock_file = Path(path)
        self.tokens: dict[tuple[str, bool], str] = {}
        try:
            self.api.get("/healthz").raise_for_status()
            self.control("GET", "/health")
        except httpx.HTTPError as exc:
            sys.exit(f"the local stack does not answer ({exc}): is `make run` running?")

    def close(self) -> None:
        self.api.close()
        self.emu.close()
        self.db.close()

    # --------------------------------------------------------------------------- clock
    def offset_ms(self) -> int:
        try:
            return int(self.clock_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms()

    def sync_clocks(self) -> None:
        """The engine's clock file and the emulator's offset agree (both only move forward)."""
        emulator_ms = int(
            float(self.control("POST", "/clock", {"advance_s": 0})["offset_s"]) * 1000
        )
        ours = self.offset_ms()
        if emulator_ms < ours:
            self.control("POST", "/clock", {"advance_s": (ours - emulator_ms) / 1000})
        elif ours < emulator_ms:
            self._write_offset(emulator_ms)

    def advance_to(self, at_ms: int) -> None:
        step = at_ms - self.now_ms()
        if step <= 0:
            return
        self._write_offset(self.offset_ms() + step)
        self.control("POST", "/clock", {"advance_s": step / 1000})

    def _write_offset(self, offset: int) -> None:
        from billing.clock import set_clock_offset

        set_clock_offset(self.clock_file, offset)

    # ------------------------------------------------------------------------- clients
    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self.emu.request(method, path, json=body)
        resp.raise_for_status()
        return resp.json()

    def token(self, user: str, admin: bool = False) -> str:
        if (user, admin) not in self.tokens:
            from api.auth import mint_token

            roles = ("admin",) if admin else ()
            self.tokens[user, admin] = mint_token(self.settings, user, roles=roles, ttl_s=86400)
        return self.tokens[user, admin]

    def call(
        self, user: str, method: str, path: str, body: Any = None, *, admin: bool = False
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(user, admin)}"}
        if method != "GET":
            headers["Idempotency-Key"] = str(uuid.uuid4())
        for _ in range(20):
            resp = self.api.request(method, path, json=body, headers=headers)
            if resp.status_code not in (429, 503):  # rate limit or admission: wait, same key
                return resp
            time.sleep(float(resp.headers.get("Retry-After", "1")))
        return resp

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.db.execute(sql, params).fetchall()]  # type: ignore[arg-type]

    # --------------------------------------------------------------------------- state
    def settle(self, quiet_s: float, timeout_s: float = 30) -> None:
        """Wait until nothing is on its way: no gateway call or renewal charge in flight, no
        command the ledger has not taken yet, and no new event projected for ``quiet_s``
        (after a clock jump longer than a sweeper tick, so what it made due is picked up)."""
        deadline = time.monotonic() + timeout_s
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            (events, busy) = self.query(
                "SELECT (SELECT count(*) FROM subscription_events),"
                " (SELECT count(*) FROM payments WHERE status IN ('requested', 'unknown')"
                "   OR (kind = 'renewal' AND status = 'pending'))"
                " + (SELECT count(*) FROM command_outbox WHERE status = 'accepted')"
            )[0]
            if events != last or busy:
                last, since = events, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.25)

    def next_stop(self, now: int, cap: int) -> int:
        """Where the clock may jump next: at most MAX_STEP_MS and ``cap`` (the next action),
        and never past a period end whose renewal charge is still ahead (the charge comes
        first, as it would in real time: it falls between end - lead and end - 1 h)."""
        from streams.ledger.machine import Policy, renewal_at

        policy = Policy(renew_lead_ms=int(self.settings.renew_lead_s * 1000))
        target = min(now + MAX_STEP_MS, cap)
        rows = self.query(
            "SELECT subscription_id::text, period_end, auto_renew FROM subscriptions"
            " WHERE status = 'active' AND period_end IS NOT NULL"
        )
        for sub, period_end, auto_renew in rows:
            end = int(period_end.timestamp() * 1000)
            if auto_renew and renewal_at(sub, end, policy) > now:
                target = min(target, end - HOUR_MS // 2)
        return max(target, now + 1000)


# ------------------------------------------------------------------------------ the demo
@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, what: str, n: int = 1) -> None:
        self.counts[what] += n


@contextmanager
def progress_bar(total: int) -> Iterator[Callable[[int, str], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description:<44}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    with bar:
        task = bar.add_task("starting", total=total)

        def update(done: int, what: str) -> None:
            bar.update(task, completed=min(done, total), description=what[:44])

        yield update


class Demo:
    def __init__(self, stack: Stack, plan: DemoPlan) -> None:
        self.stack = stack
        self.plan = plan
        self.rng = random.Random(plan.seed + 1)
        self.tally = Tally()
        self.payments: dict[str, list[str]] = {}  # user -> their payment ids, oldest first
        self.actions: list[Action] = []
        self.user_plans: dict[str, str] = {}
        self.must_pay: set[str] = set()
        self.must_decline = ""
        self.decline_once: set[str] = set()  # declined at their next checkout, no retry
        self.quiet_s = float(stack.settings.sweep_interval_s) + 0.75

    # ------------------------------------------------------------------ checkout
    def buy(self, users: list[str], path: Callable[[str], str], body: Callable[[str], Any]) -> None:
        """Users ask to pay (purchase, retry or upgrade) and then act at the checkout: most
        confirm, some decline, a few walk away (the provider cancels after an hour)."""
        asked: dict[str, str] = {}
        for user in users:
            resp = self.stack.call(user, "POST", path(user), body(user))
            if resp.status_code == 202:
                asked[user] = resp.json()["payment_id"]
                self.payments.setdefault(user, []).append(asked[user])
            else:
                self.tally.add(
                    f"refused {resp.json().get('error', {}).get('code', resp.status_code)}"
                )
        deadline = time.monotonic() + 60
        waiting = dict(asked)
        while waiting and time.monotonic() < deadline:
            for user, pid in list(waiting.items()):
                got = self.stack.call(user, "GET", f"/api/v1/payments/{pid}").json()
                if got.get("status") in ("succeeded", "canceled"):  # a saved card: no checkout
                    self.tally.add(f"saved card {got['status']}")
                    del waiting[user]
                elif got.get("status") == "pending" and got.get("provider_payment_id"):
                    self.checkout(user, pid, got["provider_payment_id"])
                    del waiting[user]
            time.sleep(0.2)

    def checkout(self, user: str, pid: str, provider_id: str) -> None:
        roll = self.rng.random()
        newcomer = user in self.decline_once
        if user in self.must_pay:
            roll = 1.0
        elif user == self.must_decline or user in self.decline_once:
            self.decline_once.discard(user)
            roll = 0.0
        if roll < 0.12:
            reason = self.rng.choice(DECLINE_REASONS)
            self.stack.control(
                "POST", f"/payments/{provider_id}/confirm", {"result": "cancel", "reason": reason}
            )
            if not newcomer:  # the user tries again two days later (a new payment)
                self.actions.append(Action(self.stack.now_ms() + 2 * DAY_MS, "retry", [user], pid))
            self.tally.add("checkout declined")
        elif roll < 0.18:
            self.tally.add("checkout abandoned")  # the provider cancels it after its window
        else:
            self.stack.control("POST", f"/payments/{provider_id}/confirm", {"result": "succeed"})
            self.tally.add("checkout paid")

    def succeeded_payment(self, user: str) -> str | None:
        page = self.stack.call(user, "GET", "/api/v1/payments?status=succeeded").json()
        items = page.get("items", []) if isinstance(page, dict) else []
        return str(items[0]["payment_id"]) if items else None

    # ------------------------------------------------------------------- actions
    def act(self, action: Action) -> None:
        s = self.stack
        if action.kind == "signup":
            plans = self.user_plans
            self.buy(
                action.users,
                lambda u: "/api/v1/payments",
                lambda u: {"plan_id": plans[u], "return_url": RETURN_URL},
            )
            return
        user = action.users[0]
        if action.kind == "newcomer_declined":
            self.decline_once.add(user)
            self.buy(
                [user],
                lambda u: "/api/v1/payments",
                lambda u: {"plan_id": "monthly", "return_url": RETURN_URL},
            )
        elif action.kind == "upgrade":
            self.buy(
                [user],
                lambda u: "/api/v1/subscriptions/me/plan",
                lambda u: {"plan_id": "yearly", "return_url": RETURN_URL},
            )
            self.tally.add("upgrade asked")
        elif action.kind in ("refund_partial", "refund_full"):
            pid = self.succeeded_payment(user)
            if pid is None:
                self.tally.add("refund skipped (nothing paid)")
                return
            body: dict[str, Any] = {"reason": "demo: not watching"}
            if action.kind == "refund_partial":
                body["amount"] = {"value": "100.00", "currency": "RUB"}
            resp = s.call(user, "POST", f"/api/v1/payments/{pid}/refunds", body)
            self.tally.add("refund asked" if resp.status_code == 202 else "refund refused")
        elif action.kind == "auto_renew_off":
            resp = s.call(user, "PUT", "/api/v1/subscriptions/me/auto-renew", {"enabled": False})
            self.tally.add("auto-renew off" if resp.status_code == 202 else "auto-renew refused")
        elif action.kind == "retry":
            self.must_pay.add(user)
            self.buy([user], lambda u: f"/api/v1/payments/{action.ref}/retry", _retry_body)
        elif action.kind == "admin_extend":
            sub = s.call(user, "GET", "/api/v1/subscriptions/me").json().get("subscription_id")
            if sub:
                resp = s.call(
                    "demo-admin",
                    "POST",
                    f"/api/v1/admin/subscriptions/{sub}/extend",
                    {"days": 7, "reason": "demo: outage compensation"},
                    admin=True,
                )
                self.tally.add("admin extend" if resp.status_code == 202 else "admin refused")

    # -------------------------------------------------------------------- run it
    def run(self, update: Callable[[int, str], None]) -> None:
        s = self.stack
        start = s.now_ms()
        self.actions, self.user_plans = plan_actions(self.plan, start)
        users = sorted(self.user_plans)
        self.must_pay = set(users[:3])  # a renewal, the upgrade, the refunds need a paid period
        self.must_decline = users[3]  # at least one decline (and its retry)
        end = demo_end(start, self.plan.months)
        total_days = (end - start) // DAY_MS
        s.control(
            "POST",
            "/config",
            {"autopay_decline_rate": 0.15, "autopay_decline_reason": "insufficient_funds"},
        )
        s.control(
            "POST",
            "/faults",
            {"endpoint": "notifications", "kind": "lost", "count": None, "probability": 0.1},
        )
        try:
            while True:
                now = s.now_ms()
                day = (now - start) // DAY_MS
                due = sorted(a for a in self.actions if a.at_ms <= now)
                for action in due:
                    update(int(day), f"day {day}/{total_days}: {action.kind} ({len(action.users)})")
                    self.act(action)
                    self.actions.remove(action)
                if due:  # no clock jump: no sweeper tick to wait for
                    s.settle(1.0)
                if now >= end:
                    break
                cap = min([a.at_ms for a in self.actions] + [end])
                s.advance_to(s.next_stop(now, cap))
                update(int(day), f"day {day}/{total_days}: renewals and timers")
                s.settle(self.quiet_s)
        finally:
            s.control("DELETE", "/faults")
            s.control("POST", "/config", {"autopay_decline_rate": 0.0})
        update(int(total_days), "reconciliation: planting differences")
        self.reconcile(start, update, int(total_days))

    # ------------------------------------------------------------- reconciliation
    def reconcile(self, start: int, update: Callable[[int, str], None], day: int) -> None:
        s = self.stack
        paid = s.query(
            "SELECT p.payment_id::text, p.provider_payment_id FROM payments p"
            " WHERE p.status = 'succeeded' AND p.kind = 'purchase' AND p.refunded_minor = 0"
            " AND p.provider_payment_id IS NOT NULL ORDER BY p.created_at DESC LIMIT 2"
        )
        canceled = s.query(
            "SELECT payment_id::text, provider_payment_id FROM payments WHERE status = 'canceled'"
            " AND kind = 'purchase' AND provider_payment_id IS NOT NULL"
            " ORDER BY created_at DESC LIMIT 1"
        )
        # Late confirmations whose webhook is lost: the user pays at the checkout after the
        # ledger has re-read the pending payment a few times (each clock jump below is one
        # re-read, and the wait to the next doubles), so only reconciliation finds them.
        s.control("POST", "/config", {"confirmation_window_s": 3 * 86400.0})
        late = [f"demo-{self.plan.tag}-late-{i}" for i in range(2)]
        late_ids: dict[str, tuple[str, str]] = {}
        for user in late:
            resp = s.call(
                user, "POST", "/api/v1/payments", {"plan_id": "monthly", "return_url": RETURN_URL}
            )
            if resp.status_code == 202:
                pid = resp.json()["payment_id"]
                for _ in range(150):
                    got = s.call(user, "GET", f"/api/v1/payments/{pid}").json()
                    if got.get("provider_payment_id"):
                        late_ids[user] = (pid, got["provider_payment_id"])
                        break
                    time.sleep(0.2)
        s.control("POST", "/config", {"confirmation_window_s": 3600.0})
        for i in range(5):  # a quiet evening, an hour at a time
            update(day, f"reconciliation: evening hour {i + 1}/5")
            s.advance_to(s.now_ms() + HOUR_MS)
            s.settle(self.quiet_s)
        planted = Counter[str]()
        for _user, (_pid, provider_id) in late_ids.items():
            s.control("POST", "/faults", {"endpoint": "notifications", "kind": "lost", "count": 1})
            s.control("POST", f"/payments/{provider_id}/confirm", {"result": "succeed"})
            planted["lost webhook (missing_internal)"] += 1
        objects = s.control("GET", "/objects")["payments"]
        meta = {p["id"]: p.get("metadata", {}) for p in objects}
        if paid:
            self._charge(meta.get(paid[0][1], {}), "299.00")  # the same payment, charged twice
            planted["double charge (duplicate_charge)"] += 1
        if len(paid) > 1:
            self._charge(meta.get(paid[1][1], {}), "1.00")  # another amount: an escalation
            planted["wrong amount (amount_mismatch)"] += 1
        if canceled:
            s.control("POST", "/faults", {"endpoint": "notifications", "kind": "lost", "count": 1})
            self._charge(meta.get(canceled[0][1], {}), "299.00")  # we hold it as declined
            planted["charged after a decline (status_mismatch)"] += 1
        time.sleep(1.0)
        update(day, "reconciliation: billing reconcile --wait")
        window = [
            "--from", _iso(start - HOUR_MS),
            "--to", _iso(s.now_ms() + 60_000),
        ]  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "billing.cli", "reconcile", *window, "--wait"],
            capture_output=True,
            text=True,
            timeout=900,
            env=dict(os.environ, COLUMNS="100"),
        )
        out = proc.stdout
        found = re.search(r"run ([0-9a-f-]{36})", out)
        self.run_id = found.group(1) if found else None
        self.planted = planted
        self.recon_out = out[-3000:] if proc.returncode in (0, 1) else (out + proc.stderr)[-3000:]
        self.recon_status = proc.returncode
        update(day, "reconciliation: repairs through the ledger")
        s.settle(self.quiet_s)

    def _charge(self, metadata: dict[str, Any], value: str) -> None:
        """A payment made at the provider behind our back, under one of our payment ids."""
        resp = httpx.post(
            f"{self.stack.emulator_url}/v3/payments",
            auth=(
                self.stack.settings.yookassa_shop_id,
                self.stack.settings.yookassa_secret_key.get_secret_value(),
            ),
            headers={"Idempotence-Key": str(uuid.uuid4())},
            json={
                "amount": {"value": value, "currency": "RUB"},
                "capture": True,
                "confirmation": {"type": "redirect", "return_url": RETURN_URL},
                "metadata": metadata,
            },
            timeout=30,
        )
        resp.raise_for_status()
        self.stack.control("POST", f"/payments/{resp.json()['id']}/confirm", {"result": "succeed"})


def _retry_body(user: str) -> dict[str, str]:
    return {"return_url": RETURN_URL}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="billing demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=30, help="subscribers (at least 4)")
    parser.add_argument("--months", type=int, default=3, help="months of traffic (1-12)")
    parser.add_argument("--seed", type=int, default=None, help="replay a demo's choices")
    args = parser.parse_args(argv)
    if not 4 <= args.users <= 500 or not 1 <= args.months <= 12:
        parser.error("--users 4..500, --months 1..12")
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    plan = DemoPlan(args.users, args.months, seed, uuid.uuid4().hex[:4])
    stack = Stack(Settings())
    started = time.monotonic()
    try:
        stack.sync_clocks()
        demo = Demo(stack, plan)
        total = (demo_end(0, plan.months)) // DAY_MS
        with progress_bar(total) as update:
            demo.run(update)
        sys.stdout.write(summary(demo, stack, time.monotonic() - started) + "\n")
    finally:
        stack.close()
    return 0


def summary(demo: Demo, stack: Stack, took_s: float) -> str:
    rows = stack.query(
        "SELECT kind, status, count(*) FROM payments WHERE user_id LIKE %s GROUP BY 1, 2"
        " ORDER BY 1, 2",
        f"demo-{demo.plan.tag}-%",
    )
    subs = stack.query(
        "SELECT status, count(*) FROM subscriptions WHERE user_id LIKE %s GROUP BY 1 ORDER BY 1",
        f"demo-{demo.plan.tag}-%",
    )
    run = (
        stack.query("SELECT counts, unresolved FROM recon_runs WHERE run_id = %s", demo.run_id)
        if demo.run_id
        else []
    )
    if run:
        counts, unresolved = run[0]
        reconciled = (
            f"reconciliation run {demo.run_id}: "
            + ", ".join(f"{k} {n}" for k, n in counts.items() if n)
            + f"; unresolved {unresolved} (an admin decides on the console)"
        )
    else:
        reconciled = f"reconciliation did not run (exit {demo.recon_status}):\n{demo.recon_out}"
    lines = [
        f"demo {demo.plan.tag} (seed {demo.plan.seed}): {demo.plan.users} users,"
        f" {demo.plan.months} months in {took_s:.0f}s; the stack's clock is now"
        f" {_iso(stack.now_ms())}",
        "payments: " + ", ".join(f"{k} {s} {n}" for k, s, n in rows),
        "subscriptions: " + ", ".join(f"{s} {n}" for s, n in subs),
        "actions: " + ", ".join(f"{k} {n}" for k, n in sorted(demo.tally.counts.items())),
        "planted: " + ", ".join(f"{k} {n}" for k, n in demo.planted.items()),
        reconciled,
        "console: overview and analytics (revenue, MRR, declines, refunds, dunning),"
        f" subscriptions (search demo-{demo.plan.tag}), reconciliation (runs, the escalation to"
        " resolve)",
    ]
    return "\n".join(lines)
