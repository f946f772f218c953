"""Logs for people: one JSON object per line, the ids that matter, bounded in an outage.

Every process configures logging through :func:`configure` (or hands :func:`dict_config` to
Faust, which sets up logging itself). What it does, and why:

- **JSON lines** (``BILLING_LOG_FORMAT=json``, the default; ``text`` for a terminal): ``ts``,
  ``level``, ``logger``, ``process``, ``msg``, the ids in :data:`ID_FIELDS` (from
  :func:`log_ids` or ``extra=``), ``exc`` with the traceback, ``suppressed`` (below).
- **Ids without threading them through calls**: :func:`log_ids` binds ids (command, payment,
  refund, subscription, run) to the current task; every line logged under it carries them.
- **Bounded**: while the broker is down aiokafka logs thousands of ERROR lines a second per
  client. :class:`RateLimit` lets ``burst`` lines of one logger + level + message template
  through per ``window_s`` and counts the rest; the next line let through says how many were
  suppressed. So an outage costs a few lines a minute per distinct message, not gigabytes.
- **Quiet starts**: :class:`KnownNoise` lowers messages that every ordinary start produces
  and that are retried by the client (a group coordinator not elected yet, Faust's own
  ``__assignor-__leader`` topic not in the metadata right after it created it) from ERROR to
  WARNING/INFO, so an ERROR line means something.
- **Secrets never logged**: :class:`SecretMask` replaces every configured secret value in a
  line with ``***`` (settings keep secrets in ``SecretStr``; this catches a DSN or a token in
  an exception text).
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.config
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

ID_FIELDS = (
    "command_id",
    "payment_id",
    "refund_id",
    "subscription_id",
    "run_id",
    "event_id",
    "provider_id",
)

_NO_IDS: Mapping[str, str] = MappingProxyType({})
_IDS: ContextVar[Mapping[str, str]] = ContextVar("billing_log_ids", default=_NO_IDS)


@contextlib.contextmanager
def log_ids(**ids: object) -> Iterator[None]:
    """Bind ids to every line logged inside the block (this task and what it awaits)."""
    token = _IDS.set({**_IDS.get(), **{k: str(v) for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _IDS.reset(token)


def bind_ids(**ids: object) -> None:
    """Replace the ids of the current task (a loop that handles one input per iteration)."""
    _IDS.set({k: str(v) for k, v in ids.items() if v is not None})


def current_ids() -> Mapping[str, str]:
    return _IDS.get()


# ------------------------------------------------------------------------------ formatter
class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on odd arguments."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.process:
            out["process"] = self.process
        out.update(current_ids())
        for name in ID_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = str(value)
        suppressed = record.__dict__.get("suppressed")
        if suppressed:
            out["suppressed"] = suppressed
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The plain format, with the bound ids appended (``BILLING_LOG_FORMAT=text``)."""

    def __init__(self, process: str = "") -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = dict(current_ids())
        ids.update(
            {n: str(record.__dict__[n]) for n in ID_FIELDS if record.__dict__.get(n) is not None}
        )
        if record.__dict__.get("suppressed"):
            ids["suppressed"] = str(record.__dict__["suppressed"])
        if ids:
            line += " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]"
        return line


# -------------------------------------------------------------------------------- filters
@dataclass(frozen=True)
class Noise:
    """A known message (logger prefix + template) lowered to ``level`` when ``needle`` is in
    the formatted arguments (empty: always)."""

    logger: str
    template: str
    level: int
    needle: str = ""


KNOWN_NOISE: tuple[Noise, ...] = (
    # Faust creates its leader-assignor topic at start and asks for its metadata at once.
    Noise(
        "aiokafka", "Topic %s not found in cluster metadata", logging.INFO, "__assignor-__leader"
    ),
    # No coordinator elected yet (broker just started) or moving: the client retries.
    Noise(
        "aiokafka",
        "Group Coordinator Request failed: %s",
        logging.WARNING,
        "GroupCoordinatorNotAvailable",
    ),
    Noise("aiokafka", "FindCoordinator Request failed: %s", logging.WARNING, "CoordinatorNotAvail"),
)


