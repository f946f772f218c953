"""The settings split (issue 12): one env prefix, no setting renamed, the README's names read.

The split is partial: ``CommonSettings`` and ``ProviderSettings`` are carved out of
``Settings``, which still holds every field; the per-process classes come next.
"""

from __future__ import annotations

import re
from pathlib import Path

from billing.config import CommonSettings, ProviderSettings, Settings

README = Path(__file__).resolve().parents[2] / "README.md"
# Named in the README but read outside the settings classes (test seeds, the test clock file).
NOT_SETTINGS = {"BILLING_E2E_SEED", "BILLING_CHAOS_SEED", "BILLING_CLOCK_FILE"}
COMMON = {
    "env",
    "state_dir",
    "log_level",
    "kafka_bootstrap",
    "kafka_partitions",
    "kafka_version",
    "postgres_dsn",
}


def test_common_holds_only_what_every_process_reads() -> None:
    assert set(CommonSettings.model_fields) == COMMON


def test_provider_adds_only_the_yookassa_client_and_emulator_address() -> None:
    added = set(ProviderSettings.model_fields) - COMMON
    assert added and all(n.startswith(("yookassa_", "provider_", "emulator_")) for n in added)


def test_every_class_keeps_the_one_prefix() -> None:
    for cls in (CommonSettings, ProviderSettings, Settings):
        assert cls.model_config.get("env_prefix") == "BILLING_"


def test_every_readme_setting_is_read_by_a_class() -> None:
    named = set(re.findall(r"BILLING_[A-Z0-9_]*[A-Z0-9]", README.read_text())) - NOT_SETTINGS
    read = {"BILLING_" + n.upper() for n in Settings.model_fields}
    assert named <= read
