"""schemathesis hooks for tests/integration/test_api_fuzz.py (loaded by its CLI through
``SCHEMATHESIS_HOOKS``).

Valid data refused on purpose. A request can follow the document to the letter and still be
refused, for reasons no JSON Schema states: the server's state, or a rule across parameters.
Those refusals have their own error codes (declared statuses; the rules are in the
operations' descriptions), listed in ``BY_DESIGN`` with the reason; ``filter_failure`` lets a
"valid data rejected" failure through only for them. Any other refusal of valid data (a
``validation_error`` the document did not foresee, above all) still fails the run.

An Idempotency-Key names one operation: the same key with another body is 422
``idempotency_key_reused`` (IETF draft), a rule across requests that no schema states. The
fuzzer draws keys from the header's pattern and so draws the same short ones again ("0",
"A") for other bodies; a well-formed key it draws gets a unique suffix here (still
well-formed), so a valid request is judged on itself. Malformed keys are sent as drawn.
Replays of one key are tested on purpose elsewhere (tests/integration/test_api_intake.py).
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Any

import schemathesis

from api.deps import IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_PATTERN, MAX_IDEMPOTENCY_KEY_LEN

# error code -> why valid data gets it
BY_DESIGN = {
    "invalid_cursor": "a well-formed cursor this API never issued (cursors are opaque)",
    "invalid_range": "a date range whose start is after its end (two parameters)",
    "window_too_long": "an analytics window over the maximum (two parameters)",
    "invalid_credentials": "a well-formed console login with a wrong password",
    "idempotency_key_reused": "a key drawn again for another body (see before_call)",
    "plan_unavailable": "a plan id of the right shape that is not on sale",
    "no_trial": "a trial asked for a plan that has none (the catalogue)",
    "receipt_contact_required": "receipts on, and no contact in the body, profile or token",
    "currency_mismatch": "a new price in another currency than the plan's (its state)",
    "refund_invalid": "a refund in another currency than the payment's (its state)",
    "payment_not_retryable": "a retry of a payment never started (its state)",
    "price_effective_in_past": "a price dated before now (the clock)",
    "not_a_discrepancy": "a reconciliation item that agrees (its state)",
    "correction_impossible": "an item naming no object of ours (its state)",
    # Promo codes (issue 16): a code of the right shape is judged by the codes table.
    "promo_not_found": "a promo code of the right shape that does not exist (its state)",
    "promo_expired": "a promo code past its expiry or archived (its state, the clock)",
    "promo_exhausted": "a promo code redeemed its maximum times (its state)",
    "promo_already_used": "a promo code this user has redeemed (its state)",
    "promo_not_for_plan": "a promo code for other plans or another currency (its state)",
    "promo_not_with_trial": "a promo code with a trial (two fields)",
    "promo_exists": "a promo code name already taken in any case (its state)",
    "promo_expiry_in_past": "a promo code expiring before now (the clock)",
}
_counter = itertools.count()
_valid = re.compile(IDEMPOTENCY_KEY_PATTERN)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    headers = case.headers
    if not headers:
        return
    for name, value in list(headers.items()):
        if name.lower() != IDEMPOTENCY_KEY_HEADER.lower() or not isinstance(value, str):
            continue
        suffix = f"~{os.getpid()}.{next(_counter)}"
        unique = value + suffix
        if _valid.fullmatch(value) and len(unique) <= MAX_IDEMPOTENCY_KEY_LEN:
            headers[name] = unique


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    if type(failure).__name__ != "RejectedPositiveData":
        return True
    try:
        code = response.json()["error"]["code"]
    except Exception:
        return True
    return code not in BY_DESIGN