class KnownNoise(logging.Filter):
    """Lowers the level of :data:`KNOWN_NOISE` (a handler filter: runs before formatting)."""

    def __init__(self, noise: Iterable[Noise] = KNOWN_NOISE) -> None:
        super().__init__()
        self.noise = tuple(noise)

    def filter(self, record: logging.LogRecord) -> bool:
        for n in self.noise:
            if record.levelno > n.level and record.name.startswith(n.logger):
                if record.msg != n.template:
                    continue
                if n.needle and n.needle not in repr(record.args):
                    continue
                record.levelno = n.level
                record.levelname = logging.getLevelName(n.level)
                break
        return True


class RateLimit(logging.Filter):
    """At most ``burst`` lines per ``window_s`` for each (logger, level, message template).

    Applies to WARNING and above, and to every level of the chatty client libraries in
    ``always`` (aiokafka, kafka). The first line let through after lines were suppressed
    carries ``suppressed`` (how many) and says so in its message.
    """

    def __init__(
        self,
        burst: int = 10,
        window_s: float = 60.0,
        always: Iterable[str] = ("aiokafka", "kafka"),
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.always = tuple(always)
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [window start, let through in window, suppressed since last let through]
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and not record.name.startswith(self.always):
            return True
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window_s:
                suppressed = int(entry[2]) if entry is not None else 0
                self._seen[key] = [now, 1, 0]
                if len(self._seen) > 10_000:  # bounded memory for unbounded templates
                    self._seen = {key: self._seen[key]}
            elif entry[1] < self.burst:
                entry[1] += 1
                suppressed = int(entry[2])
                entry[2] = 0
            else:
                entry[2] += 1
                return False
        if suppressed:
            record.suppressed = suppressed
            record.msg = f"{record.msg} [{suppressed} similar lines suppressed]"
        return True


class SecretMask(logging.Filter):
    """Replaces each secret value (and the password inside a URL or DSN) with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in _expand(secrets) if len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        text = record.getMessage()
        exc = ""
        if record.exc_info:
            exc = logging.Formatter().formatException(record.exc_info)
        if not any(s in text or s in exc for s in self.secrets):
            return True
        for s in self.secrets:
            text = text.replace(s, "***")
            exc = exc.replace(s, "***")
        record.msg, record.args = text, None
        if exc:
            record.exc_info, record.exc_text = None, exc
        return True


def _expand(secrets: Iterable[str]) -> Iterator[str]:
    """A DSN or URL is a secret as a whole and by its password."""
    for s in secrets:
        if not s:
            continue
        yield s
        with contextlib.suppress(ValueError):
            parts = urlsplit(s)
            if parts.password:
                yield parts.password
        for part in s.split():  # key=value DSNs
            if part.startswith("password="):
                yield part.removeprefix("password=")


def secrets_of(settings: object) -> list[str]:
    """Every secret value a settings object holds (its ``SecretStr`` fields)."""
    from pydantic import SecretStr

    out = []
    fields: Iterable[str] = getattr(type(settings), "model_fields", {})
    for name in fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            out.append(value.get_secret_value())
    return out


# ----------------------------------------------------------------------------- configure
def dict_config(
    *,
    process: str,
    level: str = "INFO",
    fmt: str = "json",
    secrets: Iterable[str] = (),
    burst: int = 10,
    window_s: float = 60.0,
) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for one process: stdout, the filters above."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter, "process": process}},
        "filters": {
            "noise": {"()": KnownNoise},
            "rate": {"()": RateLimit, "burst": burst, "window_s": window_s},
            "secrets": {"()": SecretMask, "secrets": list(secrets)},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": sys.stdout,
                "formatter": "default",
                "filters": ["noise", "rate", "secrets"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
        "loggers": {
            # Each request is in billing_http_requests_total; access lines would be the bulk.
            "uvicorn.access": {"level": "WARNING"},
        },
    }


def configure(settings: Any, process: str) -> dict[str, Any]:
    """Configure this process's logging from its settings; returns the config applied."""
    config = dict_config(
        process=process,
        level=str(getattr(settings, "log_level", "INFO")),
        fmt=str(getattr(settings, "log_format", "json")),
        secrets=secrets_of(settings),
    )
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
    return config
