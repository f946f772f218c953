"""Promo codes: the discount a redeemed code carries, and the one pricing function.

Pure. The quote endpoint, intake and the ledger's renewals all price through ``charge_for``,
so the price shown before paying is the price charged, and each renewal is charged the same
way while the discount lasts.

Rules (issue 16, where it is silent):
- percent: 1..100 % off the plan's price in force, the discount rounded down to a minor unit
  (the user never pays a fraction of a kopeck less than shown); fixed: minor units off, in
  the plan's currency only.
- A charge is never below ``MIN_CHARGE_MINOR`` (YooKassa's minimum payment, 1.00): a 100 %
  code, or a fixed amount at or above the price, charges 1.00 a period. The card is still
  verified and saved for renewals, and every period keeps exactly one payment in the books.
- ``periods``: how many charges the discount still applies to (1 = once, N = repeating,
  None = forever). It is counted down when a discounted payment's period starts (dunning
  retries of one period keep the same discount).
- The discount is for the plan it was redeemed on: a renewal to another plan (a downgrade
  that took effect) is charged in full and the discount ends.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.money import Money

MIN_CHARGE_MINOR = 100  # YooKassa's minimum payment (1.00 RUB)
# What a code may look like (either case; stored upper case): 3 to 32 letters, digits, - and _.
PROMO_CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{2,31}$"
PromoKind = Literal["percent", "fixed"]


class Discount(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A redeemed promo code as the ledger carries it (in PaySubscription, on the payment
    request and in the subscription's state)."""

    code: str  # normalised: upper case
    kind: PromoKind
    value: int  # percent: 1..100; fixed: minor units of ``currency``
    plan_id: str  # the plan it was redeemed on
    currency: str | None = None  # fixed only
    periods: int | None = None  # charges left at the discount; None: every charge, forever


def normalise_code(code: str) -> str:
    """Codes are case-insensitive: stored and compared upper case, trimmed."""
    return code.strip().upper()


def discount_minor(price: Money, discount: Discount) -> int:
    """What the discount takes off ``price`` (0 when it does not apply), never bringing the
    charge below ``MIN_CHARGE_MINOR`` (nor below the price itself, if that is smaller)."""
    if discount.periods is not None and discount.periods <= 0:
        return 0
    if discount.kind == "percent":
        off = price.amount_minor * max(0, min(discount.value, 100)) // 100
    elif discount.currency == price.currency:
        off = max(0, discount.value)
    else:
        return 0
    floor = min(price.amount_minor, MIN_CHARGE_MINOR)
    return max(0, min(off, price.amount_minor - floor))


def charge_for(price: Money, discount: Discount | None) -> Money:
    """The amount charged for one period at ``price`` with ``discount`` (None: the price)."""
    if discount is None:
        return price
    return Money(price.amount_minor - discount_minor(price, discount), price.currency)


def applies_to(discount: Discount | None, plan_id: str) -> bool:
    """The discount still applies to a charge for ``plan_id``."""
    return (
        discount is not None
        and discount.plan_id == plan_id
        and (discount.periods is None or discount.periods > 0)
    )


def after_period(discount: Discount) -> Discount | None:
    """The discount once one discounted period has started: one charge fewer (None: used up)."""
    if discount.periods is None:
        return discount
    left = discount.periods - 1
    return msgspec.structs.replace(discount, periods=left) if left > 0 else None
