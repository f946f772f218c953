"""The console names the same operator commands as the README (issue 15): every
``.venv/bin/billing …`` command a console page shows is written, as is, in the README, so an
admin who copies it from either runs the same thing (the README's commands are run as
written against the local stack by tests/e2e/test_local_stack.py and test_demo.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMAND = re.compile(r"`(\.venv/bin/billing [^`]+)`")


def _console_commands() -> dict[str, str]:
    found = {}
    for path in sorted((ROOT / "dashboard").rglob("*.py")):
        for command in COMMAND.findall(path.read_text()):
            found[command] = str(path.relative_to(ROOT))
    return found


def test_every_command_the_console_names_is_in_the_readme() -> None:
    commands = _console_commands()
    assert ".venv/bin/billing demo" in commands  # the empty overview points at the demo
    assert any(c.startswith(".venv/bin/billing reconcile") for c in commands)
    readme = (ROOT / "README.md").read_text()
    missing = {c: where for c, where in commands.items() if c not in readme}
    assert not missing, f"console commands not in the README as written: {missing}"
