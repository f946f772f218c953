"""The chaos driver: a seeded population of payments sent in batches through the API (and a
few straight into the outbox with their publish dropped), a "user" who confirms or declines
each payment at the provider, and a plan of faults applied at random moments while a batch
is in flight. Everything random comes from one ``random.Random(seed)`` so a failure replays
with the same population, the same choices and the same fault order (timing on a loaded
machine still varies, which is the point of running it often).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import struct
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool

from api.intake import Caller, accept_payment
from billing.config import Settings
from billing.processes import ManagedProcess
from schemas.http import PaymentCreate
from schemas.ids import command_id_for, payment_id_for, subscription_id_for
from schemas.messages import PaymentRedriven
from schemas.topics import COMMANDS
from tests.chaos.invariants import (
    Expected,
    Snapshot,
    analyse_events,
    check,
    collect,
    evidence,
    summary,
)
from tests.e2e.harness import Stack

RETURN_URL = "https://cinema.example/return"
DROP_RATE = 0.05  # commands accepted with their publish dropped (outbox row, no message)
DECLINE_RATE = 0.06  # payments the user declines at the provider
RESEND_RATE = 0.03  # API requests retried by the client with the same Idempotency-Key
DUPLICATES_PER_FAULT = 5  # commands re-published straight to billing.commands per fault
PLAN_WEIGHTS = {"monthly": 0.7, "quarterly": 0.2, "yearly": 0.1}
SEND_RATE = 25.0  # payments per second within a batch (above what 2 cores drain: a backlog)
SEND_CONCURRENCY = 12
CONFIRM_EVERY_S = 0.3
GRACE_S = 15.0  # a graceful stop longer than this is escalated to SIGKILL and recorded

Action = Literal["sigkill", "sigterm", "broker", "kill-one"]


# ---------------------------------------------------------------------------- population
def population(
    rng: random.Random, n: int, tag: str, plans: dict[str, tuple[int, int]]
) -> list[Expected]:
    """``plans``: plan id -> (amount_minor, period_months), from the database."""
    names = sorted(PLAN_WEIGHTS)
    weights = [PLAN_WEIGHTS[p] for p in names]
    out: list[Expected] = []
    for i in range(n):
        user = f"chaos-{tag}-{i:04d}"
        key = f"pay-{tag}-{i:04d}"
        plan = rng.choices(names, weights)[0]
        via: Literal["api", "dropped"] = "dropped" if rng.random() < DROP_RATE else "api"
        decline = rng.random() < DECLINE_RATE
        resend = via == "api" and rng.random() < RESEND_RATE
        command_id = command_id_for(user, key)
        amount, months = plans[plan]
        out.append(
            Expected(
                user_id=user,
                idem_key=key,
                subscription_id=subscription_id_for(user),
                command_id=command_id,
                payment_id=payment_id_for(command_id),
                plan_id=plan,
                period_months=months,
                amount_minor=amount,
                decline=decline,
                via=via,
                resend=resend,
            )
        )
    rng.shuffle(out)
    return out


def batches(items: list[Expected], n: int) -> list[list[Expected]]:
    size, extra = divmod(len(items), n)
    out: list[list[Expected]] = []
    start = 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def parse_assignment(raw: bytes) -> dict[str, list[int]]:
    """The standard part of a consumer-protocol assignment (Faust appends its own user data)."""
    off = 2  # int16 version
    (n_topics,) = struct.unpack_from(">i", raw, off)
    off += 4
    out: dict[str, list[int]] = {}
    for _ in range(n_topics):
        (length,) = struct.unpack_from(">h", raw, off)
        off += 2
        topic = raw[off : off + length].decode()
        off += length
        (n_parts,) = struct.unpack_from(">i", raw, off)
        off += 4
        out[topic] = list(struct.unpack_from(f">{n_parts}i", raw, off))
        off += 4 * n_parts
    return out


async def group_assignments(bootstrap: str, group: str) -> list[list[int]]:
    """billing.commands partitions held by each live member of the workers' group."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        (desc,) = response.to_object()["groups"]
        return [
            sorted(parse_assignment(m["member_assignment"]).get(COMMANDS, []))
            for m in desc["members"]
        ]
    finally:
        await admin.close()


