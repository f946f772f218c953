"""The scan of a run's logs for secret values (tests/e2e/test_demo.py greps every process's
log of a full run with it; tests/unit/test_secret_scan.py plants secrets to show it finds
them).

A secret is looked for as written and as the logs would write it: our JSON lines escape a
quote or a backslash (``json.dumps``), and a URL or DSN may carry it percent-encoded. The
findings name the file and which secret (by its position), never the value: an assertion
message must not be one more place the secret is written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote


def forms(secret: str) -> set[str]:
    """The ways a log line may hold ``secret``."""
    return {
        secret,
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
    } - {""}


def secrets_in(logs: Iterable[Path], secrets: Iterable[str]) -> list[str]:
    """``file: secret #i`` for each log that holds one of ``secrets`` (in any of its forms)."""
    wanted = [(i, forms(s)) for i, s in enumerate(sorted(set(secrets))) if s]
    found: list[str] = []
    for path in logs:
        text = path.read_text(errors="replace")
        found += [f"{path.name}: secret #{i}" for i, f in wanted if any(x in text for x in f)]
    return found
