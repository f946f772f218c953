"""The gateway's guard against sending one request twice at a peak
(streams.gateway.inflight, issue 13): one create per request in flight or answered lately,
reads by a known provider id never held back."""

from __future__ import annotations

from schemas.messages import PaymentRedriven, PaymentRequested
from streams.gateway.agent import guard_key
from streams.gateway.inflight import RequestGuard
from streams.ledger.machine import decide
from tests.factories import POLICY, pay, sweep


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_request_in_flight_is_not_sent_again() -> None:
    guard = RequestGuard(60.0, clock=Clock())
    assert guard.begin("payment:a")
    assert not guard.begin("payment:a")  # another actor, the ledger's re-emission
    assert guard.begin("payment:b")  # others are not held back
    guard.end("payment:a", answered=False)  # unknown outcome: the next one may try
    assert guard.begin("payment:a")
    assert guard.skipped == 1


def test_an_answered_request_is_not_sent_again_until_remember_s() -> None:
    clock = Clock()
    guard = RequestGuard(60.0, clock=clock)
    assert guard.begin("payment:a")
    guard.end("payment:a", answered=True)
    clock.t += 59.9
    assert not guard.begin("payment:a")  # the ledger re-drove before reading the answer
    clock.t += 0.2
    assert guard.begin("payment:a")  # a later re-drive asks again (same key: no new charge)


def test_remembered_answers_are_bounded() -> None:
    guard = RequestGuard(60.0, max_remembered=3, clock=Clock())
    for i in range(5):
        assert guard.begin(f"payment:{i}")
        guard.end(f"payment:{i}", answered=True)
    assert guard.begin("payment:0")  # forgotten, oldest first
    assert not guard.begin("payment:4")


def test_only_creates_are_guarded_not_reads_by_provider_id() -> None:
    requested = decide(None, pay(), POLICY)
    state, [event] = requested.state, requested.events
    assert isinstance(event, PaymentRequested)
    assert guard_key(event) == f"payment:{event.request.payment_id}"
    assert state is not None
    redriven = [e for e in decide(state, sweep(1, 10**13), POLICY).events]
    assert isinstance(redriven[0], PaymentRedriven)
    assert guard_key(redriven[0]) == f"payment:{event.request.payment_id}"
    known = redriven[0].__class__(
        **{
            **{f: getattr(redriven[0], f) for f in redriven[0].__struct_fields__},
            "provider_payment_id": "prov-1",
        }
    )
    assert guard_key(known) is None
