"""The logging setup (billing/logs.py): JSON lines with ids, a bounded outage, quiet starts,
no secrets."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest

from billing.logs import (
    JsonFormatter,
    KnownNoise,
    RateLimit,
    SecretMask,
    dict_config,
    log_ids,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, Clock]]:
    """Root logging as a process configures it, into a buffer, with a fake clock."""
    buf = io.StringIO()
    clock = Clock()
    config = dict_config(process="test", secrets=["s3cret-jwt-value", "postgresql://u:pw-123@h/db"])
    config["handlers"]["default"]["stream"] = buf
    config["filters"]["rate"]["clock"] = clock
    config["filters"]["rate"]["burst"] = 3
    saved = logging.root.handlers[:], logging.root.level
    logging.config.dictConfig(config)
    try:
        yield buf, clock
    finally:
        logging.root.handlers[:] = saved[0]
        logging.root.setLevel(saved[1])


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_lines_are_json_with_bound_and_extra_ids(captured: tuple[io.StringIO, Clock]) -> None:
    buf, _ = captured
    log = logging.getLogger("billing.test")
    with log_ids(command_id="c-1", subscription_id="s-1"):
        log.info("accepted %s", "pay", extra={"payment_id": "p-1"})
    log.info("outside")
    first, second = lines(buf)
    assert first["msg"] == "accepted pay"
    assert first["level"] == "INFO" and first["process"] == "test"
    assert (first["command_id"], first["subscription_id"], first["payment_id"]) == (
        "c-1",
        "s-1",
        "p-1",
    )
    assert "command_id" not in second


def test_exception_is_one_line_with_its_traceback(captured: tuple[io.StringIO, Clock]) -> None:
    buf, _ = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("billing.test").exception("failed")
    (line,) = buf.getvalue().splitlines()
    assert "ValueError: boom" in json.loads(line)["exc"]


def test_a_broker_outage_logs_a_bounded_number_of_lines(
    captured: tuple[io.StringIO, Clock],
) -> None:
    """3,700 identical ERRORs a second for a minute → `burst` lines a minute per template."""
    buf, clock = captured
    log = logging.getLogger("aiokafka.client")
    for second in range(60):
        clock.now = 1000.0 + second
        for _ in range(3700):
            log.error('Unable connect to "%s:%s": %s', "127.0.0.1", 19092, "refused")
    assert len(lines(buf)) == 3
    clock.now = 1061.0  # next window: the first line says how many were dropped
    log.error('Unable connect to "%s:%s": %s', "127.0.0.1", 19092, "refused")
    last = lines(buf)[-1]
    assert last["suppressed"] == 60 * 3700 - 3
    assert "similar lines suppressed" in str(last["msg"])


def test_the_limit_is_per_message_template(captured: tuple[io.StringIO, Clock]) -> None:
    buf, _ = captured
    for _ in range(10):
        logging.getLogger("aiokafka").error("a %s", 1)
        logging.getLogger("aiokafka").error("b %s", 1)
        logging.getLogger("billing.x").warning("a %s", 1)
    assert len(lines(buf)) == 9


def test_ordinary_info_lines_are_not_limited(captured: tuple[io.StringIO, Clock]) -> None:
    buf, _ = captured
    for i in range(50):
        logging.getLogger("billing.relay").info("republished %d", i)
    assert len(lines(buf)) == 50


def test_known_start_noise_is_not_an_error(captured: tuple[io.StringIO, Clock]) -> None:
    buf, _ = captured
    logging.getLogger("aiokafka.cluster").error(
        "Topic %s not found in cluster metadata", "billing-1-__assignor-__leader"
    )
    logging.getLogger("aiokafka.consumer.group_coordinator").error(
        "Group Coordinator Request failed: %s", "[Error 15] GroupCoordinatorNotAvailableError"
    )
    logging.getLogger("aiokafka.cluster").error(
        "Topic %s not found in cluster metadata", "billing.commands"
    )
    levels = [line["level"] for line in lines(buf)]
    assert levels == ["INFO", "WARNING", "ERROR"]  # a billing topic missing is still an ERROR


def test_secrets_are_masked_in_messages_and_tracebacks(
    captured: tuple[io.StringIO, Clock],
) -> None:
    buf, _ = captured
    log = logging.getLogger("billing.test")
    log.warning("connect to %s failed", "postgresql://u:pw-123@h/db")
    try:
        raise RuntimeError("bad token s3cret-jwt-value")
    except RuntimeError:
        log.exception("auth")
    text = buf.getvalue()
    assert "pw-123" not in text and "s3cret-jwt-value" not in text
    assert text.count("***") >= 2


def test_filters_alone() -> None:
    """The filters without dictConfig (what a test of another module may build)."""
    record = logging.LogRecord("aiokafka", logging.ERROR, "f", 1, "x %s", ("y",), None)
    assert KnownNoise().filter(record) and record.levelno == logging.ERROR
    limit = RateLimit(burst=1, clock=Clock())
    assert limit.filter(record) and not limit.filter(record)
    masked = logging.LogRecord("b", logging.INFO, "f", 1, "k=%s", ("abcd1234",), None)
    assert SecretMask(["abcd1234"]).filter(masked) and masked.getMessage() == "k=***"
    assert json.loads(JsonFormatter("p").format(masked))["msg"] == "k=***"
