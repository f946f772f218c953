"""The secret scan of the e2e logs (tests/secret_scan.py) is shown to fail: a secret planted
in a process's log through the real logging setup (JSON lines) is found, as written, JSON-
escaped, inside a traceback or percent-encoded in a URL; the same lines logged with the
secret masked (billing.logs.SecretMask, as every process configures it) pass."""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from billing.logs import dict_config
from tests.secret_scan import secrets_in

Configure = Callable[[str, list[str]], Path]  # a process's log file, with these masked

PLAIN = "shop-key-3f9a1c7e5b"
QUOTED = 'pa"ss\\word-77'  # JSON lines write it escaped: a plain grep misses it
DSN = "postgresql://billing:db-pass-4242@db:5432/billing"


@pytest.fixture
def log_to(tmp_path: Path) -> Iterator[Configure]:
    saved = logging.root.handlers[:], logging.root.level

    def configure(name: str, secrets: list[str]) -> Path:
        path = tmp_path / f"{name}.log"
        config = dict_config(process=name, secrets=secrets)
        config["handlers"]["default"] = {
            "class": "logging.FileHandler",
            "filename": str(path),
            "formatter": "default",
            "filters": config["handlers"]["default"].get("filters", []),
        }
        logging.config.dictConfig(config)
        return path

    yield configure
    for handler in logging.root.handlers:
        handler.close()
    logging.root.handlers[:] = saved[0]
    logging.root.setLevel(saved[1])


def _leak() -> None:
    log = logging.getLogger("billing.leaky")
    log.info("calling the provider with key %s", PLAIN)
    log.warning("login refused for password %s", QUOTED)
    try:
        raise ConnectionError(f"cannot connect to {DSN}")
    except ConnectionError:
        log.exception("database down")
    log.info("redirect to https://x.test/?p=%s", quote("db-pass-4242", safe=""))


def test_a_planted_secret_is_found_in_every_form(log_to: Configure) -> None:
    path = log_to("api", [])  # no mask: the secrets get through
    _leak()
    text = path.read_text()
    assert QUOTED not in text  # escaped in the JSON line: only the escaped form is there
    found = secrets_in([path], [PLAIN, QUOTED, DSN, "db-pass-4242"])
    assert len(found) == 4, found
    assert all(f.startswith("api.log: secret #") for f in found)
    assert not any(s in " ".join(found) for s in (PLAIN, QUOTED, DSN))  # never the value


def test_the_same_lines_masked_pass(log_to: Configure) -> None:
    path = log_to("worker", [PLAIN, QUOTED, DSN])
    _leak()
    assert "***" in path.read_text()
    assert secrets_in([path], [PLAIN, QUOTED, DSN, "db-pass-4242"]) == []
