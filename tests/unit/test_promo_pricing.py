"""The promo pricing function (schemas/promo.py), shared by the quote, intake and renewals."""

from __future__ import annotations

import pytest

from schemas.money import Money
from schemas.promo import (
    MIN_CHARGE_MINOR,
    Discount,
    after_period,
    applies_to,
    charge_for,
    discount_minor,
    normalise_code,
)

RUB = Money(29900, "RUB")


def pct(value: int, periods: int | None = 3) -> Discount:
    return Discount(code="P", kind="percent", value=value, plan_id="monthly", periods=periods)


def fixed(value: int, currency: str = "RUB") -> Discount:
    return Discount(code="F", kind="fixed", value=value, plan_id="monthly", currency=currency)


# (name, price, discount, charged minor units)
CASES: list[tuple[str, Money, Discount | None, int]] = [
    ("no promo", RUB, None, 29900),
    ("20 % off", RUB, pct(20), 23920),
    ("33 %: the discount is rounded down, never the charge", RUB, pct(33), 29900 - 9867),
    ("100 % charges the minimum", RUB, pct(100), MIN_CHARGE_MINOR),
    ("fixed 50.00 off", RUB, fixed(5000), 24900),
    ("fixed above the price charges the minimum", RUB, fixed(40000), MIN_CHARGE_MINOR),
    ("fixed in another currency does not apply", RUB, fixed(5000, "USD"), 29900),
    ("a price under the minimum is never raised", Money(50, "RUB"), pct(100), 50),
    ("used up: no discount", RUB, pct(50, periods=0), 29900),
    ("forever", RUB, pct(50, periods=None), 14950),
    ("never negative: a negative value takes nothing", RUB, fixed(-500), 29900),
]


@pytest.mark.parametrize(("name", "price", "discount", "charged"), CASES, ids=[c[0] for c in CASES])
def test_charge_for(name: str, price: Money, discount: Discount | None, charged: int) -> None:
    got = charge_for(price, discount)
    assert got == Money(charged, price.currency), name
    if discount is not None:
        assert price.amount_minor - discount_minor(price, discount) == charged


def test_the_discount_counts_down_per_period_and_forever_stays() -> None:
    three = pct(20, periods=3)
    two = after_period(three)
    assert two is not None and two.periods == 2
    one = after_period(two)
    assert one is not None and after_period(one) is None
    forever = pct(20, periods=None)
    assert after_period(forever) == forever


def test_a_discount_applies_only_to_its_plan_while_periods_remain() -> None:
    assert applies_to(pct(20), "monthly")
    assert not applies_to(pct(20), "yearly")
    assert not applies_to(pct(20, periods=0), "monthly")
    assert not applies_to(None, "monthly")


def test_codes_are_case_insensitive() -> None:
    assert normalise_code("  summer25 ") == "SUMMER25" == normalise_code("Summer25")
