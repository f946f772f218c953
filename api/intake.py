"""Intake: the idempotency record and the command (an outbox row) in ONE transaction, before
the API answers 202 (ARCHITECTURE.md, "Effectively once" → Intake).

Idempotency follows the IETF Idempotency-Key draft, scoped per user:
- same key, same request → the stored first answer, replayed;
- same key, different request → 422 ``idempotency_key_reused``;
- same key while the first request is still in its transaction → 409
  ``idempotency_key_in_flight``. ``pg_try_advisory_xact_lock`` on a hash of (user, key) makes
  that decision without waiting, and the primary key of ``idempotency_keys`` backs it up.
Ids are derived, never random, so a retried request can only ever name the same command.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypedDict

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from api import promo
from api.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    PaymentNotFound,
    PaymentNotRetryable,
    PlanNotFound,
    PlanUnavailable,
    ReceiptContactRequired,
    RefundInvalid,
    SubscriptionNotFound,
)
from billing import metrics
from billing.clock import now_ms
from billing.config import ApiSettings
from schemas.http import (
    AdminAutoRenew,
    AdminExtend,
    AdminGrant,
    AdminReason,
    AdminRefundCreate,
    AutoRenewUpdate,
    PaymentCreate,
    PlanChangeCreate,
    RefundCreate,
    RetryCreate,
)
from schemas.ids import command_id_for, derived_id, payment_id_for, subscription_id_for
from schemas.messages import (
    AdminAdjust,
    ChangePlan,
    Command,
    PaySubscription,
    PriceQuote,
    ReceiptCustomer,
    RefundPayment,
    RetryPayment,
    SetAutoRenew,
    SettlePayment,
    encode,
)
from schemas.money import Money, MoneyError
from schemas.periods import ms_to_dt
from schemas.receipts import valid_customer
from schemas.topics import COMMANDS

MAX_DESCRIPTION_LEN = 128  # YooKassa's limit


@dataclass(frozen=True)
class OutboxMessage:
    """An outbox row ready to publish, keyed by its subscription: a command to
    billing.commands, or (``topic``) a reconciliation correction to billing.provider-events."""

    command_id: str
    subscription_id: str
    payload: bytes
    topic: str = COMMANDS

    @property
    def key(self) -> bytes:
        return self.subscription_id.encode()


@dataclass(frozen=True)
class IntakeOutcome:
    status_code: int
    body: dict[str, Any]
    replayed: bool
    message: OutboxMessage | None  # set only when this request created the command

    @property
    def location(self) -> str | None:
        url = self.body.get("status_url")
        return url if isinstance(url, str) else None


def fingerprint(method: str, path: str, body: dict[str, Any]) -> str:
    """sha256 of method, path and the canonical JSON of the validated body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method.upper()} {path}\n{canonical}".encode()).hexdigest()


