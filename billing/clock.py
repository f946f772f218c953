"""The engine's one clock, ``now_ms()``: wall-clock time, epoch milliseconds UTC, optionally
shifted by an offset read from a file (tests only).

An edge, not a contract: it reads the environment (``BILLING_CLOCK_FILE``, once, at import)
and that file, which is why it is not in ``schemas/`` with the calendar
(``schemas/periods.py``). Every process of a stack started by the tests gets the same file,
so moving the clock there moves it for all of them.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


class _Clock:
    """Wall-clock time, optionally shifted by an offset read from a file.

    Tests set ``BILLING_CLOCK_FILE`` for every process of a stack and write an offset in
    milliseconds into it, so renewals, dunning steps and expiry happen in seconds. Unset (as
    in production), it is the plain wall clock. The file is re-read at most every 100 ms.
    """

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.offset_ms = 0
        self.read_at = 0.0

    def now_ms(self) -> int:
        if self.path is not None:
            mono = time.monotonic()
            if mono - self.read_at > 0.1:
                self.read_at = mono
                # keep the last offset on a failed read: the file is read again next time
                with contextlib.suppress(OSError, ValueError):
                    self.offset_ms = int(self.path.read_text().strip() or 0)
        return int(time.time() * 1000) + self.offset_ms


_clock = _Clock(os.environ.get("BILLING_CLOCK_FILE"))


def now_ms() -> int:
    """Now, epoch ms UTC: the one clock of the engine (see _Clock for the test offset)."""
    return _clock.now_ms()


def set_clock_offset(path: Path, offset_ms: int) -> None:
    """Write a clock offset for the processes that read ``path`` (tests only)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(int(offset_ms)))
    tmp.replace(path)
