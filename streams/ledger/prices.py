"""The plan catalogue's effective-dated prices, as the ledger's timer sees them.

Renewals charge the price in force when the new period starts (the current period's end), so
an admin can schedule a price change ahead. The timer looks the price up here and puts it in
the SubscriptionDue command: the machine stays pure and a replay charges the same amount.

Pure: the book is built from rows; reading them from PostgreSQL is
``streams/ledger/price_store.py``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.messages import PriceQuote
from schemas.money import Money


@dataclass
class PriceBook:
    """plan_id → versions sorted by effective_from (epoch ms)."""

    versions: dict[str, list[tuple[int, PriceQuote]]] = field(default_factory=dict)
    loaded_at: float = 0.0

    @classmethod
    def of(cls, rows: Iterable[tuple[str, int, int, int, str, int]]) -> PriceBook:
        """Rows of (plan_id, version, effective_from_ms, amount_minor, currency, months)."""
        book = cls()
        for plan_id, version, eff, amount, currency, months in rows:
            quote = PriceQuote(
                plan_id=plan_id,
                amount=Money(int(amount), currency.strip()),
                period_months=int(months),
                price_version=int(version),
            )
            book.versions.setdefault(plan_id, []).append((int(eff), quote))
        for v in book.versions.values():
            v.sort(key=lambda item: item[0])
        return book

    def quote(self, plan_id: str | None, at_ms: int) -> PriceQuote | None:
        """The price of ``plan_id`` in force at ``at_ms``; None if unknown (the machine then
        charges what the period was sold at)."""
        if plan_id is None:
            return None
        versions = self.versions.get(plan_id)
        if not versions:
            return None
        i = bisect.bisect_right([eff for eff, _ in versions], at_ms) - 1
        return versions[i][1] if i >= 0 else None
