"""Reconciliation contracts: provider report lines and the messages of
``billing.provider-report``, with their one codec.

A report line is one provider object (payment or refund) as the provider's books show it,
the contract between whatever reads those books (``reconciler.feed``: the list API, a
registry file read by ``reconciler.report``) and the matcher. Each line carries our ids from
the metadata we sent at create (``subscription_id`` is the Kafka key of the line). Times are
epoch milliseconds UTC, like every message; amounts are ``Money``.

A run publishes its lines in messages that name the run, on the partition of each line's
subscription (the line's provider id when the provider object names no subscription), so a
line lands on the partition whose ledger state it is matched against: one line per
``ReportEnvelope``, or up to a few hundred lines of one partition per ``ReportBatch`` (in
report order). After the last line the feeder publishes one end-of-report marker on EVERY
partition, carrying how many distinct lines it sent there: the reconcile agent holding that
partition then looks for what the ledger has in the window that the provider never
reported, and can tell whether it saw every line of the partition itself (a worker that
took the partition over mid-run did not, and must not judge what the lines it never saw
accounted for).

The run's window, clock (``taken_at``) and SLAs are in PostgreSQL (``recon_runs``), written by
whoever starts the run before the first line is published; the messages carry only the run id.

msgspec JSON with a ``type`` tag, like every other billing message; a line is tagged by its
``object`` (payment or refund).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.codec import JsonCodec
from schemas.messages import ProviderStatus
from schemas.money import Money

RefundStatus = Literal["pending", "succeeded", "canceled"]
PAYMENT_STATUSES: frozenset[str] = frozenset(
    {"pending", "waiting_for_capture", "succeeded", "canceled"}
)
REFUND_STATUSES: frozenset[str] = frozenset({"pending", "succeeded", "canceled"})


# ---------------------------------------------------------------------------- report lines
class PaymentLine(msgspec.Struct, tag_field="object", tag="payment", frozen=True, kw_only=True):
    """One provider payment as the report saw it."""

    provider_payment_id: str
    status: ProviderStatus
    amount: Money
    paid: bool = False
    created_at: int | None = None
    subscription_id: str | None = None
    payment_id: str | None = None
    user_id: str | None = None
    cancellation_party: str | None = None
    cancellation_reason: str | None = None
    payment_method_id: str | None = None
    payment_method_saved: bool = False


class RefundLine(msgspec.Struct, tag_field="object", tag="refund", frozen=True, kw_only=True):
    """One provider refund as the report saw it."""

    provider_refund_id: str
    provider_payment_id: str
    status: RefundStatus
    amount: Money
    created_at: int | None = None
    subscription_id: str | None = None
    payment_id: str | None = None
    refund_id: str | None = None
    cancellation_reason: str | None = None


ReportLine = PaymentLine | RefundLine


def provider_id_of(line: ReportLine) -> str:
    """The provider's id of the object a line describes (payment or refund)."""
    return line.provider_payment_id if isinstance(line, PaymentLine) else line.provider_refund_id


def report_order(line: ReportLine) -> tuple[int, str, str]:
    """Oldest first, then by object and id: the order the batch matcher processes a report
    in. A feeder that wants the streaming path to agree with the batch on which of two
    charges is "the later one" publishes each subscription's lines in this order."""
    created = line.created_at if line.created_at is not None else -1
    return created, type(line).__name__, provider_id_of(line)


def encode_line(line: ReportLine) -> bytes:
    """One line alone (msgspec JSON tagged by ``object``); topic messages carry lines in
    their envelopes (``encode_report_message``)."""
    return msgspec.json.encode(line)


def decode_line(data: bytes) -> ReportLine:
    return msgspec.json.decode(data, type=ReportLine)  # type: ignore[arg-type,no-any-return]


# ------------------------------------------------------------- billing.provider-report
REPORT_LINE = "line"
REPORT_LINES = "lines"
END_OF_REPORT = "end"


class ReportEnvelope(msgspec.Struct, tag_field="type", tag=REPORT_LINE, frozen=True, kw_only=True):
    """One provider object of run ``run_id``."""

    run_id: str
    line: ReportLine


class ReportBatch(msgspec.Struct, tag_field="type", tag=REPORT_LINES, frozen=True, kw_only=True):
    """Lines of run ``run_id`` for ``partition``, in report order: the same as that many
    ``ReportEnvelope`` messages (each line is distinct by object and provider id, and counts
    in the marker's ``lines_sent``). Keyed by ``batch_key``; the partition is explicit."""

    run_id: str
    partition: int
    lines: list[ReportLine]


class EndOfReport(msgspec.Struct, tag_field="type", tag=END_OF_REPORT, frozen=True, kw_only=True):
    """The end of run ``run_id`` on ``partition``; ``lines_sent`` distinct lines preceded it
    there (distinct by object and provider id: a line sent twice counts once)."""

    run_id: str
    partition: int
    lines_sent: int


ReportMessage = ReportEnvelope | ReportBatch | EndOfReport

# A message of billing.provider-report: one line, lines of a partition, or a marker.
_codec: JsonCodec[ReportMessage] = JsonCodec(ReportMessage)
encode_report_message = _codec.encode
decode_report_message = _codec.decode


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


def batch_key(run_id: str, partition: int) -> bytes:
    """The Kafka key of a ``ReportBatch`` (the partition is explicit; the key labels it)."""
    return f"report-lines:{run_id}:{partition}".encode()


def marker_key(run_id: str) -> bytes:
    """The Kafka key of a marker (the partition is explicit; the key only labels it)."""
    return f"end-of-report:{run_id}".encode()
