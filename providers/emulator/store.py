"""The emulator's state: payments, refunds, saved methods, idempotence records and the
timers that move payments on by themselves. No HTTP here: the app maps ``ApiFailure`` to
YooKassa's error body and ``Notice`` to notifications.

Everything runs on the emulator clock (wall time plus an offset a test can advance), so hold
expiry, confirmation timeouts and the 24-hour key window can be tested in seconds.

The objects can be kept in a file (``Store.dump``/``Store.restore``, JSON): the local stack
does, so a restarted emulator still knows the payments the ledger is waiting for (a pending
payment the provider had forgotten would block its user with ``payment_in_progress``).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import heapq
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import msgspec

from schemas.money import CURRENCY_EXPONENT, Money, MoneyError

JSON = dict[str, Any]

IDEMPOTENCE_TTL_S = 24 * 3600.0
MAX_KEY_LEN = 64
DECLINE_PARTY = "payment_network"

AutoConfirm = Literal["none", "succeed", "cancel"]


class ApiFailure(Exception):
    """A YooKassa error answer: HTTP status, code, description and the offending parameter."""

    def __init__(
        self, status: int, code: str, description: str, parameter: str | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.parameter = parameter


def bad_request(description: str, parameter: str | None = None) -> ApiFailure:
    return ApiFailure(400, "invalid_request", description, parameter)


@dataclass
class EmulatorConfig:
    """Behaviour knobs, all settable through ``POST /__emulator/config``."""

    shop_id: str = "100500"
    secret_key: str = "emulator-secret"
    webhook_url: str = ""
    # None: fresh entropy, so ids never repeat across restarts (a persisted ledger would
    # mistake a new payment for an old one). A seed makes ids and draws reproducible.
    seed: int | None = None
    # Load tests: the "user" confirms by itself this long after create.
    auto_confirm: AutoConfirm = "none"
    auto_confirm_delay_s: float = 0.0
    auto_confirm_reason: str = "insufficient_funds"
    # Autopayments (payment_method_id): declined with this probability and reason.
    autopay_decline_rate: float = 0.0
    autopay_decline_reason: str = "insufficient_funds"
    confirmation_window_s: float = 3600.0
    hold_s: float = 7 * 24 * 3600.0
    refund_result: Literal["succeed", "cancel"] = "succeed"
    fee_percent: str = "3.5"
    # Notification redelivery on non-200: backoff doubling from base to cap, for at most this.
    notify_timeout_s: float = 5.0
    notify_backoff_s: float = 0.2
    notify_max_backoff_s: float = 5.0
    notify_retry_for_s: float = 60.0
    # 54-FZ: the shop is registered for receipts. A payment captured at once, a capture and a
    # refund without a valid ``receipt`` are refused (400 invalid_request, parameter
    # ``receipt``); a hold may take its receipt at capture. A receipt sent is checked anyway.
    require_receipts: bool = False

    def update(self, changes: JSON) -> None:
        names = {f.name: f for f in fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown config field {key!r}")
            current = getattr(self, key)
            if isinstance(current, bool) or current is None:
                setattr(self, key, value)
            elif isinstance(current, float):
                setattr(self, key, float(value))
            elif isinstance(current, int):
                setattr(self, key, int(value))
            else:
                setattr(self, key, str(value))
        if self.auto_confirm not in ("none", "succeed", "cancel"):
            raise ValueError("auto_confirm must be none, succeed or cancel")
        if self.refund_result not in ("succeed", "cancel"):
            raise ValueError("refund_result must be succeed or cancel")
        if not 0.0 <= self.autopay_decline_rate <= 1.0:
            raise ValueError("autopay_decline_rate must be within 0..1")

    def public(self) -> JSON:
        data = asdict(self)
        data.pop("secret_key")
        return data


class Clock:
    """Wall time plus an offset; only ever moves forward."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def now(self) -> float:
        return time.time() + self.offset_s

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset_s += seconds


