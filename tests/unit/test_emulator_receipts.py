"""The emulator as a shop registered for 54-FZ receipts (issue 16): a payment or refund
without a valid receipt is refused with YooKassa's error shape, the items must add up to the
amount exactly, and ``receipt_registration`` follows the object."""

from __future__ import annotations

from typing import Any

import pytest

from providers.emulator.store import ApiFailure, EmulatorConfig, Store

URL = "http://emu"


def receipt(*values: str, vat: object = 1, contact: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "customer": {"email": "viewer@example.com"} if contact is None else contact,
        "tax_system_code": 1,
        "items": [
            {
                "description": "Subscription monthly, 1 month",
                "quantity": "1.0",  # the SDK sends quantities as strings
                "amount": {"value": v, "currency": "RUB"},
                "vat_code": vat,
                "payment_mode": "full_prepayment",
                "payment_subject": "service",
            }
            for v in values
        ],
    }


def body(value: str = "299.00", **extra: Any) -> dict[str, Any]:
    return {
        "amount": {"value": value, "currency": "RUB"},
        "capture": True,
        "confirmation": {"type": "redirect", "return_url": "https://cinema.example/return"},
        "metadata": {"payment_id": "p"},
        **extra,
    }


@pytest.fixture
def store() -> Store:
    return Store(EmulatorConfig(seed=1, require_receipts=True))


def refused(call: Any) -> ApiFailure:
    with pytest.raises(ApiFailure) as info:
        call()
    assert info.value.status == 400 and info.value.code == "invalid_request"
    return info.value


@pytest.mark.parametrize(
    ("extra", "parameter"),
    [
        ({}, "receipt"),
        ({"receipt": receipt("299.00", contact={})}, "receipt.customer"),
        ({"receipt": receipt("200.00", "99.01")}, "receipt.items"),
        ({"receipt": receipt("299.00", vat=11)}, "receipt.items[0].vat_code"),
        ({"receipt": receipt("299.00", vat=0)}, "receipt.items[0].vat_code"),
    ],
)
def test_a_payment_without_a_valid_receipt_is_refused(
    store: Store, extra: dict[str, Any], parameter: str
) -> None:
    failure = refused(lambda: store.create_payment(body(**extra), "k1", URL))
    assert failure.parameter == parameter
    assert not store.payments  # nothing was created


def test_items_adding_up_are_accepted_and_registration_follows_the_payment(store: Store) -> None:
    created, _ = store.create_payment(body(receipt=receipt("200.00", "99.00")), "k1", URL)
    assert created["receipt_registration"] == "pending"
    done = store.confirm(created["id"], True)
    assert done["status"] == "succeeded" and done["receipt_registration"] == "succeeded"

    refused(
        lambda: store.create_refund(
            {"payment_id": created["id"], "amount": {"value": "10.00", "currency": "RUB"}}, "r0"
        )
    )
    wrong = {
        "payment_id": created["id"],
        "amount": {"value": "10.00", "currency": "RUB"},
        "receipt": receipt("10.01"),
    }
    assert refused(lambda: store.create_refund(wrong, "r1")).parameter == "receipt.items"
    partial, _ = store.create_refund(dict(wrong, receipt=receipt("10.00")), "r2")
    assert partial["status"] == "succeeded" and partial["receipt_registration"] == "succeeded"
    assert [r["object"] for r in store.snapshot()["receipts"]] == ["payment", "refund"]


def test_a_hold_takes_its_receipt_at_capture(store: Store) -> None:
    held, _ = store.create_payment(body(capture=False), "k1", URL)
    store.confirm(held["id"], True)
    refused(lambda: store.settle(held["id"], "capture", {}, "c1"))
    captured = store.settle(held["id"], "capture", {"receipt": receipt("299.00")}, "c2")
    assert captured["status"] == "succeeded" and captured["receipt_registration"] == "succeeded"


def test_a_released_hold_needs_no_receipt(store: Store) -> None:
    held, _ = store.create_payment(body("1.00", capture=False), "k1", URL)
    store.confirm(held["id"], True)
    canceled = store.settle(held["id"], "cancel", {}, "c1")
    assert canceled["status"] == "canceled" and "receipt_registration" not in canceled


def test_without_the_knob_no_receipt_is_needed_but_a_sent_one_is_checked() -> None:
    store = Store(EmulatorConfig(seed=1))
    plain, _ = store.create_payment(body(), "k1", URL)
    assert "receipt_registration" not in plain
    refused(lambda: store.create_payment(body(receipt=receipt("1.00")), "k2", URL))
