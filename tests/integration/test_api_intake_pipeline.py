"""The intake transaction in pipeline mode (issue 14): the outbox INSERT's answer is read
after the COMMIT, so the cases that hang on it are checked here."""

from __future__ import annotations

import pytest

from schemas.ids import command_id_for, payment_id_for
from tests.integration.api_support import Api, new_user

pytestmark = pytest.mark.integration


async def test_a_retry_after_the_key_expired_answers_the_same_ids_and_publishes_nothing(
    api: Api,
) -> None:
    """The idempotency record is gone (expired) but the command's outbox row is not: the retry
    is a new transaction whose outbox INSERT does nothing, so there is nothing to publish
    (the relay owns the row), and the answer names the same payment."""
    user, key = new_user(), "key-expired"
    first = await api.pay(user, key)
    await api.settle()
    sent = len(api.publisher.sent)
    async with api.pool.connection() as conn:
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE user_id = %s AND idem_key = %s", (user, key)
        )
    again = await api.pay(user, key)
    await api.settle()
    assert first.status_code == again.status_code == 202
    assert again.json()["payment_id"] == payment_id_for(command_id_for(user, key))
    assert again.json() == first.json()
    assert "idempotent-replayed" not in again.headers
    assert len(api.publisher.sent) == sent  # nothing new to publish
    async with api.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM command_outbox WHERE user_id = %s", (user,))
        assert await cur.fetchone() == (1,)


async def test_a_new_command_is_published_once_after_its_commit(api: Api) -> None:
    user = new_user()
    resp = await api.pay(user, "key-new")
    await api.settle()
    assert resp.status_code == 202
    mine = [
        m for m in api.publisher.commands() if m[1].command_id == command_id_for(user, "key-new")
    ]
    assert len(mine) == 1
