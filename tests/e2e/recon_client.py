"""What the reconciliation e2e tests do to the running stack: run ``billing reconcile``, make
objects at the provider behind our back (a payment under our metadata, a lost notification),
and read what a run recorded in PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.client import get
from tests.e2e.harness import Stack, wait_until

ROOT = Path(__file__).resolve().parents[2]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def reconcile_cli(stack: Stack, *args: str) -> tuple[int, str, str | None]:
    """Run ``billing reconcile`` with the stack's settings: (status, output, run id)."""
    proc = subprocess.run(
        [sys.executable, "-m", "billing.cli", "reconcile", *args, "--timeout", "180"],
        cwd=ROOT,
        env=dict(stack.env, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    found = re.search(r"run ([0-9a-f-]{36})", out)
    return proc.returncode, out, found.group(1) if found else None


def active(stack: Stack, user: str) -> bool:
    return get(stack, user, "/api/v1/subscriptions/me").json().get("active") is True


def emulator_payment(stack: Stack, provider_id: str) -> dict[str, Any]:
    payments: list[dict[str, Any]] = stack.control.objects()["payments"]
    return next(p for p in payments if p["id"] == provider_id)


def provider_payment_of(stack: Stack, payment_id: str) -> dict[str, Any]:
    payments: list[dict[str, Any]] = stack.control.objects()["payments"]
    return next(p for p in payments if p.get("metadata", {}).get("payment_id") == payment_id)


def create_at_provider(stack: Stack, metadata: dict[str, Any], value: str) -> str:
    """A payment made directly at the provider (shop credentials, a key of nobody's), paid."""
    resp = httpx.post(
        f"{stack.emulator_url}/v3/payments",
        auth=("100500", "emulator-secret"),
        headers={"Idempotence-Key": str(uuid.uuid4())},
        json={
            "amount": {"value": value, "currency": "RUB"},
            "capture": True,
            "confirmation": {"type": "redirect", "return_url": "https://cinema.example/return"},
            "metadata": metadata,
        },
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    provider_id: str = resp.json()["id"]
    stack.control.confirm(provider_id, "succeed")
    return provider_id


def lose_next_notification(stack: Stack, provider_id: str) -> None:
    """Pay ``provider_id`` at the provider while its notification is lost."""
    stack.control.add_fault("notifications", "lost", count=1)
    stack.control.confirm(provider_id, "succeed")
    wait_until(
        lambda: any(
            d["object_id"] == provider_id and d["outcome"] == "lost"
            for d in stack.control.deliveries()
        ),
        timeout=20,
        message=f"notification of {provider_id} lost",
    )


def items_by_object(stack: Stack, run_id: str) -> dict[str, tuple[str, str]]:
    """provider id (else ours:<id>) -> (class, repair) of what the run found."""
    rows = stack.query(
        "SELECT i.ident, r.kind, i.repair FROM recon_run_items r"
        " JOIN recon_items i USING (item_key) WHERE r.run_id = %s",
        run_id,
    )
    return {ident: (kind, repair) for ident, kind, repair in rows}


def tallied(stack: Stack, run_id: str) -> int:
    """The matched items the agents counted for the run (recon_run_tallies)."""
    rows = stack.query(
        "SELECT coalesce(sum((counts->>'matched')::int), 0) FROM recon_run_tallies"
        " WHERE run_id = %s",
        run_id,
    )
    return int(rows[0][0])


def run_row(stack: Stack, run_id: str) -> dict[str, Any]:
    rows = stack.query(
        "SELECT status, lines, counts, totals, discrepancies, new_discrepancies, unresolved,"
        " duration_ms FROM recon_runs WHERE run_id = %s",
        run_id,
    )
    keys = [
        "status",
        "lines",
        "counts",
        "totals",
        "discrepancies",
        "new_discrepancies",
        "unresolved",
        "duration_ms",
    ]
    return dict(zip(keys, rows[0], strict=True))
