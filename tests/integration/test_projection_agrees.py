"""The PostgreSQL read model says what the ledger's state says.

The projection (streams/projection/agent.py) repeats the meaning of a few events in SQL: it
sees events, never the state, and must answer reads without a worker. So instead of trusting
that the two stay in step, this test drives the pure machine with the model-based test's
random world (tests/model.py: payments, declines, refunds, upgrades, admin actions, clock
jumps), projects every event it emitted into a real PostgreSQL through ``project``, and
compares each payment, refund and the subscription row with the folded state.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from schemas.messages import encode
from schemas.periods import ms_to_dt
from streams.projection.agent import project
from tests.model import SUB, LedgerModel

pytestmark = pytest.mark.integration

TABLES = (
    "payments",
    "refunds",
    "subscriptions",
    "payment_methods",
    "subscription_events",
    "projection_versions",
    "command_outbox",
)


def _ts(ms: int | None) -> datetime | None:
    return None if ms is None else ms_to_dt(ms)


def differences(model: LedgerModel, dsn: str) -> list[str]:
    """Project the model's events into an empty read model; what disagrees with the state."""
    state = model.state
    if state is None:
        return []

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            for table in TABLES:
                await conn.execute(f"DELETE FROM {table} WHERE subscription_id = %s", (SUB,))
            await conn.commit()
            await project(conn, [(e, encode(e)) for e in model.log])

    asyncio.run(write())
    out: list[str] = []
    with psycopg.connect(dsn) as conn:
        rows: dict[str, tuple[Any, ...]] = {
            str(r[0]): r[1:]
            for r in conn.execute(
                "SELECT payment_id, status, amount_minor, currency, refunded_minor,"
                " provider_payment_id, period_start, period_end, kind"
                " FROM payments WHERE subscription_id = %s",
                (SUB,),
            ).fetchall()
        }
        # Dropped from the state past the retention window (issue 13) or not, every payment
        # is in the read model as the ledger last held it: history is not lost.
        for rec in model.last_seen.values():
            want = (
                rec.status,
                rec.amount.amount_minor,
                rec.amount.currency,
                rec.refunded_minor,
                rec.provider_payment_id,
                _ts(rec.period_start),
                _ts(rec.period_end),
                rec.kind,
            )
            got = rows.pop(rec.payment_id, None)
            if got != want:
                out.append(f"payment {rec.payment_id[:8]}: read model {got}, ledger {want}")
        out += [f"payment {pid[:8]} only in the read model" for pid in rows]
        refunds = {
            str(r[0]): r[1:]
            for r in conn.execute(
                "SELECT refund_id, status, amount_minor, provider_refund_id"
                " FROM refunds WHERE subscription_id = %s",
                (SUB,),
            ).fetchall()
        }
        for ref in state.refunds.values():
            want_r = (ref.status, ref.amount.amount_minor, ref.provider_refund_id)
            got_r = refunds.get(ref.refund_id)
            if got_r != want_r:
                out.append(f"refund {ref.refund_id[:8]}: read model {got_r}, ledger {want_r}")
        sub = conn.execute(
            "SELECT status, plan_id, period_end, auto_renew FROM subscriptions"
            " WHERE subscription_id = %s",
            (SUB,),
        ).fetchone()
        if sub is not None and state.status != "none":
            want_s = (state.status, state.plan_id, _ts(state.period_end), state.auto_renew)
            if tuple(sub) != want_s:
                out.append(f"subscription: read model {tuple(sub)}, ledger {want_s}")
        # The wallet: the methods not deleted, and the default, as the ledger holds them.
        saved = conn.execute(
            "SELECT method_id, is_default FROM payment_methods"
            " WHERE subscription_id = %s AND deleted_at IS NULL",
            (SUB,),
        ).fetchall()
        got_w = (sorted(r[0] for r in saved), [r[0] for r in saved if r[1]])
        want_w = (
            sorted(state.payment_methods),
            [state.payment_method_id] if state.payment_method_id else [],
        )
        if got_w != want_w:
            out.append(f"wallet: read model {got_w}, ledger {want_w}")
        trial = conn.execute(
            "SELECT trial_end FROM subscriptions WHERE subscription_id = %s", (SUB,)
        ).fetchone()
        if trial is not None and trial[0] != _ts(state.trial_end):
            out.append(f"trial end: read model {trial[0]}, ledger {state.trial_end}")
    return out


def test_the_read_model_agrees_with_the_folded_state(fresh_database: Any) -> None:
    dsn = fresh_database("agree")

    class Projected(LedgerModel):
        def teardown(self) -> None:
            problems = differences(self, dsn)
            assert not problems, "\n".join(problems)

    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        Projected,
        settings=settings(
            max_examples=300,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
            print_blob=True,
        ),
    )
