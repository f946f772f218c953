"""The local stack's files: the emulator keeps its objects in a state file across restarts,
the CLI reads the stack's settings file for what its environment leaves unset, and readiness
is read from this run's output only (issue 15)."""

from __future__ import annotations

import sys
from pathlib import Path

from billing.processes import (
    ManagedProcess,
    load_stack_env,
    read_stack_env,
    write_stack_env,
)
from providers.emulator.app import Emulator
from providers.emulator.store import EmulatorConfig

BODY = {
    "amount": {"value": "299.00", "currency": "RUB"},
    "capture": True,
    "confirmation": {"type": "redirect", "return_url": "https://cinema.example/return"},
    "save_payment_method": True,
    "metadata": {"payment_id": "p-1"},
}


def test_a_restarted_emulator_knows_its_payments_refunds_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "emulator" / "objects.json"
    first = Emulator(EmulatorConfig(), state_path=path)
    paid, _ = first.store.create_payment(BODY, "key-1", "http://emu")
    first.store.confirm(paid["id"], True)
    refund, _ = first.store.create_refund(
        {"payment_id": paid["id"], "amount": {"value": "100.00", "currency": "RUB"}}, "r-1"
    )
    pending, _ = first.store.create_payment(dict(BODY, metadata={}), "key-2", "http://emu")
    first.save_if_changed()

    again = Emulator(EmulatorConfig(), state_path=path)
    assert again.store.get_payment(paid["id"]) == first.store.get_payment(paid["id"])
    assert again.store.get_refund(refund["id"])["status"] == "succeeded"
    assert again.store.get_payment(pending["id"])["status"] == "pending"
    # The same key is still a replay (no second payment), and the pending payment's
    # confirmation timeout still fires.
    replay, created = again.store.create_payment(BODY, "key-1", "http://emu")
    assert (replay["id"], created) == (paid["id"], False)
    again.store.clock.advance(2 * 3600)
    again.store.tick()
    assert again.store.get_payment(pending["id"])["status"] == "canceled"


def test_without_a_state_file_nothing_is_written(tmp_path: Path) -> None:
    emu = Emulator(EmulatorConfig())
    emu.store.create_payment(BODY, "key-1", "http://emu")
    emu.save_if_changed()
    assert list(tmp_path.iterdir()) == []


def test_the_cli_fills_unset_settings_from_the_stack_env(tmp_path: Path) -> None:
    write_stack_env(
        tmp_path,
        {
            "BILLING_POSTGRES_DSN": "postgresql://u@127.0.0.1:5/billing",
            "BILLING_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
            "BILLING_JWT_SECRET": "never-written",
            "PATH": "/bin",
        },
    )
    assert (tmp_path / "stack.env").stat().st_mode & 0o077 == 0
    assert set(read_stack_env(tmp_path / "stack.env")) == {
        "BILLING_POSTGRES_DSN",
        "BILLING_KAFKA_BOOTSTRAP",
    }
    environ = {"BILLING_STATE_DIR": str(tmp_path), "BILLING_KAFKA_BOOTSTRAP": "10.0.0.1:9092"}
    assert load_stack_env(environ) == tmp_path / "stack.env"
    assert environ["BILLING_POSTGRES_DSN"] == "postgresql://u@127.0.0.1:5/billing"
    assert environ["BILLING_KAFKA_BOOTSTRAP"] == "10.0.0.1:9092"  # set wins
    assert load_stack_env({"BILLING_STATE_DIR": str(tmp_path / "none")}) is None


def test_readiness_ignores_an_earlier_runs_ready_line(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text("[^Worker]: Ready\n")  # the previous run's
    proc = ManagedProcess(
        "quiet", [sys.executable, "-c", "import time; time.sleep(0.2)"], log_path=log
    )
    proc.start()
    try:
        assert not proc.output_contains("Ready")()
    finally:
        proc.stop()
    proc = ManagedProcess("ready", [sys.executable, "-c", "print('Ready')"], log_path=log)
    proc.start()
    assert proc.proc is not None
    proc.proc.wait(10)
    assert proc.output_contains("Ready")()