def iso(ts: float) -> str:
    """YooKassa's timestamp format: UTC, milliseconds, ``Z``."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise bad_request(f"not an ISO-8601 time: {value!r}") from exc


VAT_CODES = range(1, 11)
TAX_SYSTEM_CODES = range(1, 7)
PAYMENT_MODES = {
    "full_prepayment",
    "partial_prepayment",
    "advance",
    "full_payment",
    "partial_payment",
    "credit",
    "credit_payment",
}
PAYMENT_SUBJECTS = {
    "commodity",
    "excise",
    "job",
    "service",
    "gambling_bet",
    "gambling_prize",
    "lottery",
    "lottery_prize",
    "intellectual_activity",
    "payment",
    "agent_commission",
    "property_right",
    "non_operating_gain",
    "insurance_premium",
    "sales_tax",
    "resort_fee",
    "composite",
    "another",
}


def check_receipt(raw: Any, amount: Money, *, required: bool) -> JSON | None:
    """A 54-FZ ``receipt`` as YooKassa checks it (YOOKASSA-API.md §7): a customer email or
    phone, items with description, positive quantity, amount, vat_code 1..10, a known
    payment_mode and payment_subject, whose amount x quantity add up to ``amount`` exactly;
    tax_system_code 1..6 if given. None when absent and not ``required``."""
    if raw is None:
        if required:
            raise bad_request("Receipt is missing or illegal", "receipt")
        return None
    if not isinstance(raw, dict):
        raise bad_request("receipt must be an object", "receipt")
    customer = raw.get("customer")
    if not isinstance(customer, dict) or not (customer.get("email") or customer.get("phone")):
        raise bad_request("receipt.customer needs an email or a phone", "receipt.customer")
    phone = customer.get("phone")
    if phone is not None and not (isinstance(phone, str) and phone.isdigit()):
        raise bad_request("receipt.customer.phone must be digits", "receipt.customer.phone")
    email = customer.get("email")
    if email is not None and not (isinstance(email, str) and "@" in email):
        raise bad_request("receipt.customer.email is invalid", "receipt.customer.email")
    tax = raw.get("tax_system_code")
    if tax is not None and (isinstance(tax, bool) or tax not in TAX_SYSTEM_CODES):
        raise bad_request("tax_system_code must be within 1..6", "receipt.tax_system_code")
    items = raw.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= 100:
        raise bad_request("receipt.items: 1 to 100 items", "receipt.items")
    total = Decimal(0)
    for n, item in enumerate(items):
        where = f"receipt.items[{n}]"
        if not isinstance(item, dict):
            raise bad_request("an item must be an object", where)
        text = item.get("description")
        if not isinstance(text, str) or not 1 <= len(text) <= 128:
            raise bad_request("description: 1 to 128 chars", f"{where}.description")
        try:
            quantity = Decimal(str(item.get("quantity")))
        except InvalidOperation as exc:
            raise bad_request("quantity must be a number", f"{where}.quantity") from exc
        if not quantity.is_finite() or quantity <= 0:
            raise bad_request("quantity must be positive", f"{where}.quantity")
        price = parse_amount(item.get("amount"), f"{where}.amount")
        if price.currency != amount.currency:
            raise bad_request("item currency differs", f"{where}.amount.currency")
        vat = item.get("vat_code")
        if isinstance(vat, bool) or vat not in VAT_CODES:
            raise bad_request("vat_code must be within 1..10", f"{where}.vat_code")
        if item.get("payment_mode") not in PAYMENT_MODES:
            raise bad_request("unknown payment_mode", f"{where}.payment_mode")
        if item.get("payment_subject") not in PAYMENT_SUBJECTS:
            raise bad_request("unknown payment_subject", f"{where}.payment_subject")
        total += price.to_decimal() * quantity
    if total != amount.to_decimal():
        raise bad_request(
            f"the receipt's items sum to {total}, not the amount {amount.to_decimal()}",
            "receipt.items",
        )
    return raw


def money_json(m: Money) -> JSON:
    return m.to_provider()


def parse_amount(raw: Any, parameter: str = "amount") -> Money:
    if not isinstance(raw, dict):
        raise bad_request("amount is required", parameter)
    value, currency = raw.get("value"), raw.get("currency")
    if not isinstance(currency, str) or currency not in CURRENCY_EXPONENT:
        raise bad_request("unsupported currency", f"{parameter}.currency")
    try:
        money = Money.from_decimal(str(value), currency)
    except MoneyError as exc:
        raise bad_request(str(exc), f"{parameter}.value") from exc
    if money.amount_minor <= 0:
        raise bad_request("amount.value must be positive", f"{parameter}.value")
    return money


@dataclass
class PaymentRecord:
    id: str
    seq: int
    status: str
    amount: Money
    created_at: float
    capture: bool
    description: str | None
    metadata: dict[str, str]
    save_payment_method: bool
    return_url: str | None
    confirmation_url: str | None
    autopayment_of: str | None = None
    paid: bool = False
    captured_amount: Money | None = None
    captured_at: float | None = None
    expires_at: float | None = None
    confirm_deadline: float | None = None
    refunded_minor: int = 0
    saved: bool = False
    cancellation: tuple[str, str] | None = None
    card_last4: str = "4444"
    receipt: JSON | None = None
    receipt_registration: str | None = None


@dataclass
class RefundRecord:
    id: str
    seq: int
    payment_id: str
    status: str
    amount: Money
    created_at: float
    description: str | None
    metadata: dict[str, str] | None
    cancellation: tuple[str, str] | None = None
    receipt: JSON | None = None
    receipt_registration: str | None = None


@dataclass(frozen=True)
class Notice:
    """A status change to notify: the event name and a snapshot of the object at that time."""

    event: str
    object_id: str
    body: JSON


@dataclass
class _KeyRecord:
    fingerprint: str
    kind: str
    object_id: str
    first_seen: float


@dataclass
class Stats:
    create_calls: int = 0
    payments_created: int = 0
    refund_calls: int = 0
    refunds_created: int = 0
    idempotent_replays: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    by_payment_id: dict[str, int] = field(default_factory=dict)
    notifications: dict[str, int] = field(default_factory=dict)

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


class _Saved(msgspec.Struct):
    """What a restart keeps: objects, idempotence records, timers, the clock's offset."""

    payments: list[PaymentRecord]
    refunds: list[RefundRecord]
    revoked_methods: list[str]
    keys: list[tuple[str, str, _KeyRecord]]
    seq: int
    timers: list[tuple[float, int, str, str]]
    clock_offset_s: float


