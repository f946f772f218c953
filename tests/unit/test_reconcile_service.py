"""Pure parts of the reconciliation service: the report contracts, the agent's run memory
(and its refusal to judge a partition it did not see whole), the repair messages, the CLI's
input checks and the nightly window."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from billing.config import Settings
from reconciler import cli
from reconciler.feed import FeedError, ReconSettings, nightly_window
from reconciler.matcher import duplicate_refund_key, reconcile
from reconciler.repairs import repair_for
from schemas import topics
from schemas.ids import derived_id
from schemas.messages import PaymentObserved, RefundPayment, decode_command, decode_provider_event
from schemas.money import Money
from schemas.periods import dt_to_ms
from schemas.recon import (
    EndOfReport,
    PaymentLine,
    ReportEnvelope,
    decode_report_message,
    encode_report_message,
    line_key,
    message_key,
    report_order,
)
from schemas.recon_match import MatchConfig
from schemas.state import SubscriptionState
from streams.app import create_app
from streams.reconcile import register_reconciler
from streams.reconcile.agent import RunMemory, end_config
from streams.topics import declare
from tests.integration.recon_support import HOUR, make_day, payment_line

W0 = dt_to_ms(datetime(2026, 11, 24, tzinfo=UTC))


# --------------------------------------------------------------------------- contracts
def test_report_messages_round_trip() -> None:
    line = payment_line("sub-1", "p1", "prov-1", "succeeded", W0)
    env = ReportEnvelope(run_id="run", line=line)
    assert decode_report_message(encode_report_message(env)) == env
    end = EndOfReport(run_id="run", partition=2, lines_sent=9)
    assert decode_report_message(encode_report_message(end)) == end
    assert message_key(line) == b"sub-1"
    stranger = PaymentLine(provider_payment_id="x", status="succeeded", amount=Money(1, "RUB"))
    assert message_key(stranger) == b"payment:x" == line_key(stranger).encode()


# --------------------------------------------------------------------------- run memory
def feed_day(memory: RunMemory, skip: int = 0) -> tuple[Any, list[Any]]:
    """All lines of a day through the memory, as one partition; the first ``skip`` lines
    were seen by another process (a takeover)."""
    day = make_day(W0)
    states = {s.subscription_id: s for s in day.states}
    items = []
    for i, line in enumerate(sorted(day.lines, key=report_order)):
        state = states.get(line.subscription_id or "")
        if i < skip:
            RunMemory().match(day.cfg, "run", 0, line, state)  # the predecessor's memory
            continue
        item = memory.match(day.cfg, "run", 0, line, state)
        if item is not None:
            items.append(item)
    return day, items


def test_streaming_memory_agrees_with_the_batch_matcher() -> None:
    memory = RunMemory()
    day, items = feed_day(memory)
    end, complete = memory.end(day.cfg, "run", 0, day.states, len(day.lines))
    assert complete
    batch = reconcile(day.states, day.lines, day.cfg)
    assert sorted(map(repr, items + end)) == sorted(map(repr, batch.items))
    memory.forget("run", 0)
    assert not memory.subs and not memory.parts


def test_a_partition_not_seen_whole_has_no_end_of_report_items() -> None:
    memory = RunMemory()
    day, _ = feed_day(memory, skip=3)
    end, complete = memory.end(day.cfg, "run", 0, day.states, len(day.lines))
    assert (end, complete) == ([], False)
    assert memory.lines_seen("run", 0) == len(day.lines) - 3


def test_the_end_of_report_judges_only_what_was_requested_before_the_report() -> None:
    cfg = MatchConfig(window_start=W0, window_end=W0 + 24 * HOUR, now=W0 + 2 * HOUR)
    judged = end_config(cfg)
    assert judged is not None and judged.window_end == cfg.now == judged.now
    later = MatchConfig(window_start=W0, window_end=W0 + HOUR, now=W0 + 2 * HOUR)
    assert end_config(later) == later
    assert end_config(MatchConfig(window_start=W0, window_end=W0 + HOUR, now=W0)) is None
    memory = RunMemory()
    day = make_day(W0)
    early = MatchConfig(W0, W0 + 24 * HOUR, now=W0)  # taken before anything was requested
    assert memory.end(early, "run", 0, day.states, 0) == ([], True)


def test_a_redelivered_line_counts_once() -> None:
    memory = RunMemory()
    day = make_day(W0, matched=1)
    line = day.lines[0]
    state = next(s for s in day.states if s.subscription_id == line.subscription_id)
    assert memory.match(day.cfg, "run", 1, line, state) is not None
    assert memory.match(day.cfg, "run", 1, line, state) is None
    assert memory.lines_seen("run", 1) == 1


def test_stale_runs_are_evicted() -> None:
    memory = RunMemory()
    feed_day(memory)
    memory.evict(older_than_s=-1)
    assert not memory.subs and not memory.parts


# ------------------------------------------------------------------------------ repairs
def test_repairs_are_derived_messages_keyed_by_subscription() -> None:
    day = make_day(W0)
    batch = reconcile(day.states, day.lines, day.cfg)
    states = {s.subscription_id: s for s in day.states}
    dup = next(i for i in batch.items if i.kind == "duplicate_charge")
    state = states[dup.subscription_id or ""]
    first = repair_for(dup, state, now=W0 + 25 * HOUR)
    second = repair_for(dup, state, now=W0 + 49 * HOUR)  # another run, later
    assert first is not None and second is not None
    assert first.topic == topics.COMMANDS and first.key == (dup.subscription_id or "").encode()
    cmd = decode_command(first.value)
    assert isinstance(cmd, RefundPayment)
    assert cmd.command_id == decode_command(second.value).command_id
    assert cmd.refund_id == duplicate_refund_key(dup.provider_id or "")
    assert cmd.command_id == derived_id(cmd.refund_id, "reconciliation-refund")
    assert (cmd.duplicate_of_provider_id, cmd.amount, cmd.actor, cmd.user_id) == (
        dup.provider_id,
        dup.theirs_amount,
        "reconciler",
        state.user_id,
    )
    missed = next(i for i in batch.items if i.kind == "missing_internal" and i.repair != "escalate")
    apply = repair_for(missed, states[missed.subscription_id or ""], now=0)
    assert apply is not None and apply.topic == topics.PROVIDER_EVENTS
    obs = decode_provider_event(apply.value)
    assert isinstance(obs, PaymentObserved) and obs.source == "reconciliation"
    for item in batch.items:
        if item.repair in ("none", "escalate"):
            assert repair_for(item, states.get(item.subscription_id or ""), now=0) is None


def test_no_refund_command_without_a_ledger_state() -> None:
    day = make_day(W0)
    dup = next(i for i in reconcile(day.states, day.lines, day.cfg).items if i.refund_key)
    assert repair_for(dup, None, now=0) is None
    empty = SubscriptionState(subscription_id="s", user_id="u")
    assert repair_for(dup, empty, now=0) is not None


# ----------------------------------------------------------------------------------- CLI
MSK = ZoneInfo("Europe/Moscow")


def test_dates_are_midnights_in_the_zone_and_times_need_one() -> None:
    assert cli.parse_when("2026-11-24", MSK) == dt_to_ms(datetime(2026, 11, 23, 21, tzinfo=UTC))
    assert cli.parse_when("2026-11-24T00:00:00Z", MSK) == W0
    assert cli.parse_when("2026-11-24T03:00:00+03:00", MSK) == W0
    with pytest.raises(cli.UsageError, match="no time zone"):
        cli.parse_when("2026-11-24T00:00:00", MSK)
    with pytest.raises(cli.UsageError, match="neither a date"):
        cli.parse_when("yesterday", MSK)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--from", "2026-11-25", "--to", "2026-11-24"], "--from must be before --to"),
        (["--from", "2026-11-24"], "--from and --to are required"),
        (["--from", "2026-11-24", "--to", "2026-13-01"], "neither a date"),
        (["--from", "2026-11-24", "--to", "2026-11-25", "--registry", "/nope.csv"], "does not"),
        (["--from", "2026-11-24", "--to", "2026-11-25", "--tz", "Mars/Base"], "time zone"),
        (["--from", "2026-11-24", "--to", "2026-11-25", "--timeout", "0"], "positive"),
        (["--show", "not-a-uuid"], "not a run id"),
        (["--show", "6f1c9e0a-3b7d-5c2e-9a41-0d8e2f7b6c15", "--from", "2026-11-24"], "--show"),
    ],
)
def test_cli_refuses_bad_input_with_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_cli_needs_a_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BILLING_POSTGRES_DSN", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--from", "2026-11-24", "--to", "2026-11-25"])
    assert exc.value.code == cli.EXIT_USAGE
    assert "BILLING_POSTGRES_DSN" in capsys.readouterr().err


# ------------------------------------------------------------------------------ nightly
def test_nightly_window_is_yesterday_in_the_zone() -> None:
    now = dt_to_ms(datetime(2026, 11, 25, 3, 30, tzinfo=MSK))
    start, end, day = nightly_window(now, MSK)
    assert day.isoformat() == "2026-11-24"
    assert start == dt_to_ms(datetime(2026, 11, 24, tzinfo=MSK))
    assert end - start == 24 * HOUR
    berlin = ZoneInfo("Europe/Berlin")  # the DST day in spring is 23 hours long
    start, end, day = nightly_window(dt_to_ms(datetime(2026, 3, 30, 2, tzinfo=berlin)), berlin)
    assert day.isoformat() == "2026-03-29" and end - start == 23 * HOUR


def test_recon_settings_default_and_override() -> None:
    class S:
        recon_timezone = "UTC"
        recon_pending_sla_s = 60
        kafka_partitions = 4

    cfg = ReconSettings.of(S())
    assert (cfg.timezone, cfg.pending_sla_ms, cfg.cron) == ("UTC", 60_000, "30 3 * * *")
    assert ReconSettings.of(object()) == ReconSettings()
    with pytest.raises(FeedError):
        ReconSettings(timezone="Nowhere/Land").zone()
    assert MatchConfig(0, 1, 1, cfg.pending_sla_ms).pending_sla_ms == 60_000


@pytest.mark.parametrize("nightly", [False, True])
def test_the_worker_gets_the_agent_and_the_nightly_crontab(nightly: bool, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, worker_id=f"recon-{nightly}")
    dsn = "postgresql://nobody@127.0.0.1:1/none"
    app = create_app(settings, agents=("ledger",), postgres_dsn=dsn)
    register_reconciler(
        app,
        declare(app, settings.kafka_partitions),
        app.billing_ledger_table,
        settings,
        dsn,
        nightly=nightly,
    )
    assert "reconcile" in app.agents
    tasks = [t.__name__ for t in app._app_tasks]
    assert ("nightly_reconciliation" in tasks) is nightly


def test_the_light_state_decode_matches_like_the_full_one() -> None:
    """``decode_for_match`` skips what the matcher never reads: the same items, lines and end
    of report alike, and the same repairs."""
    from reconciler.matcher import end_of_report, match_line
    from schemas.state import decode_state, encode_state
    from streams.reconcile.agent import decode_for_match

    day = make_day(W0)
    full = {s.subscription_id: decode_state(encode_state(s)) for s in day.states}
    light = {s.subscription_id: decode_for_match(encode_state(s)) for s in day.states}
    runs: dict[str, Any] = {}
    for line in sorted(day.lines, key=report_order):
        sub = line.subscription_id or ""
        a, run_a = match_line(full.get(sub), line, day.cfg, runs.get(sub))
        b, _ = match_line(light.get(sub), line, day.cfg, runs.get(sub))
        runs[sub] = run_a
        assert a == b
        assert a is not None and b is not None
        assert repair_for(a, full.get(sub), W0) == repair_for(b, light.get(sub), W0)
    for sub, state in full.items():
        assert end_of_report(state, day.cfg, runs.get(sub)) == end_of_report(
            light[sub], day.cfg, runs.get(sub)
        )


def test_the_end_of_report_skips_only_states_that_have_nothing_left() -> None:
    """A state whose every item in the judged window was accounted for when its last line
    was matched, and that the table still holds as the very same object, is skipped at the
    end of the report: the items are those of looking at every state."""
    from schemas.state import encode_state

    day = make_day(W0)
    raws = {s.subscription_id: encode_state(s) for s in day.states}
    memory = RunMemory()
    for line in sorted(day.lines, key=report_order):
        sub = line.subscription_id or ""
        raw = raws.get(sub)
        state = decode_state_for_test(raw)
        memory.match(day.cfg, "run", 0, line, state, raw)
    everything, _ = memory.end(day.cfg, "run", 0, day.states, len(day.lines))
    left = [
        s
        for s in day.states
        if not memory.unchanged_and_settled("run", s.subscription_id, raws[s.subscription_id])
    ]
    assert 0 < len(left) < len(day.states)
    assert memory.end(day.cfg, "run", 0, left, len(day.lines))[0] == everything
    # A state replaced in the table (the same content, another object) is looked at again.
    sub = day.states[0].subscription_id
    assert not memory.unchanged_and_settled("run", sub, bytes(bytearray(raws[sub])))
    memory.forget("run", 0)
    assert not memory.settled


def decode_state_for_test(raw: bytes | None) -> SubscriptionState | None:
    from streams.reconcile.agent import decode_for_match

    return decode_for_match(raw) if raw is not None else None
