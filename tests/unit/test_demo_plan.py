"""The demo's timeline (pure): every console source gets data whatever the seed."""

from __future__ import annotations

import pytest

from billing.demo import DAY_MS, DemoPlan, demo_end, plan_actions

START = 1_780_000_000_000
OVERVIEW_DAYS = 30  # the console's overview shows the 30 days before now


@pytest.mark.parametrize("months", [1, 2, 3, 12])
@pytest.mark.parametrize("users", [4, 17, 60])
def test_a_checkout_decline_falls_inside_the_overview_window(users: int, months: int) -> None:
    for seed in range(40):
        actions, _plans = plan_actions(DemoPlan(users, months, seed, "t"), START)
        end = demo_end(START, months)
        late = [a for a in actions if a.kind == "newcomer_declined"]
        assert len(late) == 1, actions
        # the reconciliation's evening adds a few hours after the end, never days
        assert end - OVERVIEW_DAYS * DAY_MS + DAY_MS < late[0].at_ms < end, (seed, late)
        assert late[0].users[0] not in _plans  # a newcomer: the roles stay as they were


def test_every_role_happens_at_least_once() -> None:
    actions, plans = plan_actions(DemoPlan(4, 1, 7, "t"), START)
    kinds = {a.kind for a in actions}
    assert {"signup", "upgrade", "refund_partial", "refund_full", "auto_renew_off"} <= kinds
    assert {"admin_extend", "newcomer_declined"} <= kinds
    assert sorted(u for a in actions if a.kind == "signup" for u in a.users) == sorted(plans)
