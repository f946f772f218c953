"""Reconciliation contracts on ``billing.provider-report``.

A run publishes each provider report line in an envelope that names the run, keyed by the
line's subscription id (the line's provider id when the provider object names no
subscription), so the line lands on the partition whose ledger state it is matched against.
After the last line the feeder publishes one end-of-report marker on EVERY partition, carrying
how many distinct lines it sent there: the reconcile agent holding that partition then looks
for what the ledger has in the window that the provider never reported, and can tell whether
it saw every line of the partition itself (a worker that took the partition over mid-run did
not, and must not judge what the lines it never saw accounted for).

The run's window, clock (``taken_at``) and SLAs are in PostgreSQL (``recon_runs``), written by
whoever starts the run before the first line is published; the messages carry only the run id.

msgspec JSON with a ``type`` tag, like every other billing message. The line itself is the
matcher's contract (``reconciler.report.ReportLine``: ``object`` tagged payment or refund).
"""

from __future__ import annotations

import msgspec

from reconciler.report import PaymentLine, ReportLine

REPORT_LINE = "line"
END_OF_REPORT = "end"


class ReportEnvelope(msgspec.Struct, tag_field="type", tag=REPORT_LINE, frozen=True, kw_only=True):
    """One provider object of run ``run_id``."""

    run_id: str
    line: ReportLine


class EndOfReport(msgspec.Struct, tag_field="type", tag=END_OF_REPORT, frozen=True, kw_only=True):
    """The end of run ``run_id`` on ``partition``; ``lines_sent`` distinct lines preceded it
    there (distinct by object and provider id: a line sent twice counts once)."""

    run_id: str
    partition: int
    lines_sent: int


ReportMessage = ReportEnvelope | EndOfReport

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ReportMessage)


def encode_report_message(msg: ReportMessage) -> bytes:
    return _encoder.encode(msg)


def decode_report_message(data: bytes) -> ReportMessage:
    return _decoder.decode(data)  # type: ignore[no-any-return]


def line_key(line: ReportLine) -> str:
    """A line's identity within a run: its object and provider id."""
    if isinstance(line, PaymentLine):
        return f"payment:{line.provider_payment_id}"
    return f"refund:{line.provider_refund_id}"


def message_key(line: ReportLine) -> bytes:
    """The Kafka key of a line: its subscription id, else its provider id (an object that
    names no subscription of ours still needs a partition, and is classified without one)."""
    if line.subscription_id:
        return line.subscription_id.encode()
    return line_key(line).encode()


def marker_key(run_id: str) -> bytes:
    """The Kafka key of a marker (the partition is explicit; the key only labels it)."""
    return f"end-of-report:{run_id}".encode()
