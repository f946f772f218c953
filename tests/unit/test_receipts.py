"""54-FZ receipts (issue 16): the pure builder's sums are exact for every kind of charge
(upgrade credits and promo discounts included) and for partial refunds; card checks take no
receipt; the ledger carries the contact from the purchase into renewals and refunds."""

from __future__ import annotations

import msgspec
import pytest

from schemas.messages import (
    PaymentRequest,
    PaymentRequested,
    ReceiptCustomer,
    RefundRequest,
    RefundRequested,
    RefundSucceeded,
    SubscriptionDue,
    decode_event,
    encode,
)
from schemas.money import Money
from schemas.receipts import (
    ReceiptError,
    ReceiptPolicy,
    payment_receipt,
    refund_receipt,
    valid_customer,
)
from schemas.state import decode_state, encode_state
from streams.ledger.machine import decide, due_commands, next_due
from tests.factories import POLICY, USER, active, apply, pay, refund, refund_seen

ON = ReceiptPolicy(enabled=True, tax_system_code=1, vat_code=1)
MAIL = ReceiptCustomer(email="viewer@example.com")


def request(kind: str = "purchase", amount: int = 29900, **kw: object) -> PaymentRequest:
    fields: dict[str, object] = {
        "payment_id": "p-1",
        "command_id": "c-1",
        "user_id": USER,
        "plan_id": "monthly",
        "amount": Money(amount, "RUB"),
        "period_months": 1,
        "return_url": "https://cinema.example/return",
        "description": "Cinema monthly",
        "kind": kind,
        "customer": MAIL,
    }
    fields.update(kw)
    return PaymentRequest(**fields)  # type: ignore[arg-type]


def refund_request(amount: int, **kw: object) -> RefundRequest:
    fields: dict[str, object] = {
        "refund_id": "r-1",
        "command_id": "c-2",
        "payment_id": "p-1",
        "provider_payment_id": "prov-1",
        "amount": Money(amount, "RUB"),
        "customer": MAIL,
        "plan_id": "monthly",
        "period_months": 1,
    }
    fields.update(kw)
    return RefundRequest(**fields)  # type: ignore[arg-type]


def item_sum(body: dict[str, object]) -> int:
    items = body["items"]
    assert isinstance(items, list)
    return sum(
        Money.from_decimal(i["amount"]["value"], i["amount"]["currency"]).amount_minor
        * int(i["quantity"])
        for i in items
    )


@pytest.mark.parametrize(
    ("kind", "amount", "extra"),
    [
        ("purchase", 29900, {}),
        ("purchase", 1, {}),
        ("renewal", 299_000, {"period_months": 12}),
        ("retry", 29901, {}),
        # An upgrade: the plan's price less the credit of the unused days.
        (
            "upgrade",
            299_000 - 12_345,
            {"plan_amount": Money(299_000, "RUB"), "credits": {"p-0": 12_345}},
        ),
        # A promo discount: the plan's full price less the discount.
        ("purchase", 20_930, {"plan_amount": Money(29_900, "RUB")}),
    ],
)
def test_payment_receipt_items_sum_exactly_to_the_charge(
    kind: str, amount: int, extra: dict[str, object]
) -> None:
    receipt = payment_receipt(request(kind, amount, **extra), ON)
    assert receipt is not None
    body = receipt.to_provider()
    assert item_sum(body) == amount
    assert body["customer"] == {"email": "viewer@example.com"}
    assert body["tax_system_code"] == 1
    (item,) = body["items"]  # type: ignore[misc]
    assert item["payment_subject"] == "service"
    assert item["payment_mode"] == "full_prepayment"
    assert item["vat_code"] == 1
    assert len(item["description"]) <= 128
    if "plan_amount" in extra:
        assert "less" in item["description"]


@pytest.mark.parametrize("kind", ["trial", "verify"])
def test_card_checks_take_no_money_and_no_receipt(kind: str) -> None:
    assert payment_receipt(request(kind, 100), ON) is None
    # Even without a contact: nothing is sent, nothing is refused.
    assert payment_receipt(request(kind, 100, customer=None), ON) is None


def test_receipts_off_sends_none() -> None:
    assert payment_receipt(request(), ReceiptPolicy()) is None
    assert refund_receipt(refund_request(100), ReceiptPolicy()) is None


@pytest.mark.parametrize(
    "customer",
    [
        None,
        ReceiptCustomer(),
        ReceiptCustomer(email="not-an-email"),
        ReceiptCustomer(phone="+7 900 000-00-00"),
    ],
)
def test_no_valid_contact_is_an_error_never_a_receipt_without_one(
    customer: ReceiptCustomer | None,
) -> None:
    with pytest.raises(ReceiptError):
        payment_receipt(request(customer=customer), ON)
    with pytest.raises(ReceiptError):
        refund_receipt(refund_request(100, customer=customer), ON)


