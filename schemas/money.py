"""Money: integer minor units plus an ISO-4217 currency. Never float.

The provider speaks decimal strings ("1490.00"); we convert only at that edge.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import msgspec

from schemas.errors import BillingError

# Minor-unit exponents of the currencies we accept. Unknown currencies are refused rather
# than guessed: a wrong exponent is a hundredfold billing error.
CURRENCY_EXPONENT: dict[str, int] = {"RUB": 2, "USD": 2, "EUR": 2, "KZT": 2, "BYN": 2}


class MoneyError(BillingError, ValueError):
    """A money value that cannot be represented exactly."""


class Money(msgspec.Struct, frozen=True):
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if self.currency not in CURRENCY_EXPONENT:
            raise MoneyError(f"unsupported currency {self.currency!r}")
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise MoneyError("amount_minor must be an integer")

    @classmethod
    def from_decimal(cls, value: str | Decimal, currency: str) -> Money:
        """Parse a provider amount ("1490.00"); refuses sub-minor precision."""
        if currency not in CURRENCY_EXPONENT:
            raise MoneyError(f"unsupported currency {currency!r}")
        try:
            dec = Decimal(value)
        except (InvalidOperation, TypeError) as exc:
            raise MoneyError(f"not a decimal amount: {value!r}") from exc
        if not dec.is_finite():
            raise MoneyError(f"not a finite amount: {value!r}")
        scaled = dec.scaleb(CURRENCY_EXPONENT[currency])
        if scaled != scaled.to_integral_value():
            raise MoneyError(f"{value!r} has more precision than {currency} allows")
        return cls(int(scaled), currency)

    def to_decimal(self) -> Decimal:
        exp = CURRENCY_EXPONENT[self.currency]
        return Decimal(self.amount_minor).scaleb(-exp).quantize(Decimal(1).scaleb(-exp))

    def to_provider(self) -> dict[str, str]:
        """YooKassa's amount object: {"value": "1490.00", "currency": "RUB"}."""
        return {"value": str(self.to_decimal()), "currency": self.currency}

    def __str__(self) -> str:
        return f"{self.to_decimal()} {self.currency}"