def graceful_stop(w: ManagedProcess, grace_s: float = GRACE_S) -> float | None:
    """SIGTERM and wait: seconds the process took to exit by itself, or None if it did not
    within ``grace_s`` and had to be SIGKILLed (what a supervisor would do)."""
    proc = w.proc
    if proc is None or proc.poll() is not None:
        return 0.0
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        w.kill()
        return None
    return time.monotonic() - started


# ------------------------------------------------------------------------------- figures
@dataclass
class FaultRecord:
    action: str
    at_s: float  # since the first payment was sent
    in_flight: int  # commands accepted and not done when the fault hit
    backlog: int = 0  # commands not yet applied by the ledger when the worker came back
    took_s: float = 0.0
    worker: int = 0
    stop_s: float | None = None  # sigterm, broker: how long the stop took (sigterm None: hung)


@dataclass
class Figures:
    variant: str
    seed: int
    workers: int
    payments: int = 0
    via_api: int = 0
    dropped_publishes: int = 0
    client_resends: int = 0
    declines: int = 0
    duplicate_commands: int = 0
    sigkills: int = 0
    sigterm_restarts: int = 0
    hung_stops: int = 0  # graceful stops that did not finish within GRACE_S
    broker_restarts: int = 0
    faults: list[FaultRecord] = field(default_factory=list)
    api_answers: dict[str, int] = field(default_factory=dict)
    send_s: float = 0.0  # first payment sent .. last payment accepted
    all_done_s: float = 0.0  # first payment sent .. every command done (0: never)
    settle_s: float = 0.0  # last payment accepted .. every invariant holds
    total_s: float = 0.0
    relay_recovered_dropped: int = 0  # dropped commands the relay published
    relay_republished_api: int = 0  # API-published commands the relay published again
    relay_pass_failures: int = 0  # "relay pass failed" in api.log (e.g. deadlock detected)
    api_publish_failures: int = 0  # "not published yet" in api.log (the relay takes over)
    projection_version_gaps: int = 0  # "version gap" in the workers' logs
    events_records: int = 0
    events_distinct: int = 0
    events_redelivered: int = 0
    redrives: int = 0
    provider_create_calls: int = 0
    provider_idempotent_replays: int = 0
    succeeded: int = 0
    canceled: int = 0
    assignments_before: list[list[int]] = field(default_factory=list)
    assignments_after: list[list[int]] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"chaos figures ({self.variant}):"]
        for k, v in asdict(self).items():
            if k == "faults":
                continue
            lines.append(f"  {k}: {v}")
        for f in self.faults:
            lines.append(
                f"  fault {f.action:<8} worker={f.worker} at={f.at_s:6.1f}s"
                f" in_flight={f.in_flight} backlog={f.backlog} took={f.took_s:.1f}s"
                + (f" stop={f.stop_s:.1f}s" if f.stop_s is not None else "")
                + (" stop=HUNG" if f.action == "sigterm" and f.stop_s is None else "")
            )
        return "\n".join(lines)