def test_a_phone_alone_is_a_contact() -> None:
    phone = ReceiptCustomer(phone="79001234567")
    assert valid_customer(phone)
    receipt = payment_receipt(request(customer=phone), ON)
    assert receipt is not None and receipt.to_provider()["customer"] == {"phone": "79001234567"}


def test_partial_refunds_then_the_rest_each_sum_exactly_and_add_up_to_the_payment() -> None:
    parts = [10_000, 15_000, 4_900]  # 100.00 + 150.00 + the last 49.00 of 299.00
    bodies = [refund_receipt(refund_request(p), ON) for p in parts]
    sums = [item_sum(b.to_provider()) for b in bodies if b is not None]
    assert sums == parts and sum(sums) == 29_900


def test_policy_ranges_are_checked() -> None:
    with pytest.raises(ValueError):
        ReceiptPolicy(enabled=True, vat_code=11)
    with pytest.raises(ValueError):
        ReceiptPolicy(enabled=True, vat_code=0)
    with pytest.raises(ValueError):
        ReceiptPolicy(enabled=True, tax_system_code=7)
    plain = payment_receipt(request(), ReceiptPolicy(enabled=True))
    assert plain is not None and "tax_system_code" not in plain.to_provider()


# ----------------------------------------------------- the contact through the ledger
def test_the_purchase_contact_is_kept_for_the_renewal_and_the_refund() -> None:
    buy = msgspec.structs.replace(pay(), customer=MAIL)
    state, _ = apply(None, [buy])
    assert state.customer == MAIL
    # Kept across encode/decode; a state written before receipts decodes without one.
    assert decode_state(encode_state(state)).customer == MAIL
    assert decode_state(encode_state(active())).customer is None

    renewal_state = msgspec.structs.replace(active(), customer=MAIL)
    due = next_due(renewal_state, POLICY)
    assert due is not None
    commands = due_commands(renewal_state, due[1] + 1, POLICY)
    renew = [c for c in commands if isinstance(c, SubscriptionDue) and c.kind == "renew"]
    assert renew
    d = decide(renewal_state, renew[0], POLICY)
    requested = [e for e in d.events if isinstance(e, PaymentRequested)]
    assert requested and requested[0].request.customer == MAIL

    d = decide(renewal_state, refund("r1", 1000), POLICY)
    (req,) = [e for e in d.events if isinstance(e, RefundRequested)]
    assert req.request.customer == MAIL
    assert (req.request.plan_id, req.request.period_months) == ("monthly", 1)


def test_a_refund_names_its_own_contact_and_the_registration_is_kept() -> None:
    phone = ReceiptCustomer(phone="79001234567")
    asked = msgspec.structs.replace(refund("r1", 1000), customer=phone)
    state, _ = apply(active(), [asked])
    assert state.customer == phone
    seen = msgspec.structs.replace(
        refund_seen("r1"), amount=Money(1000, "RUB"), receipt_registration="succeeded"
    )
    d = decide(state, seen, POLICY)
    (done,) = [e for e in d.events if isinstance(e, RefundSucceeded)]
    assert done.receipt_registration == "succeeded"
    assert decode_event(encode(done)) == done


# Found by schemathesis: the JSON Schema pattern (ECMA) and Python's regex must agree, and
# nothing PostgreSQL refuses (NUL) may pass.
@pytest.mark.parametrize(
    "email",
    [
        "x\x00@example.com",  # NUL: a 500 from PostgreSQL before
        "P\x85@example.com",  # U+0085: valid for ECMA's \s, refused by Python's
        "a\u2028b@example.com",
        "\ufeffa@example.com",
        "viewer@example.com\n",  # Python's $ matches before a final newline
        "a b@example.com",
        "a@b@example.com",
        "viewer@example",
    ],
)
def test_a_contact_outside_printable_ascii_is_refused_everywhere(email: str) -> None:
    from pydantic import TypeAdapter, ValidationError

    from schemas.http import ReceiptEmail

    with pytest.raises(ValidationError):
        TypeAdapter(ReceiptEmail).validate_python(email)
    assert not valid_customer(ReceiptCustomer(email=email))


@pytest.mark.parametrize("email", ["viewer@example.com", "a.b+c_d@mail.xn--p1ai"])
def test_ordinary_contacts_pass_both_checks(email: str) -> None:
    from pydantic import TypeAdapter

    from schemas.http import ReceiptEmail

    assert TypeAdapter(ReceiptEmail).validate_python(email) == email
    assert valid_customer(ReceiptCustomer(email=email))
