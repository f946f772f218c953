"""The root of the project's own exceptions.

Why one root: a caller that must tell "our code refused this on purpose" from "something
broke" (a bug, a library error) catches ``BillingError`` and nothing broader. Every package
derives its errors from it (money, report reading, reconciliation runs and their store, the
CLI's usage errors, the API's answers), keeping a builtin base too where callers already rely
on one (``MoneyError`` and ``ReportError`` are ``ValueError``s). An error says what was
refused; the edge that answers a user maps it (the API's handlers, the CLI's exit status).
"""

from __future__ import annotations


class BillingError(Exception):
    """Refused on purpose by this project's code (not a bug, not a library's failure)."""