# -------------------------------------------------------------------------------- driver
class ChaosRun:
    def __init__(self, stack: Stack, *, seed: int, variant: str, n: int) -> None:
        self.stack = stack
        self.seed = seed
        self.variant = variant
        self.n = n
        # One stream of draws per variant, so both replay from one printed seed.
        self.rng = random.Random(f"{seed}/{variant}")
        # Draws whose number depends on timing get their own stream, so they cannot shift
        # the population or the fault plan of a replay.
        self.dup_rng = random.Random(f"{seed}/{variant}/duplicates")
        self.figures = Figures(variant=variant, seed=seed, workers=len(stack.workers))
        self.api_answers: Counter[str] = Counter()
        self.accepted: list[Expected] = []  # intake committed (either path)
        self.t0 = 0.0
        self.confirmed: set[str] = set()

    @property
    def changelog(self) -> str:
        return f"{self.stack.worker_id}-ledger-state-changelog"

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # ----------------------------------------------------------------------- plumbing
    async def _pg(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.stack.dsn) as conn:
            cur = await conn.execute(sql, params)
            return [tuple(r) for r in await cur.fetchall()]

    async def _open_counts(self) -> tuple[int, int]:
        """(accepted and not done, not yet applied by the ledger)."""
        rows = await self._pg(
            "SELECT count(*) FILTER (WHERE status <> 'done'),"
            " count(*) FILTER (WHERE status = 'accepted') FROM command_outbox"
        )
        return int(rows[0][0]), int(rows[0][1])

    async def _plans(self) -> dict[str, tuple[int, int]]:
        rows = await self._pg("SELECT plan_id, amount_minor, period_months FROM plans")
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}

    # -------------------------------------------------------------------------- intake
    async def _send_api(self, client: httpx.AsyncClient, e: Expected, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": e.idem_key}
        body = {"plan_id": e.plan_id, "return_url": RETURN_URL}
        sends = 2 if e.resend else 1
        for n in range(sends):
            for _attempt in range(60):
                try:
                    resp = await client.post("/api/v1/payments", headers=headers, json=body)
                except httpx.TransportError as exc:
                    self.api_answers[type(exc).__name__] += 1
                    await asyncio.sleep(0.5)
                    continue
                self.api_answers[str(resp.status_code)] += 1
                if resp.status_code in (409, 500, 502, 503, 504):
                    await asyncio.sleep(0.5)  # a retry with the same key is always safe
                    continue
                assert resp.status_code == 202, (
                    f"seed={self.seed}: POST /payments for {e.user_id}: {resp.status_code}"
                    f" {resp.text}"
                )
                got = resp.json()["payment_id"]
                assert got == e.payment_id, f"seed={self.seed}: {e.user_id} got payment {got}"
                if n == 1:
                    assert resp.headers.get("Idempotent-Replayed") == "true", (
                        f"seed={self.seed}: a resent request was not answered as a replay"
                    )
                break
            else:
                raise AssertionError(f"seed={self.seed}: the API never accepted {e.user_id}")
            if n == 0:
                self.accepted.append(e)

    async def _send_dropped(self, pool: AsyncConnectionPool[Any], e: Expected) -> None:
        """Intake exactly as the API does it, then "lose" the publish: only the relay can
        bring this command to Kafka."""
        outcome = await accept_payment(
            pool,
            self.settings,
            Caller(e.user_id, e.idem_key, "POST", "/api/v1/payments"),
            PaymentCreate(plan_id=e.plan_id, return_url=RETURN_URL),
        )
        assert outcome.status_code == 202 and outcome.message is not None, outcome
        assert outcome.body["payment_id"] == e.payment_id
        self.accepted.append(e)

    async def send_batch(
        self,
        batch: list[Expected],
        client: httpx.AsyncClient,
        pool: AsyncConnectionPool[Any],
        tokens: dict[str, str],
    ) -> None:
        sem = asyncio.Semaphore(SEND_CONCURRENCY)
        start = time.monotonic()

        async def one(j: int, e: Expected) -> None:
            await asyncio.sleep(max(0.0, start + j / SEND_RATE - time.monotonic()))
            async with sem:
                if e.via == "dropped":
                    await self._send_dropped(pool, e)
                else:
                    await self._send_api(client, e, tokens[e.user_id])

        await asyncio.gather(*(one(j, e) for j, e in enumerate(batch)))

    # ----------------------------------------------------------------------- the user
    async def confirmer(self, decline: set[str], stop: asyncio.Event) -> None:
        """Plays every user: sees the payment pending in the read model, answers at the
        provider (succeed, or decline for the chosen few)."""
        async with httpx.AsyncClient(
            base_url=f"{self.stack.emulator_url}/__emulator", timeout=30
        ) as http:
            sem = asyncio.Semaphore(8)

            async def answer(pid: str, provider_id: str) -> None:
                body: dict[str, str] = {"result": "cancel" if pid in decline else "succeed"}
                if pid in decline:
                    body["reason"] = "insufficient_funds"
                async with sem:
                    try:
                        resp = await http.post(f"/payments/{provider_id}/confirm", json=body)
                    except httpx.TransportError:
                        return
                if resp.status_code in (200, 409):  # 409: no longer awaiting the user
                    self.confirmed.add(pid)

            while not stop.is_set():
                try:
                    rows = await self._pg(
                        "SELECT payment_id::text, provider_payment_id FROM payments"
                        " WHERE status = 'pending' AND provider_payment_id IS NOT NULL"
                    )
                except psycopg.Error:
                    rows = []
                todo = [(p, q) for p, q in rows if p not in self.confirmed]
                await asyncio.gather(*(answer(p, q) for p, q in todo))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), CONFIRM_EVERY_S)

    # ------------------------------------------------------------------ duplicates
    async def publish_duplicates(self, k: int) -> None:
        """Commands delivered twice: re-publish accepted commands straight to Kafka."""
        # Not the dropped ones: only the relay may bring those to Kafka.
        pool = [e for e in self.accepted if e.via == "api"]
        if not pool:
            return
        from aiokafka import AIOKafkaProducer

        chosen = self.dup_rng.sample(pool, min(k, len(pool)))
        rows = await self._pg(
            "SELECT subscription_id::text, payload FROM command_outbox"
            " WHERE command_id = ANY(%s::uuid[])",
            [e.command_id for e in chosen],
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.stack.broker.bootstrap, acks="all")
        await producer.start()
        try:
            for sub, payload in rows:
                await producer.send_and_wait(COMMANDS, bytes(payload), key=sub.encode())
        finally:
            await producer.stop()
        self.figures.duplicate_commands += len(rows)

    # ---------------------------------------------------------------------- faults
    async def apply(self, action: Action, worker_index: int = 0) -> FaultRecord:
        in_flight, _ = await self._open_counts()
        rec = FaultRecord(action, self.elapsed(), in_flight, worker=worker_index)
        w: ManagedProcess = self.stack.workers[worker_index]
        started = time.monotonic()
        if action == "sigkill":
            pause = self.rng.uniform(0.0, 1.5)
            await asyncio.to_thread(w.kill)
            await asyncio.sleep(pause)
            rec.backlog = (await self._open_counts())[1]
            await asyncio.to_thread(self.stack.start_worker, w)
            self.figures.sigkills += 1
        elif action == "sigterm":
            down = self.rng.uniform(1.5, 3.0)
            rec.stop_s = await asyncio.to_thread(graceful_stop, w)
            if rec.stop_s is None:
                self.figures.hung_stops += 1
            await asyncio.sleep(down)  # the batch keeps arriving: a backlog waits
            rec.backlog = (await self._open_counts())[1]
            assert rec.backlog > 0, f"seed={self.seed}: no backlog waited for the restart"
            await asyncio.to_thread(self.stack.start_worker, w)
            self.figures.sigterm_restarts += 1
        elif action == "broker":
            t = time.monotonic()
            await asyncio.to_thread(self.stack.broker.stop)
            rec.stop_s = time.monotonic() - t
            await asyncio.to_thread(self.stack.broker.start)
            self.figures.broker_restarts += 1
        elif action == "kill-one":
            await asyncio.to_thread(w.kill)
            self.figures.sigkills += 1
        rec.took_s = time.monotonic() - started
        self.figures.faults.append(rec)
        return rec

    # ------------------------------------------------------------------------- run
    async def run(self, plan: list[tuple[Action, int]], *, settle_timeout_s: float) -> Snapshot:
        """Send the population in len(plan)+1 batches; fault i hits at a random moment while
        batch i is being sent. Then wait until every invariant holds (or time out)."""
        self.settings = Settings(relay_delay_s=float(self.stack.env["BILLING_RELAY_DELAY_S"]))
        people = population(self.rng, self.n, f"{self.variant}-{self.seed}", await self._plans())
        f = self.figures
        f.payments = len(people)
        f.dropped_publishes = sum(e.via == "dropped" for e in people)
        f.via_api = f.payments - f.dropped_publishes
        f.client_resends = sum(e.resend for e in people)
        f.declines = sum(e.decline for e in people)
        assert f.dropped_publishes > 0 and f.declines > 0 and f.client_resends > 0
        tokens = {e.user_id: self.stack.token(e.user_id) for e in people if e.via == "api"}
        decline = {e.payment_id for e in people if e.decline}
        # Seeded notification faults: duplicates and losses (the sweeper re-reads the lost).
        self.stack.control.reset(seed=self.seed)
        self.stack.control.add_fault("notifications", "duplicate", count=None, probability=0.05)
        self.stack.control.add_fault("notifications", "lost", count=None, probability=0.03)

        stop = asyncio.Event()
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.stack.dsn, min_size=1, max_size=4, open=False
        )
        await pool.open(wait=True, timeout=30)
        self.t0 = time.monotonic()
        user = asyncio.create_task(self.confirmer(decline, stop))
        try:
            async with self.stack.client() as client:
                chunks = batches(people, len(plan) + 1)
                for (action, worker), chunk in zip(plan, chunks, strict=False):
                    sending = asyncio.create_task(self.send_batch(chunk, client, pool, tokens))
                    batch_s = len(chunk) / SEND_RATE
                    await asyncio.sleep(self.rng.uniform(0.25, 0.6) * batch_s)
                    await self.publish_duplicates(DUPLICATES_PER_FAULT)
                    await self.apply(action, worker)
                    await sending
                await self.send_batch(chunks[-1], client, pool, tokens)
            f.send_s = self.elapsed()
            snap = await self.settle(people, settle_timeout_s)
        finally:
            stop.set()
            await user
            await pool.close()
        f.settle_s = self.elapsed() - f.send_s
        f.total_s = self.elapsed()
        await self._final_figures(people, snap)
        return snap

    async def settle(self, people: list[Expected], timeout_s: float) -> Snapshot:
        """Poll every store until all invariants hold; on timeout fail with what is wrong."""
        deadline = time.monotonic() + timeout_s
        problems: list[str] = []
        snap = Snapshot()
        while True:
            open_, _ = await self._open_counts()
            if open_ == 0 and not self.figures.all_done_s:
                self.figures.all_done_s = self.elapsed()
            if open_ == 0 or time.monotonic() > deadline:
                snap = await collect(
                    dsn=self.stack.dsn,
                    bootstrap=self.stack.broker.bootstrap,
                    changelog=self.changelog,
                    emulator_url=self.stack.emulator_url,
                )
                problems = check(people, snap)
                if not problems:
                    return snap
                if time.monotonic() > deadline:
                    break
            await asyncio.sleep(2.0)
        self.figures.settle_s = self.elapsed() - self.figures.send_s
        with contextlib.suppress(Exception):  # best effort: the figures help the diagnosis
            await self._final_figures(people, snap)
        dump = self.stack.root / "chaos-evidence.txt"
        dump.write_text("\n".join(problems) + "\n\n" + evidence(snap, problems))
        raise AssertionError(
            f"seed={self.seed} ({self.variant}): {len(problems)} invariant violations after"
            f" {timeout_s:.0f}s of settling (replay with BILLING_CHAOS_SEED={self.seed}):\n"
            f"{summary(problems)}\n{self.figures.report()}\nevidence: {dump}"
        )

    async def _final_figures(self, people: list[Expected], snap: Snapshot) -> None:
        f = self.figures
        f.api_answers = dict(self.api_answers)
        dropped = [e.command_id for e in people if e.via == "dropped"]
        # A dropped command has no publish of its own: every attempt on it is the relay's.
        rows = await self._pg(
            "SELECT count(*) FILTER (WHERE command_id = ANY(%s::uuid[]) AND publish_attempts > 0),"
            " count(*) FILTER (WHERE NOT command_id = ANY(%s::uuid[]) AND publish_attempts > 1)"
            " FROM command_outbox",
            dropped,
            dropped,
        )
        f.relay_recovered_dropped, f.relay_republished_api = int(rows[0][0]), int(rows[0][1])
        logs = self.stack.root / "logs"
        api_log = (logs / "api.log").read_text(errors="replace")
        f.relay_pass_failures = api_log.count("relay pass failed")
        f.api_publish_failures = api_log.count("not published yet")
        f.projection_version_gaps = sum(
            p.read_text(errors="replace").count("version gap") for p in logs.glob("worker-*.log")
        )
        log = analyse_events(snap.events)
        f.events_records = log.records
        f.events_distinct = len(log.distinct)
        f.events_redelivered = log.redelivered
        f.redrives = sum(isinstance(e, PaymentRedriven) for e in log.distinct.values())
        async with httpx.AsyncClient(timeout=30) as http:
            stats = (await http.get(f"{self.stack.emulator_url}/__emulator/stats")).json()
        f.provider_create_calls = int(stats["create_calls"])
        f.provider_idempotent_replays = int(stats["idempotent_replays"])
        statuses = Counter(
            rec.status for st in snap.ledger.values() for rec in st.payments.values()
        )
        f.succeeded, f.canceled = statuses["succeeded"], statuses["canceled"]