def fingerprint(body: Any) -> str:
    """Canonical JSON of a request body: key order and spacing do not make a new request."""
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()


class Store:
    """All objects and timers. Thread-safe: tests may read it from outside the server loop."""

    def __init__(self, config: EmulatorConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.lock = threading.RLock()
        self.notify: Callable[[Notice], None] = lambda notice: None
        # Bumped by every change a restart must keep (Emulator saves when it moved).
        self.changes = 0
        self._reset_state()

    def _reset_state(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.payments: dict[str, PaymentRecord] = {}
        self.refunds: dict[str, RefundRecord] = {}
        self.revoked_methods: set[str] = set()
        self.keys: dict[tuple[str, str], _KeyRecord] = {}
        self.receipts: list[JSON] = []  # accepted 54-FZ receipts, in order (control API)
        self.stats = Stats()
        self._seq = 0
        self._timers: list[tuple[float, int, str, str]] = []

    def reset(self, config: EmulatorConfig) -> None:
        with self.lock:
            self.config = config
            self.clock = Clock()
            self._reset_state()
            self.changes += 1

    # ------------------------------------------------------------------------ persistence
    def dump(self) -> bytes:
        """The objects, keys, timers and clock offset as JSON (``restore`` reads it back)."""
        with self.lock:
            saved = _Saved(
                payments=list(self.payments.values()),
                refunds=list(self.refunds.values()),
                revoked_methods=sorted(self.revoked_methods),
                keys=[(scope, key, rec) for (scope, key), rec in self.keys.items()],
                seq=self._seq,
                timers=list(self._timers),
                clock_offset_s=self.clock.offset_s,
            )
            return msgspec.json.encode(saved)

    def restore(self, data: bytes) -> None:
        """Replace the state with a ``dump``; the stats start again from zero."""
        saved = msgspec.json.decode(data, type=_Saved)
        with self.lock:
            self._reset_state()
            self.payments = {p.id: p for p in sorted(saved.payments, key=lambda p: p.seq)}
            self.refunds = {r.id: r for r in sorted(saved.refunds, key=lambda r: r.seq)}
            self.revoked_methods = set(saved.revoked_methods)
            self.keys = {(scope, key): rec for scope, key, rec in saved.keys}
            self._seq = saved.seq
            self._timers = list(saved.timers)
            heapq.heapify(self._timers)
            self.clock.offset_s = saved.clock_offset_s

    def save(self, path: Path) -> None:
        """Write ``dump`` to ``path`` atomically (a crash mid-write keeps the last file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(self.dump())
        tmp.replace(path)

    # ------------------------------------------------------------------------- helpers
    def _next_seq(self) -> int:
        self._seq += 1
        self.changes += 1
        return self._seq

    def new_id(self) -> str:
        """YooKassa-shaped id (36 chars, ``-000f-5000-8000-`` style), from the seeded RNG."""
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-000f-5000-{'89ab'[int(h[8], 16) % 4]}{h[9:12]}-{h[12:24]}"

    def _schedule(self, due: float, action: str, object_id: str) -> None:
        heapq.heappush(self._timers, (due, self._next_seq(), action, object_id))

    def check_key(self, scope: str, key: str | None, body: Any) -> _KeyRecord | None:
        """The stored record for a repeat; 400 for a missing, long or reused key."""
        if key is None or key == "":
            raise bad_request("Idempotence-Key header is required", "Idempotence-Key")
        if len(key) > MAX_KEY_LEN:
            raise bad_request("Idempotence-Key is longer than 64 characters", "Idempotence-Key")
        record = self.keys.get((scope, key))
        now = self.clock.now()
        if record is not None and now - record.first_seen > IDEMPOTENCE_TTL_S:
            del self.keys[(scope, key)]
            record = None
        if record is not None and record.fingerprint != fingerprint(body):
            raise bad_request("Idempotence key duplicated", "Idempotence-Key")
        return record

    def _remember(self, scope: str, key: str, body: Any, kind: str, object_id: str) -> None:
        self.changes += 1
        self.keys[(scope, key)] = _KeyRecord(fingerprint(body), kind, object_id, self.clock.now())

    def _emit(self, event: str, object_id: str, body: JSON) -> None:
        self.changes += 1
        self.stats.count(self.stats.notifications, event)
        self.notify(
            Notice(event, object_id, {"type": "notification", "event": event, "object": body})
        )

    def get_payment_record(self, payment_id: str) -> PaymentRecord:
        p = self.payments.get(payment_id)
        if p is None:
            raise ApiFailure(404, "not_found", "Payment not found", "payment_id")
        return p

    # -------------------------------------------------------------------------- payments
    def create_payment(self, body: JSON, key: str | None, confirm_base: str) -> tuple[JSON, bool]:
        """Create a payment, or return the current state of the one made under this key."""
        with self.lock:
            self.stats.create_calls += 1
            self.tick()
            record = self.check_key("payments", key, body)
            if record is not None:
                self.stats.idempotent_replays += 1
                return self.payment_json(self.payments[record.object_id]), False
            assert key is not None
            p = self._new_payment(body, confirm_base)
            self._remember("payments", key, body, "payment", p.id)
            return self.payment_json(p), True

    def _new_payment(self, body: JSON, confirm_base: str) -> PaymentRecord:
        amount = parse_amount(body.get("amount"))
        description = body.get("description")
        if description is not None and (not isinstance(description, str) or len(description) > 128):
            raise bad_request("description must be a string of at most 128 chars", "description")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or len(metadata) > 16:
            raise bad_request("metadata: at most 16 string keys", "metadata")
        for k, v in metadata.items():
            if len(str(k)) > 32 or not isinstance(v, str | int | float) or len(str(v)) > 512:
                raise bad_request(f"metadata key {k!r} is invalid", "metadata")
        method_id = body.get("payment_method_id")
        if method_id is not None and body.get("payment_method_data") is not None:
            raise bad_request(
                "payment_method_id and payment_method_data together", "payment_method_id"
            )
        confirmation = body.get("confirmation")
        capture = bool(body.get("capture", False))
        # A hold may take its receipt at capture; money taken now needs it now.
        receipt = check_receipt(
            body.get("receipt"), amount, required=self.config.require_receipts and capture
        )
        return_url: str | None = None
        if method_id is None:
            if not isinstance(confirmation, dict) or confirmation.get("type") != "redirect":
                raise bad_request("confirmation of type redirect is required", "confirmation")
            return_url = confirmation.get("return_url")
            if not isinstance(return_url, str) or not return_url:
                raise bad_request("confirmation.return_url is required", "confirmation.return_url")
        else:
            source = self.payments.get(str(method_id))
            if source is None or not source.saved:
                raise bad_request("payment method is not saved", "payment_method_id")
        now = self.clock.now()
        pid = self.new_id()
        p = PaymentRecord(
            id=pid,
            seq=self._next_seq(),
            status="pending",
            amount=amount,
            created_at=now,
            capture=capture,
            description=description,
            metadata={str(k): str(v) for k, v in metadata.items()},
            save_payment_method=bool(body.get("save_payment_method", False)),
            return_url=return_url,
            confirmation_url=None if method_id else f"{confirm_base}/checkout/{pid}",
            autopayment_of=str(method_id) if method_id else None,
            receipt=receipt,
            receipt_registration="pending" if receipt is not None else None,
        )
        self.payments[pid] = p
        if receipt is not None:
            self.receipts.append({"object": "payment", "id": pid, "receipt": receipt})
        self.stats.payments_created += 1
        our_id = p.metadata.get("payment_id")
        if our_id:
            self.stats.count(self.stats.by_payment_id, our_id)
        if method_id is not None:
            self._charge_saved(p)
        else:
            p.confirm_deadline = now + self.config.confirmation_window_s
            self._schedule(p.confirm_deadline, "confirm_timeout", pid)
            if self.config.auto_confirm != "none":
                self._schedule(now + self.config.auto_confirm_delay_s, "auto_confirm", pid)
        return p

    def _charge_saved(self, p: PaymentRecord) -> None:
        assert p.autopayment_of is not None
        if p.autopayment_of in self.revoked_methods:
            self._cancel(p, DECLINE_PARTY, "permission_revoked")
        elif self.rng.random() < self.config.autopay_decline_rate:
            self._cancel(p, DECLINE_PARTY, self.config.autopay_decline_reason)
        else:
            self._authorise(p)

    def _authorise(self, p: PaymentRecord) -> None:
        p.paid = True
        p.confirm_deadline = None
        if p.save_payment_method and p.autopayment_of is None:
            p.saved = True
        if p.capture:
            self._succeed(p, p.amount)
        else:
            p.status = "waiting_for_capture"
            p.expires_at = self.clock.now() + self.config.hold_s
            self._schedule(p.expires_at, "hold_expiry", p.id)
            self._emit("payment.waiting_for_capture", p.id, self.payment_json(p))

    def _succeed(self, p: PaymentRecord, captured: Money) -> None:
        if p.receipt is not None:
            p.receipt_registration = "succeeded"  # registered at once (no fiscal delay here)
        p.status = "succeeded"
        p.paid = True
        p.captured_amount = captured
        p.captured_at = self.clock.now()
        p.expires_at = None
        self._emit("payment.succeeded", p.id, self.payment_json(p))

    def _cancel(self, p: PaymentRecord, party: str, reason: str) -> None:
        # A method saved by a hold stays saved when the hold is released (YooKassa: "save
        # during a two-stage payment for the minimum amount, then cancel it" binds the card).
        keep = p.saved and p.status == "waiting_for_capture"
        if p.receipt is not None:
            p.receipt_registration = "canceled"
        p.status = "canceled"
        p.paid = False
        p.saved = keep
        p.cancellation = (party, reason)
        p.expires_at = None
        p.confirm_deadline = None
        self._emit("payment.canceled", p.id, self.payment_json(p))

    def confirm(self, payment_id: str, succeed: bool, reason: str | None = None) -> JSON:
        """The user's answer on the confirmation page (or a test acting as the user)."""
        with self.lock:
            self.tick()
            p = self.get_payment_record(payment_id)
            if p.status != "pending" or p.autopayment_of is not None:
                raise ApiFailure(
                    409, "invalid_state", f"payment is {p.status}, not awaiting the user"
                )
            if succeed:
                self._authorise(p)
            else:
                self._cancel(p, DECLINE_PARTY, reason or "insufficient_funds")
            return self.payment_json(p)

    def capture(self, payment_id: str, body: JSON, key: str | None) -> JSON:
        return self.settle(payment_id, "capture", body, key)

    def cancel(self, payment_id: str, body: JSON, key: str | None) -> JSON:
        return self.settle(payment_id, "cancel", body, key)

    def settle(
        self, payment_id: str, action: Literal["capture", "cancel"], body: JSON, key: str | None
    ) -> JSON:
        """Capture (all or ``body["amount"]``) or cancel a payment waiting for capture; a
        repeat under the same key answers the payment as it is."""
        with self.lock:
            self.tick()
            p = self.get_payment_record(payment_id)
            scope = f"payments/{payment_id}/{action}"
            if self.check_key(scope, key, body) is not None:
                self.stats.idempotent_replays += 1
                return self.payment_json(p)
            if p.status != "waiting_for_capture":
                done = "captured" if action == "capture" else "canceled"
                raise bad_request(f"payment is {p.status}; only waiting_for_capture can be {done}")
            amount = p.amount
            if action == "capture" and body.get("amount") is not None:
                amount = parse_amount(body["amount"])
                if (
                    amount.currency != p.amount.currency
                    or amount.amount_minor > p.amount.amount_minor
                ):
                    raise bad_request("capture amount exceeds the payment", "amount.value")
            receipt = None
            if action == "capture":
                # The capture's receipt, else the create's (only for the full amount).
                given = body.get("receipt")
                if given is None and p.receipt is not None and amount == p.amount:
                    given = p.receipt
                receipt = check_receipt(given, amount, required=self.config.require_receipts)
            assert key is not None
            if receipt is not None and receipt is not p.receipt:
                p.receipt = receipt
                p.receipt_registration = "pending"
                self.receipts.append({"object": "payment", "id": p.id, "receipt": receipt})
            self._remember(scope, key, body, "payment", p.id)
            if action == "capture":
                self._succeed(p, amount)
            else:
                self._cancel(p, "merchant", "canceled_by_merchant")
            return self.payment_json(p)

    def revoke_method(self, method_id: str) -> None:
        """The user withdraws autopayment consent: later charges end ``permission_revoked``."""
        with self.lock:
            self.get_payment_record(method_id)
            self.revoked_methods.add(method_id)
            self.changes += 1

    # --------------------------------------------------------------------------- refunds
    def create_refund(self, body: JSON, key: str | None) -> tuple[JSON, bool]:
        with self.lock:
            self.stats.refund_calls += 1
            self.tick()
            record = self.check_key("refunds", key, body)
            if record is not None:
                self.stats.idempotent_replays += 1
                return self.refund_json(self.refunds[record.object_id]), False
            payment_id = body.get("payment_id")
            if not isinstance(payment_id, str) or payment_id not in self.payments:
                raise bad_request("payment not found", "payment_id")
            p = self.payments[payment_id]
            amount = parse_amount(body.get("amount"))
            if p.status != "succeeded" or p.captured_amount is None:
                raise bad_request(
                    f"payment is {p.status}; only succeeded payments are refunded", "payment_id"
                )
            if amount.currency != p.captured_amount.currency:
                raise bad_request("refund currency differs from the payment", "amount.currency")
            if p.refunded_minor + amount.amount_minor > p.captured_amount.amount_minor:
                raise bad_request(
                    "refund amount exceeds the captured amount not yet refunded", "amount.value"
                )
            receipt = check_receipt(
                body.get("receipt"), amount, required=self.config.require_receipts
            )
            description = body.get("description")
            metadata = body.get("metadata")
            r = RefundRecord(
                id=self.new_id(),
                seq=self._next_seq(),
                payment_id=payment_id,
                status="pending",
                amount=amount,
                created_at=self.clock.now(),
                description=description if isinstance(description, str) else None,
                metadata={str(k): str(v) for k, v in metadata.items()}
                if isinstance(metadata, dict)
                else None,
                receipt=receipt,
            )
            self.refunds[r.id] = r
            if receipt is not None:
                self.receipts.append({"object": "refund", "id": r.id, "receipt": receipt})
            self.stats.refunds_created += 1
            assert key is not None
            self._remember("refunds", key, body, "refund", r.id)
            if receipt is not None:
                registered = self.config.refund_result == "succeed"
                r.receipt_registration = "succeeded" if registered else "canceled"
            if self.config.refund_result == "succeed":
                r.status = "succeeded"
                p.refunded_minor += amount.amount_minor
                self._emit("refund.succeeded", r.id, self.refund_json(r))
            else:
                r.status = "canceled"
                r.cancellation = ("yoo_money", "rejected_by_payee")
            return self.refund_json(r), True

    def get_refund(self, refund_id: str) -> JSON:
        with self.lock:
            self.tick()
            r = self.refunds.get(refund_id)
            if r is None:
                raise ApiFailure(404, "not_found", "Refund not found", "refund_id")
            return self.refund_json(r)

    def get_payment(self, payment_id: str) -> JSON:
        with self.lock:
            self.tick()
            return self.payment_json(self.get_payment_record(payment_id))

    # ----------------------------------------------------------------------------- lists
    def list_objects(self, kind: Literal["payments", "refunds"], query: dict[str, str]) -> JSON:
        """A page, newest first; the cursor is the position after the last item shown."""
        with self.lock:
            self.tick()
            limit_raw = query.get("limit", "10")
            try:
                limit = int(limit_raw)
            except ValueError as exc:
                raise bad_request("limit must be an integer", "limit") from exc
            if not 1 <= limit <= 100:
                raise bad_request("limit must be within 1..100", "limit")
            bounds: list[tuple[str, float]] = []
            for op in ("gte", "gt", "lte", "lt"):
                raw = query.get(f"created_at.{op}")
                if raw is not None:
                    bounds.append((op, parse_iso(raw)))
            status = query.get("status")
            after_seq: int | None = None
            if query.get("cursor"):
                try:
                    after_seq = int(base64.urlsafe_b64decode(query["cursor"].encode()).decode())
                except ValueError as exc:
                    raise bad_request("invalid cursor", "cursor") from exc
            # Dicts keep insertion order, which is seq order: no sort, and the cursor is found
            # by bisection, so paging through a large store stays cheap.
            objects: list[PaymentRecord | RefundRecord] = [
                *(self.payments.values() if kind == "payments" else self.refunds.values())
            ]
            start = len(objects)
            if after_seq is not None:
                start = bisect.bisect_left(objects, after_seq, key=lambda o: o.seq)
            wanted = query.get("payment_id") if kind == "refunds" else None
            selected: list[PaymentRecord | RefundRecord] = []
            for o in reversed(objects[:start]):
                if status and o.status != status:
                    continue
                if wanted and isinstance(o, RefundRecord) and o.payment_id != wanted:
                    continue
                # Compare at millisecond precision, as the wire shows it.
                t = round(o.created_at * 1000)
                if not all(_cmp(op, t, round(b * 1000)) for op, b in bounds):
                    continue
                selected.append(o)
                if len(selected) > limit:
                    break
            page = selected[:limit]
            out: JSON = {
                "type": "list",
                "items": [
                    self.payment_json(o) if isinstance(o, PaymentRecord) else self.refund_json(o)
                    for o in page
                ],
            }
            if len(selected) > limit:
                out["next_cursor"] = base64.urlsafe_b64encode(str(page[-1].seq).encode()).decode()
            return out

    # ---------------------------------------------------------------------------- timers
    def tick(self) -> None:
        """Apply every timer due on the emulator clock (confirmations, expiries)."""
        with self.lock:
            now = self.clock.now()
            while self._timers and self._timers[0][0] <= now:
                _, _, action, pid = heapq.heappop(self._timers)
                p = self.payments.get(pid)
                if p is None:
                    continue
                if action == "auto_confirm" and p.status == "pending":
                    if self.config.auto_confirm == "succeed":
                        self._authorise(p)
                    elif self.config.auto_confirm == "cancel":
                        self._cancel(p, DECLINE_PARTY, self.config.auto_confirm_reason)
                elif action == "confirm_timeout" and p.status == "pending":
                    if p.confirm_deadline is not None and p.confirm_deadline <= now:
                        self._cancel(p, "yoo_money", "expired_on_confirmation")
                elif (
                    action == "hold_expiry"
                    and p.status == "waiting_for_capture"
                    and p.expires_at is not None
                    and p.expires_at <= now
                ):
                    self._cancel(p, "yoo_money", "expired_on_capture")

    def next_timer_in(self) -> float | None:
        with self.lock:
            if not self._timers:
                return None
            return max(0.0, self._timers[0][0] - self.clock.now())

    # ----------------------------------------------------------------------------- views
    def payment_json(self, p: PaymentRecord) -> JSON:
        """The wire object. Absent fields are omitted, never null (the SDK rejects nulls)."""
        out: JSON = {
            "id": p.id,
            "status": p.status,
            "paid": p.paid,
            "amount": money_json(p.amount),
            "recipient": {"account_id": self.config.shop_id, "gateway_id": "100700"},
            "created_at": iso(p.created_at),
            "test": True,
            "refundable": p.status == "succeeded"
            and p.captured_amount is not None
            and p.refunded_minor < p.captured_amount.amount_minor,
            "metadata": dict(p.metadata),
        }
        if p.description is not None:
            out["description"] = p.description
        method: JSON = {"type": "bank_card", "id": p.autopayment_of or p.id, "saved": p.saved}
        if p.autopayment_of is not None:
            method["saved"] = p.autopayment_of not in self.revoked_methods
        if p.paid or p.status == "succeeded" or p.autopayment_of is not None:
            method["title"] = f"Bank card *{p.card_last4}"
            method["card"] = {
                "first6": "555555",
                "last4": p.card_last4,
                "expiry_month": "12",
                "expiry_year": "2030",
                "card_type": "MasterCard",
                "issuer_country": "RU",
            }
        out["payment_method"] = method
        if p.status == "pending" and p.confirmation_url is not None:
            out["confirmation"] = {
                "type": "redirect",
                "confirmation_url": p.confirmation_url,
                "return_url": p.return_url,
            }
        if p.expires_at is not None:
            out["expires_at"] = iso(p.expires_at)
        if p.captured_amount is not None and p.captured_at is not None:
            out["captured_at"] = iso(p.captured_at)
            fee = (
                p.captured_amount.to_decimal() * Decimal(self.config.fee_percent) / 100
            ).quantize(Decimal("0.01"))
            out["income_amount"] = {
                "value": str(p.captured_amount.to_decimal() - fee),
                "currency": p.captured_amount.currency,
            }
            if p.captured_amount != p.amount:
                out["amount"] = money_json(p.captured_amount)
        if p.refunded_minor:
            assert p.captured_amount is not None
            out["refunded_amount"] = money_json(Money(p.refunded_minor, p.amount.currency))
        if p.paid or p.status == "succeeded":
            out["authorization_details"] = {
                "rrn": str(600000000000 + p.seq),
                "auth_code": f"{p.seq % 1000000:06d}",
                "three_d_secure": {"applied": p.autopayment_of is None},
            }
        if p.cancellation is not None:
            out["cancellation_details"] = {"party": p.cancellation[0], "reason": p.cancellation[1]}
        if p.receipt_registration is not None:
            out["receipt_registration"] = p.receipt_registration
        return out

    def refund_json(self, r: RefundRecord) -> JSON:
        out: JSON = {
            "id": r.id,
            "payment_id": r.payment_id,
            "status": r.status,
            "amount": money_json(r.amount),
            "created_at": iso(r.created_at),
        }
        if r.description is not None:
            out["description"] = r.description
        if r.metadata:
            out["metadata"] = dict(r.metadata)
        if r.cancellation is not None:
            out["cancellation_details"] = {"party": r.cancellation[0], "reason": r.cancellation[1]}
        if r.receipt_registration is not None:
            out["receipt_registration"] = r.receipt_registration
        return out

    def snapshot(self) -> JSON:
        with self.lock:
            self.tick()
            return {
                "payments": [self.payment_json(p) for p in self.payments.values()],
                "refunds": [self.refund_json(r) for r in self.refunds.values()],
                # Control API only (YooKassa shows no receipt): each receipt accepted.
                "receipts": list(self.receipts),
            }

    def stats_json(self) -> JSON:
        with self.lock:
            return asdict(self.stats)

    def count_request(self, endpoint: str) -> None:
        with self.lock:
            self.stats.count(self.stats.requests, endpoint)


def _cmp(op: str, value: int, bound: int) -> bool:
    if op == "gte":
        return value >= bound
    if op == "gt":
        return value > bound
    if op == "lte":
        return value <= bound
    return value < bound
