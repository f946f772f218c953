"""The adapter's pure parts: retry policy, backoff, error classification, the create body,
parsing (SDK object or raw dict) and normalisation; plus the emulator's fault book."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
import requests
from yookassa.domain.exceptions import (
    ApiError,
    BadRequestError,
    ForbiddenError,
    InternalServerError,
    NotFoundError,
    ResponseProcessingError,
    TooManyRequestsError,
    UnauthorizedError,
)
from yookassa.domain.response import PaymentResponse

from providers.emulator.faults import FaultBook
from providers.port import (
    ProviderError,
    ProviderNotFound,
    ProviderPayment,
    ProviderRejected,
    ProviderThrottled,
    ProviderUnavailable,
)
from providers.yookassa_adapter import (
    backoff_s,
    build_create_body,
    classify,
    normalise,
    parse_payment,
    parse_refund,
    should_retry,
)
from schemas.ids import observation_id_for
from schemas.messages import PaymentRequest
from schemas.money import Money

UNAVAILABLE = ProviderUnavailable("x")
REJECTED = ProviderRejected("x")
NOT_FOUND = ProviderNotFound("x")


# ------------------------------------------------------------------------------- retries
@pytest.mark.parametrize(
    ("error", "attempt", "max_attempts", "expected"),
    [
        (UNAVAILABLE, 1, 3, True),
        (UNAVAILABLE, 2, 3, True),
        (UNAVAILABLE, 3, 3, False),  # attempts exhausted
        (UNAVAILABLE, 1, 1, False),
        (REJECTED, 1, 3, False),  # a definite 4xx: the same body fails again
        (NOT_FOUND, 1, 3, False),
        (ProviderError("x"), 1, 3, False),
        (ValueError("not a provider error"), 1, 3, False),
    ],
)
def test_should_retry(
    error: BaseException, attempt: int, max_attempts: int, expected: bool
) -> None:
    assert should_retry(error, attempt, max_attempts) is expected


def test_should_retry_defaults_to_three_attempts() -> None:
    assert should_retry(UNAVAILABLE, 2)
    assert not should_retry(UNAVAILABLE, 3)


@pytest.mark.parametrize(
    ("attempt", "full"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (10, 5.0)],
)
def test_backoff_doubles_from_half_a_second_capped_at_5_with_jitter(
    attempt: int, full: float
) -> None:
    rng = random.Random(7)
    samples = [backoff_s(attempt, rng) for _ in range(200)]
    assert all(full * 0.5 <= s <= full for s in samples)
    assert max(samples) - min(samples) > full * 0.3  # jitter really spreads


def test_backoff_is_deterministic_for_a_seed_and_scales() -> None:
    a = [backoff_s(n, random.Random(1)) for n in range(1, 6)]
    b = [backoff_s(n, random.Random(1)) for n in range(1, 6)]
    assert a == b
    assert backoff_s(3, random.Random(1), base_s=0.01, cap_s=0.02) <= 0.02


# ------------------------------------------------------------------------- classification
def _body(code: str, parameter: str | None = None) -> dict[str, Any]:
    body = {"type": "error", "id": str(uuid.uuid4()), "code": code, "description": "d"}
    if parameter:
        body["parameter"] = parameter
    return body


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (BadRequestError(_body("invalid_request", "amount")), ProviderRejected, "invalid_request"),
        (UnauthorizedError(_body("invalid_credentials")), ProviderRejected, "invalid_credentials"),
        (ForbiddenError(_body("forbidden")), ProviderRejected, "forbidden"),
        (NotFoundError(_body("not_found")), ProviderNotFound, "not_found"),
        (
            TooManyRequestsError(_body("too_many_requests")),
            ProviderThrottled,
            "too_many_requests",
        ),
        (
            InternalServerError(_body("internal_server_error")),
            ProviderUnavailable,
            "internal_server_error",
        ),
        (
            ResponseProcessingError({"type": "processing", "retry_after": 1800}),
            ProviderUnavailable,
            "processing",
        ),
        (ApiError(_body("whatever")), ProviderUnavailable, "whatever"),  # 405/415/502...: unknown
        (TimeoutError(), ProviderUnavailable, "timeout"),
        (
            AttributeError("'NoneType' object has no attribute 'status_code'"),
            ProviderUnavailable,
            "connection",
        ),
        (requests.ConnectionError(), ProviderUnavailable, "connection"),
        (ValueError("bad card field"), ProviderUnavailable, "unexpected"),
    ],
)
def test_classify(exc: BaseException, kind: type[ProviderError], code: str) -> None:
    error = classify(exc)
    assert type(error) is kind
    assert error.code == code
    assert error.unknown is issubclass(kind, ProviderUnavailable)


def test_classify_names_the_parameter() -> None:
    error = classify(BadRequestError(_body("invalid_request", "Idempotence-Key")))
    assert "Idempotence-Key" in str(error)


# ---------------------------------------------------------------------------- create body
def _request(**overrides: Any) -> PaymentRequest:
    values: dict[str, Any] = {
        "payment_id": "p-1",
        "command_id": "c-1",
        "user_id": "u-1",
        "plan_id": "monthly",
        "amount": Money(149000, "RUB"),
        "period_months": 1,
        "return_url": "https://cinema.example/return",
        "description": "Monthly plan",
    }
    values.update(overrides)
    return PaymentRequest(**values)


def test_create_body_for_a_user_payment() -> None:
    body = build_create_body(_request(capture=False), "s-1")
    assert body == {
        "amount": {"value": "1490.00", "currency": "RUB"},
        "capture": False,
        "description": "Monthly plan",
        "confirmation": {"type": "redirect", "return_url": "https://cinema.example/return"},
        "save_payment_method": True,
        "metadata": {
            "payment_id": "p-1",
            "subscription_id": "s-1",
            "user_id": "u-1",
            "command_id": "c-1",
            "plan_id": "monthly",
        },
    }


def test_create_body_for_an_autopayment_has_no_confirmation() -> None:
    body = build_create_body(_request(payment_method_id="pm-1"), "s-1")
    assert body["payment_method_id"] == "pm-1"
    assert "confirmation" not in body
    assert "save_payment_method" not in body
    assert body["capture"] is True


def test_create_body_is_stable_and_trims_description() -> None:
    req = _request(description="x" * 200)
    assert build_create_body(req, "s") == build_create_body(req, "s")
    assert len(build_create_body(req, "s")["description"]) == 128


# ------------------------------------------------------------------------ parse, normalise
PAYMENT: dict[str, Any] = {
    "id": "2f9c1a7e-000f-5000-8000-1b2c3d4e5f60",
    "status": "canceled",
    "paid": False,
    "amount": {"value": "1490.00", "currency": "RUB"},
    "created_at": "2025-03-01T09:15:22.481Z",
    "test": True,
    "refundable": False,
    "metadata": {"payment_id": "p-1", "subscription_id": "s-1", "cms_name": "yookassa_sdk_python"},
    "payment_method": {
        "type": "bank_card",
        "id": "2f9c1a7e-000f-5000-8000-1b2c3d4e5f60",
        "saved": False,
        "card": {
            "first6": "555555",
            "last4": "4444",
            "expiry_month": "07",
            "expiry_year": "2030",
            "card_type": "MasterCard",
        },
    },
    "cancellation_details": {"party": "payment_network", "reason": "card_expired"},
}


@pytest.mark.parametrize("source", ["dict", "sdk"])
def test_parse_payment_from_dict_and_sdk_object(source: str) -> None:
    obj: Any = PAYMENT if source == "dict" else PaymentResponse(PAYMENT)
    p = parse_payment(obj)
    assert p == ProviderPayment(
        provider_payment_id=PAYMENT["id"],
        status="canceled",
        amount=Money(149000, "RUB"),
        paid=False,
        metadata=PAYMENT["metadata"],
        confirmation_url=None,
        cancellation_party="payment_network",
        cancellation_reason="card_expired",
        payment_method_id=PAYMENT["id"],
        payment_method_saved=False,
        created_at="2025-03-01T09:15:22.481Z",
    )
    assert "4444" not in repr(p)  # no card data kept


def test_parse_minimal_pending_payment() -> None:
    p = parse_payment(
        {
            "id": "x",
            "status": "pending",
            "amount": {"value": "10.5", "currency": "RUB"},
            "confirmation": {"type": "redirect", "confirmation_url": "https://pay/x"},
        }
    )
    assert p.amount == Money(1050, "RUB")
    assert p.confirmation_url == "https://pay/x"
    assert p.metadata == {}
    assert (p.paid, p.payment_method_id, p.cancellation_reason) == (False, None, None)


def test_parse_refund() -> None:
    r = parse_refund(
        {
            "id": "r-1",
            "payment_id": "p-x",
            "status": "canceled",
            "amount": {"value": "1.00", "currency": "RUB"},
            "cancellation_details": {"party": "yoo_money", "reason": "rejected_by_payee"},
        }
    )
    assert (r.provider_refund_id, r.provider_payment_id, r.status) == ("r-1", "p-x", "canceled")
    assert r.amount == Money(100, "RUB")
    assert r.cancellation_reason == "rejected_by_payee"


@pytest.mark.parametrize("source", ["gateway", "webhook", "poll", "reconciliation"])
def test_normalise(source: str) -> None:
    p = parse_payment(PAYMENT)
    obs = normalise(p, source=source, observed_at=1700000000000)
    assert obs.observation_id == observation_id_for(PAYMENT["id"], "canceled")
    assert (obs.payment_id, obs.subscription_id, obs.source) == ("p-1", "s-1", source)
    assert (obs.status, obs.amount, obs.observed_at) == (
        "canceled",
        Money(149000, "RUB"),
        1700000000000,
    )
    assert (obs.cancellation_party, obs.cancellation_reason) == ("payment_network", "card_expired")


def test_same_outcome_from_two_sources_has_one_observation_id() -> None:
    p = parse_payment(PAYMENT)
    a = normalise(p, source="webhook", observed_at=1)
    b = normalise(p, source="reconciliation", observed_at=2)
    assert a.observation_id == b.observation_id
    other = parse_payment(dict(PAYMENT, status="succeeded", paid=True))
    assert normalise(other, source="webhook", observed_at=1).observation_id != a.observation_id


@pytest.mark.parametrize(
    "change",
    [
        {"metadata": {"subscription_id": "s-1"}},
        {"metadata": {"payment_id": "p-1"}},
        {"status": "refunded"},
    ],
)
def test_normalise_refuses_foreign_or_odd_payments(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        normalise(parse_payment(dict(PAYMENT, **change)), source="poll", observed_at=1)


# ------------------------------------------------------------------------ emulator faults
def test_fault_count_is_consumed_and_scoped_to_endpoint_and_phase() -> None:
    book = FaultBook()
    book.add({"endpoint": "payments.create", "kind": "500", "when": "after", "count": 2})
    assert book.pick("payments.get", "after") is None
    assert book.pick("payments.create", "before") is None
    assert book.pick("payments.create", "after") is not None
    assert book.pick("payments.create", "after") is not None
    assert book.pick("payments.create", "after") is None


def test_wildcard_fault_does_not_hit_notifications() -> None:
    book = FaultBook()
    book.add({"endpoint": "*", "kind": "429", "count": None})
    assert book.pick("refunds.get", "before") is not None
    assert book.pick("notifications") is None


def test_probabilistic_faults_repeat_for_a_seed() -> None:
    def run(seed: int) -> list[bool]:
        book = FaultBook(seed)
        book.add({"endpoint": "payments.get", "kind": "500", "count": None, "probability": 0.3})
        return [book.pick("payments.get", "before") is not None for _ in range(50)]

    assert run(3) == run(3)
    assert run(3) != run(4)
    assert 0 < sum(run(3)) < 50


@pytest.mark.parametrize(
    "spec",
    [
        {"endpoint": "payments.create", "kind": "boom"},
        {"endpoint": "nowhere", "kind": "500"},
        {"endpoint": "notifications", "kind": "500"},
        {"endpoint": "payments.create", "kind": "500", "when": "during"},
        {"endpoint": "payments.create", "kind": "500", "probability": 2},
    ],
)
def test_invalid_fault_specs_are_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultBook().add(spec)