def advisory_lock_key(user_id: str, idem_key: str) -> int:
    """A signed 64-bit key for pg_try_advisory_xact_lock; collisions only cost a spurious 409."""
    digest = hashlib.sha256(f"intake\x00{user_id}\x00{idem_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def status_url(payment_id: str) -> str:
    return f"/api/v1/payments/{payment_id}"


def command_status_url(command_id: str) -> str:
    """Where an admin polls a command of theirs (accepted → processing → done | rejected)."""
    return f"/api/v1/admin/commands/{command_id}"


def actor_of(admin_id: str) -> str:
    return f"admin:{admin_id}"


Conn = psycopg.AsyncConnection[Any]
Build = Callable[[Conn], Awaitable[tuple[Command, dict[str, Any]]]]
# A synchronous write (the admin catalogue): runs in the idempotency transaction and returns
# the status and body to store and answer.
Write = Callable[[Conn], Awaitable[tuple[int, dict[str, Any]]]]
# The same, also leaving a message in the outbox (see ``enqueue``): status, body, and the
# message to publish after the commit (None: nothing new to publish).
WriteAndSend = Callable[[Conn], Awaitable[tuple[int, dict[str, Any], OutboxMessage | None]]]
_Run = WriteAndSend


def owner_of(command: Command) -> str | None:
    """The user whose subscription a command is about (not necessarily who asked: an admin)."""
    user_id = getattr(command, "user_id", None)
    return user_id if isinstance(user_id, str) else None


async def _idempotent(
    pool: AsyncConnectionPool[Any], *, user_id: str, idem_key: str, fp: str, run: _RunPending
) -> IntakeOutcome:
    """The IETF Idempotency-Key semantics around ``run``, in one transaction: a stored answer
    is replayed (same request) or refused (different request); otherwise ``run`` does the
    work and its answer is stored with the key. An ApiError raised by ``run`` rolls
    everything back: nothing is stored, the key stays free."""
    try:
        # Pipeline mode (issue 14): statements are sent without waiting for each answer, and
        # the server still runs them in order, each with its own snapshot. BEGIN, the lock
        # and the look-up of the key go in one round trip (the look-up runs after the lock
        # is held, so it sees what the previous holder committed); the last INSERT and the
        # COMMIT in another; a command's outbox INSERT goes with them too (its answer is read
        # after the commit, see ``_Pending``). Seven round trips became three: fewer socket
        # sends and wake-ups of the API and its PostgreSQL backend, a connection held less.
        async with pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                status, body, message = await _in_transaction(conn, user_id, idem_key, fp, run)
            if isinstance(message, _Pending):  # the answer came with the COMMIT's
                message = await message.result()
    except _Replay as replay:
        metrics.IDEMPOTENCY.labels("replayed").inc()
        return replay.outcome
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.table_name != "idempotency_keys":
            raise
        # Two transactions got past the advisory lock (hash collision or a lock-less
        # writer): the other one wins, this one is "in flight" from the client's view.
        metrics.IDEMPOTENCY.labels("in_flight").inc()
        raise IdempotencyKeyInFlight() from exc
    metrics.IDEMPOTENCY.labels("accepted").inc()
    return IntakeOutcome(status, body, False, message)


class _Replay(Exception):
    """The key's stored answer: the transaction ends (nothing written) and it is replayed."""

    def __init__(self, outcome: IntakeOutcome) -> None:
        self.outcome = outcome


@dataclass(frozen=True)
class _Pending:
    """A command's outbox INSERT sent but its answer not read yet: it is read after the
    COMMIT (which comes back in the same round trip), not in a round trip of its own."""

    cursor: psycopg.AsyncCursor[Any]
    message: OutboxMessage

    async def result(self) -> OutboxMessage | None:
        """The message to publish, or None: the row existed already (its relay owns it)."""
        return self.message if await self.cursor.fetchone() is not None else None


# ``_Run``, or a command's run whose outbox answer is read after the COMMIT.
_RunPending = Callable[
    [Conn], Awaitable[tuple[int, dict[str, Any], "OutboxMessage | _Pending | None"]]
]


async def _in_transaction(
    conn: Conn, user_id: str, idem_key: str, fp: str, run: _RunPending
) -> tuple[int, dict[str, Any], OutboxMessage | _Pending | None]:
    """The statements of ``_idempotent``'s transaction (pipeline mode)."""
    lock_cur = await conn.execute(
        "SELECT pg_try_advisory_xact_lock(%s)", (advisory_lock_key(user_id, idem_key),)
    )
    cur = await conn.execute(
        "SELECT fingerprint, response_status, response_body FROM idempotency_keys"
        " WHERE user_id = %s AND idem_key = %s",
        (user_id, idem_key),
    )
    locked = await lock_cur.fetchone()
    if locked is None or not locked[0]:
        metrics.IDEMPOTENCY.labels("in_flight").inc()
        raise IdempotencyKeyInFlight()
    stored = await cur.fetchone()
    if stored is not None:
        if stored[0] != fp:
            metrics.IDEMPOTENCY.labels("mismatch").inc()
            raise IdempotencyKeyReused()
        raise _Replay(IntakeOutcome(int(stored[1]), dict(stored[2]), True, None))

    status, body, message = await run(conn)
    await conn.execute(
        "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, command_id,"
        " response_status, response_body) VALUES (%s, %s, %s, %s, %s, %s)",
        (user_id, idem_key, fp, command_id_for(user_id, idem_key), status, Jsonb(body)),
    )
    return status, body, message


async def accept_command(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    *,
    user_id: str,
    idem_key: str,
    fp: str,
    build: Build,
    payment_id: str | None = None,
    refund_id: str | None = None,
) -> IntakeOutcome:
    """Store the idempotency record and the command built by ``build`` in one transaction.

    ``build`` runs inside it (it may read plans or check ownership and raise an ApiError, in
    which case nothing is stored) and returns the command and the 202 body. The idempotency
    record belongs to the caller (``user_id``); the outbox row to the subscription's user
    (the command's ``user_id``: an admin acts on someone else's subscription)."""
    command_id = command_id_for(user_id, idem_key)

    async def run(conn: Conn) -> tuple[int, dict[str, Any], _Pending]:
        command, body = await build(conn)
        assert command.command_id == command_id
        # No message in the end (``_Pending.result``): the command exists from before an
        # idempotency record expired; the relay owns it, and the answer names the same ids.
        message = await _insert_outbox(
            conn,
            settings,
            message_id=command_id,
            subscription_id=command.subscription_id,
            user_id=owner_of(command) or user_id,
            message_type=type(command).__name__,
            payload=encode(command),
            payment_id=payment_id,
            refund_id=refund_id,
        )
        return 202, body, message

    return await _idempotent(pool, user_id=user_id, idem_key=idem_key, fp=fp, run=run)


async def accept_write(
    pool: AsyncConnectionPool[Any], *, user_id: str, idem_key: str, fp: str, write: Write
) -> IntakeOutcome:
    """A synchronous write under the same Idempotency-Key rules as a command."""

    async def run(conn: Conn) -> tuple[int, dict[str, Any], OutboxMessage | None]:
        status, body = await write(conn)
        return status, body, None

    return await _idempotent(pool, user_id=user_id, idem_key=idem_key, fp=fp, run=run)


async def accept_write_and_send(
    pool: AsyncConnectionPool[Any], *, user_id: str, idem_key: str, fp: str, write: WriteAndSend
) -> IntakeOutcome:
    """A synchronous write that also leaves a message in the outbox (``enqueue``) in the same
    transaction, so the message is never lost once the write is answered."""
    return await _idempotent(pool, user_id=user_id, idem_key=idem_key, fp=fp, run=write)


_OUTBOX_INSERT = (
    "INSERT INTO command_outbox (command_id, subscription_id, user_id, command_type,"
    " payload, payment_id, refund_id, topic, status, status_reason, next_publish_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))"
    " ON CONFLICT (command_id) DO NOTHING RETURNING command_id"
)


async def enqueue(
    conn: Conn,
    settings: ApiSettings,
    *,
    message_id: str,
    subscription_id: str,
    user_id: str,
    message_type: str,
    payload: bytes,
    topic: str = COMMANDS,
    payment_id: str | None = None,
    refund_id: str | None = None,
    closed_reason: str | None = None,
) -> OutboxMessage | None:
    """Write one outbox row in the caller's transaction; the relay publishes it until the
    projection closes it. Returns the message to publish now, or None when the row existed
    already (its relay owns it) or is written closed (``closed_reason``: nothing to send)."""
    cur = await conn.execute(
        _OUTBOX_INSERT,
        (
            message_id,
            subscription_id,
            user_id,
            message_type,
            payload,
            payment_id,
            refund_id,
            topic,
            "accepted" if closed_reason is None else "done",
            closed_reason,
            settings.relay_delay_s,
        ),
    )
    if await cur.fetchone() is None or closed_reason is not None:
        return None
    return OutboxMessage(message_id, subscription_id, payload, topic)


async def _insert_outbox(
    conn: Conn,
    settings: ApiSettings,
    *,
    message_id: str,
    subscription_id: str,
    user_id: str,
    message_type: str,
    payload: bytes,
    payment_id: str | None = None,
    refund_id: str | None = None,
) -> _Pending:
    """``enqueue``'s INSERT of a command, its answer left to read after the COMMIT."""
    cur = await conn.execute(
        _OUTBOX_INSERT,
        (
            message_id,
            subscription_id,
            user_id,
            message_type,
            payload,
            payment_id,
            refund_id,
            COMMANDS,
            "accepted",
            None,
            settings.relay_delay_s,
        ),
    )
    return _Pending(cur, OutboxMessage(message_id, subscription_id, payload, COMMANDS))


# --------------------------------------------------------------------------- the catalogue
@dataclass(frozen=True)
class PlanQuote:
    """A plan as intake sees it: its price in force now (None: no version in force yet)."""

    plan_id: str
    name: str
    period_months: int
    archived: bool
    quote: PriceQuote | None


async def plan_quote(conn: Conn, plan_id: str) -> PlanQuote | None:
    """The plan and the price version in force now on the engine's clock (the greatest
    ``effective_from <= now``)."""
    cur = await conn.execute(
        "SELECT p.name, p.period_months, p.archived, pp.version, pp.amount_minor, pp.currency"
        " FROM plans p LEFT JOIN LATERAL (SELECT version, amount_minor, currency"
        "  FROM plan_prices WHERE plan_id = p.plan_id AND effective_from <= %s"
        "  ORDER BY effective_from DESC LIMIT 1) pp ON true"
        " WHERE p.plan_id = %s",
        (ms_to_dt(now_ms()), plan_id),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    name, months, archived, version, amount_minor, currency = row
    quote = None
    if version is not None:
        try:
            quote = PriceQuote(
                plan_id=plan_id,
                amount=Money(int(amount_minor), str(currency).strip()),
                period_months=int(months),
                price_version=int(version),
            )
        except MoneyError:
            quote = None  # a currency we cannot bill in: not for sale
    return PlanQuote(plan_id, str(name), int(months), bool(archived), quote)


async def _quote_for_sale(conn: Conn, plan_id: str, *, kept_plan: str | None = None) -> PlanQuote:
    """A plan that may be charged now: it exists, has a price in force, and is on sale, or is
    archived but is ``kept_plan`` (the plan the subscription already has keeps its price)."""
    plan = await plan_quote(conn, plan_id)
    if plan is None:
        raise PlanNotFound(details={"plan_id": plan_id})
    if plan.archived and plan_id != kept_plan:
        raise PlanUnavailable(details={"plan_id": plan_id})
    if plan.quote is None:
        raise PlanUnavailable("this plan has no price in force", details={"plan_id": plan_id})
    return plan


# ------------------------------------------------------------------------- the commands
# Every accept_* below has one shape: derive the ids from (caller, Idempotency-Key), build the
# command and its 202 body inside the intake transaction (reading what it needs and raising
# an ApiError to refuse), and hand both to ``_accept``. Each keeps only what differs.


class Head(TypedDict):
    """The fields every command carries before its own."""

    command_id: str
    subscription_id: str
    issued_at: int
    user_id: str


def _head(command_id: str, subscription_id: str, owner: str) -> Head:
    """A command's common fields, issued now on the engine's clock (billing.clock.now_ms:
    tests shift it for every process); ``owner`` is the subscription's user."""
    return Head(
        command_id=command_id, subscription_id=subscription_id, issued_at=now_ms(), user_id=owner
    )


def _accepted(status_url: str, **ids: Any) -> dict[str, Any]:
    """A 202 body: the ids the client may poll by, ``accepted``, and where to poll."""
    return {**ids, "status": "accepted", "status_url": status_url}


def _admin_accepted(command_id: str, **ids: Any) -> dict[str, Any]:
    """A 202 body for an admin: the command's own status URL."""
    return _accepted(command_status_url(command_id), command_id=command_id, **ids)


@dataclass(frozen=True)
class Caller:
    """Who asks, and on what: the idempotency record is the caller's (``user_id``,
    ``idem_key``), and the request's fingerprint covers its method and path with the body."""

    user_id: str
    idem_key: str
    method: str
    path: str
    email: str | None = None  # the token's email claim (a receipt's fallback contact)

    @property
    def command_id(self) -> str:
        return command_id_for(self.user_id, self.idem_key)

    @property
    def payment_id(self) -> str:
        """The payment a charging command of this request makes (derived: a retry names it
        again)."""
        return payment_id_for(self.command_id)

    @property
    def own_subscription_id(self) -> str:
        """The caller's own subscription (one per user)."""
        return subscription_id_for(self.user_id)

    def fingerprint(self, request: BaseModel) -> str:
        """This request's idempotency fingerprint: the method, the path and the validated body
        as JSON."""
        return fingerprint(self.method, self.path, request.model_dump(mode="json"))


async def _accept(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    caller: Caller,
    request: BaseModel,
    build: Build,
    *,
    payment_id: str | None = None,
    refund_id: str | None = None,
) -> IntakeOutcome:
    """``accept_command`` for a validated request body: its fingerprint is the method, the
    path and the body as JSON."""
    return await accept_command(
        pool,
        settings,
        user_id=caller.user_id,
        idem_key=caller.idem_key,
        fp=caller.fingerprint(request),
        build=build,
        payment_id=payment_id,
        refund_id=refund_id,
    )


async def accept_payment(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    caller: Caller,
    request: PaymentCreate,
) -> IntakeOutcome:
    """Buy a plan at its price in force now. An archived plan is not for sale (subscriptions
    already on it keep renewing: that is the ledger's timer, not intake)."""
    command_id, payment_id = caller.command_id, caller.payment_id
    subscription_id = caller.own_subscription_id

    async def build(conn: Conn) -> tuple[Command, dict[str, Any]]:
        plan = await _quote_for_sale(conn, request.plan_id)
        assert plan.quote is not None
        trial_days = await _trial_days(conn, plan.plan_id) if request.trial else 0
        customer = None
        if settings.receipts_enabled or request.receipt_email or request.receipt_phone:
            customer = await receipt_customer(
                conn, caller.user_id, caller.email, request.receipt_email, request.receipt_phone
            )
        if customer is None and settings.receipts_enabled:
            # Refused here, never by the provider later: a trial's first charge needs one too.
            raise ReceiptContactRequired()
        discount = None
        if request.promo_code is not None:
            if request.trial:
                raise promo.PromoRefused(
                    "a promo code is for a paid period, not a trial", code="promo_not_with_trial"
                )
            # Redeemed in this transaction, with the outbox row (api/promo.py): a refusal
            # later in it, or a replay of the key, counts nothing.
            discount = await promo.redeem(
                conn,
                request.promo_code,
                user_id=caller.user_id,
                price=plan.quote,
                subscription_id=subscription_id,
                payment_id=payment_id,
                command_id=command_id,
            )
        # The price version goes with the command, so the payment row records the version
        # the user was charged at.
        command = PaySubscription(
            **_head(command_id, subscription_id, caller.user_id),
            payment_id=payment_id,
            plan_id=plan.plan_id,
            amount=plan.quote.amount,
            period_months=plan.quote.period_months,
            price_version=plan.quote.price_version,
            return_url=request.return_url,
            description=plan.name[:MAX_DESCRIPTION_LEN],
            capture=not settings.two_stage_payments,
            trial_days=trial_days,
            customer=customer,
            promo=discount,
        )
        body = _accepted(
            status_url(payment_id), payment_id=payment_id, subscription_id=subscription_id
        )
        return command, body

    return await _accept(pool, settings, caller, request, build, payment_id=payment_id)


async def receipt_customer(
    conn: Conn,
    user_id: str,
    token_email: str | None,
    email: str | None = None,
    phone: str | None = None,
) -> ReceiptCustomer | None:
    """The 54-FZ receipt contact: the request's, else the user's profile, else the sign-on
    token's email; None when nothing valid is known (the ledger then uses the one it kept)."""
    if email is None and phone is None:
        cur = await conn.execute(
            "SELECT email, phone FROM user_profiles WHERE user_id = %s", (user_id,)
        )
        row = await cur.fetchone()
        if row is not None:
            email, phone = row[0], row[1]
    if email is None and phone is None:
        email = token_email
    customer = ReceiptCustomer(email=email, phone=phone)
    return customer if valid_customer(customer) else None


async def _trial_days(conn: Conn, plan_id: str) -> int:
    """The plan's free trial (issue 16); a plan without one is refused (422 no_trial). Who may
    still have a trial is the ledger's to decide (one per user, ever: its state)."""
    cur = await conn.execute("SELECT trial_days FROM plans WHERE plan_id = %s", (plan_id,))
    row = await cur.fetchone()
    days = int(row[0] or 0) if row is not None else 0
    if days <= 0:
        raise PlanUnavailable(
            "this plan has no free trial", code="no_trial", details={"plan_id": plan_id}
        )
    return days


async def accept_retry(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    caller: Caller,
    request: RetryCreate,
    *,
    retry_of: str,
) -> IntakeOutcome:
    """Pay again for what one of the caller's canceled payments was for, at the price in force
    now for its plan. Whether it may be retried (canceled, nothing in flight, the period not
    paid meanwhile) is the ledger's call, made serially per subscription."""
    command_id, payment_id = caller.command_id, caller.payment_id
    subscription_id = caller.own_subscription_id

    async def build(conn: Conn) -> tuple[Command, dict[str, Any]]:
        cur = await conn.execute(
            "SELECT p.plan_id, s.plan_id FROM payments p"
            " LEFT JOIN subscriptions s ON s.subscription_id = p.subscription_id"
            " WHERE p.payment_id = %s AND p.user_id = %s",
            (retry_of, caller.user_id),
        )
        row = await cur.fetchone()
        if row is None:
            cur = await conn.execute(
                "SELECT 1 FROM command_outbox WHERE payment_id = %s AND user_id = %s",
                (retry_of, caller.user_id),
            )
            if await cur.fetchone() is not None:
                raise PaymentNotRetryable(details={"payment_id": retry_of})
            raise PaymentNotFound()
        plan = await _quote_for_sale(conn, str(row[0]), kept_plan=row[1])
        assert plan.quote is not None
        command = RetryPayment(
            **_head(command_id, subscription_id, caller.user_id),
            retry_of=retry_of,
            payment_id=payment_id,
            price=plan.quote,
            return_url=request.return_url,
            description=plan.name[:MAX_DESCRIPTION_LEN],
        )
        body = _accepted(
            status_url(payment_id),
            payment_id=payment_id,
            subscription_id=subscription_id,
            retry_of=retry_of,
        )
        return command, body

    return await _accept(pool, settings, caller, request, build, payment_id=payment_id)


async def accept_plan_change(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    caller: Caller,
    request: PlanChangeCreate,
) -> IntakeOutcome:
    """Switch the caller's subscription to another plan on sale, priced now. The ledger
    decides upgrade (charged now, prorated) or downgrade (at the period end) and refuses a
    subscription that is not active, the same plan, or a payment in flight."""
    command_id, payment_id = caller.command_id, caller.payment_id
    subscription_id = caller.own_subscription_id

    async def build(conn: Conn) -> tuple[Command, dict[str, Any]]:
        await _subscription_owner(conn, subscription_id)
        plan = await _quote_for_sale(conn, request.plan_id)
        assert plan.quote is not None
        command = ChangePlan(
            **_head(command_id, subscription_id, caller.user_id),
            payment_id=payment_id,
            price=plan.quote,
            return_url=request.return_url,
            description=plan.name[:MAX_DESCRIPTION_LEN],
        )
        body = _accepted(
            status_url(payment_id),
            payment_id=payment_id,
            subscription_id=subscription_id,
            plan_id=plan.plan_id,
        )
        return command, body

    return await _accept(pool, settings, caller, request, build, payment_id=payment_id)


def _refund_amount(request: RefundCreate | AdminRefundCreate, currency: str) -> Money | None:
    """The amount asked for, in the payment's currency and positive; None: all that is left."""
    if request.amount is None:
        return None
    if request.amount.currency != currency:
        raise RefundInvalid(
            "the refund currency must be the payment's", details={"payment_currency": currency}
        )
    try:
        amount = Money.from_decimal(Decimal(request.amount.value), currency)
    except (MoneyError, InvalidOperation) as exc:
        raise RefundInvalid(str(exc)) from exc
    if amount.amount_minor <= 0:
        raise RefundInvalid("the refund amount must be positive")
    return amount


async def accept_refund(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    caller: Caller,
    request: RefundCreate | AdminRefundCreate,
    *,
    payment_id: str,
    admin: bool = False,
) -> IntakeOutcome:
    """Ask for a refund of one of the caller's payments, or (``admin``) of anyone's, with the
    admin recorded as the actor. The refundable amount is enforced by the ledger, serially
    per subscription."""
    command_id = caller.command_id
    refund_id = derived_id(command_id, "refund")

    async def build(conn: Conn) -> tuple[Command, dict[str, Any]]:
        sql = "SELECT subscription_id::text, currency, user_id FROM payments WHERE payment_id = %s"
        params: tuple[str, ...] = (payment_id,)
        if not admin:
            sql, params = sql + " AND user_id = %s", (payment_id, caller.user_id)
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
        if row is None:
            raise PaymentNotFound()
        subscription_id, currency, owner = row[0], str(row[1]).strip(), str(row[2])
        # The refund receipt's contact: the owner's profile (their token's email when they ask
        # themselves); None: the ledger sends the one it kept from their payments.
        token_email = caller.email if owner == caller.user_id else None
        customer = None
        if settings.receipts_enabled:  # off: no lookup on the hot path
            customer = await receipt_customer(conn, owner, token_email)
        command = RefundPayment(
            **_head(command_id, subscription_id, owner),
            refund_id=refund_id,
            payment_id=payment_id,
            amount=_refund_amount(request, currency),
            reason=request.reason,
            actor=actor_of(caller.user_id) if admin else "user",
            customer=customer,
        )
        if admin:
            body = _admin_accepted(
                command_id,
                refund_id=refund_id,
                payment_id=payment_id,
                subscription_id=subscription_id,
            )
        else:
            body = _accepted(
                f"/api/v1/refunds/{refund_id}", refund_id=refund_id, payment_id=payment_id
            )
        return command, body

    return await _accept(pool, settings, caller, request, build, refund_id=refund_id)


async def _subscription_owner(conn: Conn, subscription_id: str) -> tuple[str, str | None]:
    """(user id, plan id) of a subscription the read model knows, else 404."""
    cur = await conn.execute(
        "SELECT user_id, plan_id FROM subscriptions WHERE subscription_id = %s",
        (subscription_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise SubscriptionNotFound()
    return str(row[0]), row[1]


async def accept_auto_renew(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    caller: Caller,
    request: AutoRenewUpdate | AdminAutoRenew,
    *,
    subscription_id: str | None = None,
) -> IntakeOutcome:
    """Turn auto-renewal off (access lasts to the period end, then it expires) or on: the
    caller's own, or (``subscription_id`` given: an admin) anyone's, with actor and reason."""
    command_id = caller.command_id
    admin = subscription_id is not None
    sub_id = subscription_id or caller.own_subscription_id

    async def build(conn: Conn) -> tuple[Command, dict[str, Any]]:
        owner, _ = await _subscription_owner(conn, sub_id)
        command = SetAutoRenew(
            **_head(command_id, sub_id, owner),
            enabled=request.enabled,
            actor=actor_of(caller.user_id) if admin else "user",
            reason=request.reason if isinstance(request, AdminAutoRenew) else "",
        )
        ids = {"subscription_id": sub_id, "auto_renew": request.enabled}
        if admin:
            action = "auto_renew_on" if request.enabled else "auto_renew_off"
            body = _admin_accepted(command_id, **ids, action=action)
        else:
            body = _accepted("/api/v1/subscriptions/me", **ids)
        return command, body

    return await _accept(pool, settings, caller, request, build)


async def accept_admin_adjust(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    caller: Caller,
    request: AdminReason | AdminExtend | AdminGrant,
    *,
    subscription_id: str,
    action: Literal["extend", "grant", "cancel"],
    user_id: str | None = None,
) -> IntakeOutcome:
    """An admin's extend / grant / cancel of a subscription the read model knows. A grant
    gives one period of a plan (its own period length); an archived plan only to a
    subscription already on it. What applies (nothing to extend, nothing to cancel) is the
    ledger's call."""
    command_id = caller.command_id

    async def build(conn: Conn) -> tuple[Command, dict[str, Any]]:
        if user_id is not None:
            # A grant to a user by id (issue 16): their subscription may not exist yet (the
            # ledger starts it from the grant); its id is derived from theirs.
            cur = await conn.execute(
                "SELECT plan_id FROM subscriptions WHERE subscription_id = %s", (subscription_id,)
            )
            row = await cur.fetchone()
            owner, current_plan = user_id, (row[0] if row is not None else None)
        else:
            owner, current_plan = await _subscription_owner(conn, subscription_id)
        days, plan_id, months = 0, None, 0
        if isinstance(request, AdminExtend):
            days = request.days
        elif isinstance(request, AdminGrant):
            plan = await _quote_for_sale(conn, request.plan_id, kept_plan=current_plan)
            plan_id, months = plan.plan_id, plan.period_months
        command = AdminAdjust(
            **_head(command_id, subscription_id, owner),
            action=action,
            actor=actor_of(caller.user_id),
            reason=request.reason,
            days=days,
            plan_id=plan_id,
            period_months=months,
        )
        return command, _admin_accepted(command_id, subscription_id=subscription_id, action=action)

    return await _accept(pool, settings, caller, request, build)


async def accept_admin_settle(
    pool: AsyncConnectionPool[Any],
    settings: ApiSettings,
    caller: Caller,
    request: AdminReason,
    *,
    payment_id: str,
    action: Literal["capture", "cancel"],
) -> IntakeOutcome:
    """Capture or release a two-stage payment held for capture. Whether it is still held is
    the ledger's call (refused with a reason otherwise)."""
    command_id = caller.command_id

    async def build(conn: Conn) -> tuple[Command, dict[str, Any]]:
        cur = await conn.execute(
            "SELECT subscription_id::text, user_id FROM payments WHERE payment_id = %s",
            (payment_id,),
        )
        row = await cur.fetchone()
        if row is None:
            raise PaymentNotFound()
        subscription_id, owner = row
        command = SettlePayment(
            **_head(command_id, subscription_id, owner),
            payment_id=payment_id,
            action=action,
            actor=actor_of(caller.user_id),
            reason=request.reason,
        )
        return command, _admin_accepted(command_id, subscription_id=subscription_id, action=action)

    return await _accept(pool, settings, caller, request, build)
