"""The analytics queries by name: one table, for both places that answer them.

The admin API (api/routes/analytics.py) runs a query itself when ClickHouse is a server, and
otherwise asks the history worker (streams/history/server.py), which owns the embedded store.
Both read a query's parameters here, from the form the worker is asked with (strings:
instants in epoch ms, months as ISO dates), so a parameter is checked, and a default resolved,
the same way whoever answers. ``prepare`` gives the resolved call; its ``params`` are what the
API sends the worker (defaults filled in with the API's clock), its ``run`` answers on a
client. Here, beneath api and streams, because both use it; it knows nothing of HTTP.

Windows are ``[from, to)``, at most ``MAX_WINDOW_DAYS``, the last ``DEFAULT_DAYS`` up to now
by default; ``at`` defaults to now (the engine's clock).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from analytics import queries, recon
from billing.clickhouse import ClickHouse
from billing.clock import now_ms

DAY_MS = 86_400_000
DEFAULT_DAYS = 30
MAX_WINDOW_DAYS = 3 * 366

Params = Mapping[str, str]
# A query's resolved parameters by their wire names, in the order its function takes them.
Args = dict[str, Any]


class UnknownQuery(KeyError):
    """No query of that name."""


class BadQuery(ValueError):
    """A parameter the query cannot take; ``code`` names the rule (the API answers with it)."""

    def __init__(self, message: str, code: str = "bad_query") -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------- parameters
def _int(params: Params, name: str, default: int) -> int:
    value = params.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise BadQuery(f"{name} must be an integer") from None


def _bounded(params: Params, name: str, default: int, low: int, high: int) -> int:
    value = _int(params, name, default)
    if not low <= value <= high:
        raise BadQuery(f"{name} must be {low}..{high}")
    return value


def instant(params: Params, now: int) -> Args:
    return {"at": _int(params, "at", now)}


def window(params: Params, now: int) -> Args:
    to_ms = _int(params, "to", now)
    from_ms = _int(params, "from", to_ms - DEFAULT_DAYS * DAY_MS)
    if from_ms >= to_ms:
        raise BadQuery("the window is empty: from is not before to", "invalid_range")
    if to_ms - from_ms > MAX_WINDOW_DAYS * DAY_MS:
        raise BadQuery(f"a window is at most {MAX_WINDOW_DAYS} days", "window_too_long")
    return {"from": from_ms, "to": to_ms}


FIRST_MONTH, LAST_MONTH = date(1970, 1, 1), date(2100, 12, 1)


def month_range(params: Params, now: int) -> Args:
    months = _bounded(params, "months", 12, 1, 60)
    start = params.get("from_month")
    try:
        first = date.fromisoformat(start) if start else queries.month_start(now, months - 1)
    except ValueError:
        raise BadQuery("from_month must be an ISO date") from None
    first = first.replace(day=1)  # the month the date is in
    if not FIRST_MONTH <= first <= LAST_MONTH:
        # The history's dates (ClickHouse DateTime64 and epoch ms) start in 1970; a month
        # outside them would be an engine error (a 503), or a wrong answer before 1970.
        raise BadQuery(f"from_month must be from {FIRST_MONTH} to {LAST_MONTH}")
    return {"from_month": first, "months": months}


def limit(params: Params, now: int) -> Args:
    return {"limit": _bounded(params, "limit", 50, 1, 1000)}


def run_id(params: Params, now: int) -> Args:
    value = params.get("run_id")
    if not value:
        raise BadQuery("run_id is required")
    return {"run_id": str(value)}


# -------------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Query:
    parse: Callable[[Params, int], Args]  # the wire parameters and now -> resolved ones
    run: Callable[..., Any]  # (client, *resolved values)


QUERIES: dict[str, Query] = {
    "overview": Query(instant, queries.overview),
    "active_subscribers": Query(instant, queries.active_subscribers),
    "revenue_by_day": Query(window, queries.revenue_by_day),
    "totals_by_day": Query(window, queries.totals_by_day),
    "refund_rate": Query(window, queries.refund_rate),
    "payment_success": Query(window, queries.payment_success),
    "trials": Query(window, queries.trials),
    "discounts": Query(window, queries.discounts),
    "decline_reasons": Query(window, queries.decline_reasons),
    "dunning_recovery": Query(window, queries.dunning_recovery),
    "mrr_movements": Query(month_range, queries.mrr_movements),
    "discrepancies_by_day": Query(window, recon.discrepancies_by_day),
    "recon_runs": Query(limit, recon.runs),
    "recon_run_totals": Query(run_id, recon.run_totals),
}


@dataclass(frozen=True)
class Call:
    """A query with its parameters checked and resolved."""

    name: str
    args: Args

    @property
    def params(self) -> dict[str, str]:
        """The resolved parameters in wire form (what the history worker is asked with)."""
        return {k: v.isoformat() if isinstance(v, date) else str(v) for k, v in self.args.items()}

    def run(self, client: ClickHouse) -> Any:
        """The answer (synchronous: the client is; call it from a thread in async code)."""
        return QUERIES[self.name].run(client, *self.args.values())


def prepare(name: str, params: Params, *, now: int | None = None) -> Call:
    """Check and resolve a named query's parameters; UnknownQuery, BadQuery."""
    query = QUERIES.get(name)
    if query is None:
        raise UnknownQuery(name)
    return Call(name, query.parse(params, now_ms() if now is None else now))
