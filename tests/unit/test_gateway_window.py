"""The gateway's key-window guard (ARCHITECTURE.md invariant 7): the pure policy as a table,
then the gateway's calls against a recording fake provider. No create past the window, for
payments and refunds, first tries and re-drives alike."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from billing.clock import now_ms
from billing.config import Settings
from providers.port import (
    ProviderNotFound,
    ProviderPayment,
    ProviderRefund,
    ProviderRejected,
    ProviderUnavailable,
    SearchingProvider,
)
from schemas.messages import (
    PaymentCallFailed,
    PaymentObserved,
    PaymentRedriven,
    PaymentRequest,
    PaymentRequested,
    RefundCallFailed,
    RefundObserved,
    RefundRedriven,
    RefundRequest,
    RefundRequested,
)
from schemas.money import Money
from schemas.periods import dt_to_ms
from streams.gateway.agent import execute, execute_refund
from streams.gateway.window import (
    KEY_EXPIRED,
    SEARCH_SLACK_MS,
    Step,
    next_step,
    search_range,
    within_window,
)

H = 3_600_000
WINDOW = 20 * H
T = 1_800_000_000_000
SUB = "22222222-2222-5222-8222-222222222222"
PRICE = Money(29900, "RUB")


# ------------------------------------------------------------------------------ pure policy
# (age of the request, provider id known, searched already, expected step)
STEPS: list[tuple[int, str | None, bool, Step]] = [
    (0, None, False, "create"),
    (-5 * 60_000, None, False, "create"),  # our clock behind the request's: still young
    (WINDOW - 1, None, False, "create"),
    (WINDOW, None, False, "search"),  # the window is exclusive
    (25 * H, None, False, "search"),
    (25 * H, None, True, "give_up"),
    (400 * H, None, True, "give_up"),
    (0, "prov-1", False, "reread"),  # a known object is read, never created again
    (25 * H, "prov-1", False, "reread"),
    (25 * H, "prov-1", True, "reread"),
    (25 * H, "", False, "search"),  # an empty id is no id
]


@pytest.mark.parametrize(("age", "provider_id", "searched", "expected"), STEPS)
def test_next_step(age: int, provider_id: str | None, searched: bool, expected: Step) -> None:
    step = next_step(
        requested_at=T, now=T + age, window_ms=WINDOW, provider_id=provider_id, searched=searched
    )
    assert step == expected


@pytest.mark.parametrize(
    ("age", "inside"), [(0, True), (WINDOW - 1, True), (WINDOW, False), (WINDOW + 1, False)]
)
def test_within_window(age: int, inside: bool) -> None:
    assert within_window(T, T + age, WINDOW) is inside


def test_search_range_covers_every_create_the_guard_allows() -> None:
    gte, lt = search_range(T, WINDOW)
    assert (gte, lt) == (T - SEARCH_SLACK_MS, T + WINDOW + SEARCH_SLACK_MS)
    assert search_range(T, WINDOW, slack_ms=0) == (T, T + WINDOW)


def test_safe_window_setting_defaults_to_20h_and_must_stay_inside_24h() -> None:
    assert Settings().provider_key_safe_window_s == 20 * 3600
    assert Settings(provider_key_safe_window_s=23.5 * 3600).provider_key_safe_window_s > 0
    for bad in (24 * 3600, 25 * 3600, 0, -1):
        with pytest.raises(ValidationError):
            Settings(provider_key_safe_window_s=bad)


def test_offset_reset_setting_is_explicit() -> None:
    assert Settings().worker_offset_reset == "latest"
    assert Settings(worker_offset_reset="earliest").worker_offset_reset == "earliest"
    with pytest.raises(ValidationError):
        Settings(worker_offset_reset="none")  # type: ignore[arg-type]


# ----------------------------------------------------------------------- gateway, faked I/O
class Recorder:
    """A SearchingProvider that records every call and answers from what the test set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.payment: ProviderPayment | None = None
        self.refund: ProviderRefund | None = None
        self.error: Exception | None = None

    def _answer(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        if self.error is not None:
            raise self.error

    async def create_payment(
        self, request: PaymentRequest, subscription_id: str, *, receipt: Any = None
    ) -> ProviderPayment:
        self._answer("create_payment", request.payment_id)
        assert self.payment is not None
        return self.payment

    async def get_payment(self, provider_payment_id: str) -> ProviderPayment:
        self._answer("get_payment", provider_payment_id)
        assert self.payment is not None
        return self.payment

    async def find_payment(
        self, payment_id: str, created_gte: datetime, created_lt: datetime
    ) -> ProviderPayment | None:
        self._answer("find_payment", (payment_id, dt_to_ms(created_gte), dt_to_ms(created_lt)))
        return self.payment

    async def create_refund(
        self,
        provider_payment_id: str,
        amount: Money,
        *,
        refund_id: str,
        description: str = "",
        metadata: dict[str, str] | None = None,
        receipt: Any = None,
    ) -> ProviderRefund:
        self._answer("create_refund", (refund_id, dict(metadata or {})))
        assert self.refund is not None
        return self.refund

    async def get_refund(self, provider_refund_id: str) -> ProviderRefund:
        self._answer("get_refund", provider_refund_id)
        assert self.refund is not None
        return self.refund

    async def find_refund(
        self,
        refund_id: str,
        provider_payment_id: str,
        created_gte: datetime,
        created_lt: datetime,
    ) -> ProviderRefund | None:
        self._answer(
            "find_refund",
            (refund_id, provider_payment_id, dt_to_ms(created_gte), dt_to_ms(created_lt)),
        )
        return self.refund

    async def capture_payment(
        self, provider_payment_id: str, *, key: str, amount: Money | None = None
    ) -> ProviderPayment:
        raise AssertionError("not used")

    async def cancel_payment(self, provider_payment_id: str, *, key: str) -> ProviderPayment:
        raise AssertionError("not used")

    async def close(self) -> None:
        return None

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def _as_port(p: Recorder) -> SearchingProvider:
    return p


PAYMENT_ID = str(uuid.uuid4())
REFUND_ID = str(uuid.uuid4())
REQUEST = PaymentRequest(
    payment_id=PAYMENT_ID,
    command_id=str(uuid.uuid4()),
    user_id="user-w",
    plan_id="monthly",
    amount=PRICE,
    period_months=1,
    return_url="https://cinema.example/return",
    description="Cinema monthly",
)
REFUND = RefundRequest(
    refund_id=REFUND_ID,
    command_id=str(uuid.uuid4()),
    payment_id=PAYMENT_ID,
    provider_payment_id="prov-pay",
    amount=PRICE,
    reason="changed my mind",
)
EVENT: dict[str, Any] = {
    "subscription_id": SUB,
    "user_id": "user-w",
    "version": 1,
    "causation_id": "c",
}


def requested(age_ms: int) -> PaymentRequested:
    at = now_ms() - age_ms
    return PaymentRequested(
        event_id=str(uuid.uuid4()), occurred_at=at, request=REQUEST, deadline_at=at, **EVENT
    )


def redriven(age_ms: int, provider_id: str | None = None) -> PaymentRedriven:
    return PaymentRedriven(
        event_id=str(uuid.uuid4()),
        occurred_at=now_ms(),  # the re-drive is new; the request is old
        request=REQUEST,
        attempt=3,
        requested_at=now_ms() - age_ms,
        deadline_at=now_ms(),
        provider_payment_id=provider_id,
        **EVENT,
    )


def refund_requested(age_ms: int) -> RefundRequested:
    at = now_ms() - age_ms
    return RefundRequested(
        event_id=str(uuid.uuid4()), occurred_at=at, request=REFUND, deadline_at=at, **EVENT
    )


def refund_redriven(age_ms: int, provider_id: str | None = None) -> RefundRedriven:
    return RefundRedriven(
        event_id=str(uuid.uuid4()),
        occurred_at=now_ms(),
        request=REFUND,
        attempt=2,
        requested_at=now_ms() - age_ms,
        deadline_at=now_ms(),
        provider_refund_id=provider_id,
        **EVENT,
    )


def provider_payment(status: str = "succeeded") -> ProviderPayment:
    return ProviderPayment(
        provider_payment_id="prov-pay",
        status=status,
        amount=PRICE,
        paid=status == "succeeded",
        metadata={"payment_id": PAYMENT_ID, "subscription_id": SUB},
    )


def provider_refund(status: str = "succeeded") -> ProviderRefund:
    return ProviderRefund(
        provider_refund_id="prov-ref",
        provider_payment_id="prov-pay",
        status=status,
        amount=PRICE,
        metadata={"refund_id": REFUND_ID, "payment_id": PAYMENT_ID},
    )


# (event, provider answer found, expected calls)
PAYMENT_CASES: list[tuple[str, PaymentRequested | PaymentRedriven, bool, list[str]]] = [
    ("first try, fresh", requested(0), True, ["create_payment"]),
    ("first try, 19 h", requested(19 * H), True, ["create_payment"]),
    ("first try, 21 h, found", requested(21 * H), True, ["find_payment"]),
    ("first try, 25 h, not found", requested(25 * H), False, ["find_payment"]),
    ("re-drive, fresh", redriven(60_000), True, ["create_payment"]),
    ("re-drive, 25 h, found", redriven(25 * H), True, ["find_payment"]),
    ("re-drive, 25 h, not found", redriven(25 * H), False, ["find_payment"]),
    ("re-drive, known id, fresh", redriven(0, "prov-pay"), True, ["get_payment"]),
    ("re-drive, known id, 25 h", redriven(25 * H, "prov-pay"), True, ["get_payment"]),
]


@pytest.mark.parametrize(
    ("event", "found", "calls"), [c[1:] for c in PAYMENT_CASES], ids=[c[0] for c in PAYMENT_CASES]
)
async def test_payment_calls(
    event: PaymentRequested | PaymentRedriven, found: bool, calls: list[str]
) -> None:
    prov = Recorder()
    prov.payment = provider_payment() if found else None
    out = await execute(_as_port(prov), event, window_ms=WINDOW)
    assert prov.names() == calls
    assert "create_payment" not in calls or now_ms() - _requested_at(event) < WINDOW
    if found:
        assert isinstance(out, PaymentObserved)
        assert (out.payment_id, out.provider_payment_id, out.status) == (
            PAYMENT_ID,
            "prov-pay",
            "succeeded",
        )
    else:
        assert isinstance(out, PaymentCallFailed)
        assert (out.outcome, out.error_code) == ("unknown", KEY_EXPIRED)
        assert "key window" in out.error and "reconciliation" in out.error
    if calls == ["find_payment"]:
        pid, gte, lt = prov.calls[0][1]
        start = _requested_at(event)
        assert pid == PAYMENT_ID
        assert (gte, lt) == (start - SEARCH_SLACK_MS, start + WINDOW + SEARCH_SLACK_MS)


def _requested_at(event: Any) -> int:
    if isinstance(event, PaymentRedriven | RefundRedriven):
        return event.requested_at
    at: int = event.occurred_at
    return at


REFUND_CASES: list[tuple[str, RefundRequested | RefundRedriven, bool, list[str]]] = [
    ("first try, fresh", refund_requested(0), True, ["create_refund"]),
    ("first try, 21 h, found", refund_requested(21 * H), True, ["find_refund"]),
    ("first try, 25 h, not found", refund_requested(25 * H), False, ["find_refund"]),
    ("re-drive, 25 h, not found", refund_redriven(25 * H), False, ["find_refund"]),
    ("re-drive, known id, 25 h", refund_redriven(25 * H, "prov-ref"), True, ["get_refund"]),
]


@pytest.mark.parametrize(
    ("event", "found", "calls"), [c[1:] for c in REFUND_CASES], ids=[c[0] for c in REFUND_CASES]
)
async def test_refund_calls(
    event: RefundRequested | RefundRedriven, found: bool, calls: list[str]
) -> None:
    prov = Recorder()
    prov.refund = provider_refund() if found else None
    out = await execute_refund(_as_port(prov), event, window_ms=WINDOW)
    assert prov.names() == calls
    if found:
        assert isinstance(out, RefundObserved)
        assert (out.refund_id, out.provider_refund_id, out.status) == (
            REFUND_ID,
            "prov-ref",
            "succeeded",
        )
    else:
        assert isinstance(out, RefundCallFailed)
        assert (out.outcome, out.error_code) == ("unknown", KEY_EXPIRED)
    if calls == ["find_refund"]:
        rid, provider_payment_id, gte, lt = prov.calls[0][1]
        start = _requested_at(event)
        assert (rid, provider_payment_id) == (REFUND_ID, "prov-pay")
        assert (gte, lt) == (start - SEARCH_SLACK_MS, start + WINDOW + SEARCH_SLACK_MS)


async def test_refund_create_carries_our_ids_in_metadata() -> None:
    prov = Recorder()
    prov.refund = provider_refund()
    await execute_refund(_as_port(prov), refund_requested(0), window_ms=WINDOW)
    (_, (refund_id, metadata)) = prov.calls[0]
    assert refund_id == REFUND_ID
    assert metadata == {"subscription_id": SUB, "payment_id": PAYMENT_ID, "refund_id": REFUND_ID}


@pytest.mark.parametrize(
    ("error", "age", "outcome"),
    [
        (ProviderRejected("bad", code="invalid_request"), 0, "rejected"),  # a refused create
        (ProviderUnavailable("down"), 0, "unknown"),
        (ProviderRejected("bad", code="invalid_request"), 25 * H, "unknown"),  # a refused search
        (ProviderNotFound("gone"), 25 * H, "unknown"),
        (ProviderUnavailable("down"), 25 * H, "unknown"),
    ],
)
async def test_only_a_refused_create_is_a_definite_rejection(
    error: Exception, age: int, outcome: str
) -> None:
    """A failed read says nothing about whether a charge exists: the ledger must not cancel
    the payment (or fail the refund) on it."""
    prov = Recorder()
    prov.error = error
    out = await execute(_as_port(prov), requested(age), window_ms=WINDOW)
    assert isinstance(out, PaymentCallFailed) and out.outcome == outcome
    rout = await execute_refund(_as_port(prov), refund_requested(age), window_ms=WINDOW)
    assert isinstance(rout, RefundCallFailed) and rout.outcome == outcome


async def test_a_found_payment_of_another_request_is_not_attributed() -> None:
    prov = Recorder()
    prov.payment = ProviderPayment(
        provider_payment_id="prov-other",
        status="succeeded",
        amount=PRICE,
        paid=True,
        metadata={"payment_id": str(uuid.uuid4()), "subscription_id": SUB},
    )
    out = await execute(_as_port(prov), requested(25 * H), window_ms=WINDOW)
    assert isinstance(out, PaymentCallFailed)
    assert (out.outcome, out.error_code) == ("unknown", "provider_answer_mismatch")
