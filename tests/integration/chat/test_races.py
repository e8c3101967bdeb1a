"""The races the conversation's lock settles, hammered: a join, a leave or a kick against
concurrent posts, and concurrent posts of one clientMessageId.

Every other round queues all of its requests behind a lock the test holds (the conversation's
row, or the clientMessageId's unique slot) and releases it only once each request waits there, so
they really contend; the other rounds run free. Nothing is asserted about who wins: after each
round, whatever the order was, a message has a copy for the member exactly when it is visible to
them, the visible ones are one side of the interval's edge, sequences run 1..N without a gap,
and one clientMessageId is one message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relaybox.common.settings import DatabaseSettings
from tests.integration.chat.conftest import TENANT, People
from tests.integration.chat.support import (
    add,
    conversation,
    copies,
    copy_violations,
    leave,
    page,
    sequence,
    word,
)

ROUNDS = 30
POOL = 16  # every request of a round, the lock's holder and the watcher: none waits for a slot


@pytest.fixture
def db_settings(database_url: str) -> DatabaseSettings:
    """The suite's database with a pool large enough for a round (none opened per round)."""
    return DatabaseSettings(url=database_url, pool_size=POOL, max_overflow=0)


POSTS = 4
QUEUED_WITHIN_S = 20.0  # a generous bound on "every request reached the lock"


async def _queued(engine: AsyncEngine, count: int) -> None:
    """Return once `count` sessions of this database wait on a lock."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + QUEUED_WITHIN_S
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")  # a fresh view each time
        while True:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            if waiting >= count:
                return
            assert loop.time() < deadline, f"only {waiting} of {count} requests queued"
            await asyncio.sleep(0.002)


@asynccontextmanager
async def _holding(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    """A transaction that ran `sql` (taking a lock) and rolls back on exit."""
    async with engine.connect() as holder:
        await holder.execute(text(sql), params)
        yield holder
        await holder.rollback()


async def _at_once(
    engine: AsyncEngine,
    calls: Sequence[Awaitable[httpx.Response]],
    hold: tuple[str, dict[str, Any]] | None,
) -> list[httpx.Response]:
    """The answers of `calls` run concurrently; with `hold`, they first all queue, in their
    order, behind the lock that statement takes in the test's own transaction (the lock goes to
    them in about that order: the edge falls at each position in turn)."""
    if hold is None:
        return list(await asyncio.gather(*calls))
    sql, params = hold
    tasks: list[asyncio.Future[httpx.Response]] = []
    async with _holding(engine, sql, **params):  # the lock is taken before any call starts
        try:
            for call in calls:  # one by one: they queue in the order of `calls`
                tasks.append(asyncio.ensure_future(call))
                await _queued(engine, len(tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
    return list(await asyncio.gather(*tasks))


def _lock(conversation_id: str, round_no: int) -> tuple[str, dict[str, Any]] | None:
    if round_no % 2:
        return None
    sql = "SELECT 1 FROM chat_conversations WHERE id = :c FOR UPDATE"
    return sql, {"c": conversation_id}


def _post(client: httpx.AsyncClient, conversation_id: str, body: str) -> Awaitable[httpx.Response]:
    return client.post("/chat/messages", json={"conversationId": conversation_id, "text": body})


async def _interval(engine: AsyncEngine, conversation_id: str, user: str) -> tuple[int, int | None]:
    """The user's latest membership interval (joined_seq, left_seq)."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT joined_seq, left_seq FROM chat_members WHERE conversation_id = :c "
                    "AND user_id = :u ORDER BY id DESC LIMIT 1"
                ),
                {"c": conversation_id, "u": user},
            )
        ).one()
    return int(row.joined_seq), row.left_seq


async def _settled(
    engine: AsyncEngine, reader: httpx.AsyncClient, user: str, conversation_id: str, start: int
) -> set[int]:
    """Check the round's invariants; the sequences after `start` that `user` sees."""
    found, last = await sequence(engine, conversation_id)
    assert found == list(range(1, last + 1))  # gap-free, N messages numbered 1..N
    assert await copy_violations(engine, conversation_id) == {
        "outside": [],
        "missing": [],
        "unpushed": [],
    }
    shown = (await page(reader, conversationId=conversation_id, after=start, limit=100))["data"]
    seen = {m["seq"] for m in shown}
    others = {m["seq"] for m in shown if m["senderId"] != user}
    copied = {seq for seq in await copies(engine, conversation_id, user) if seq > start}
    assert copied == others, "a copy without visibility, or visibility without a copy"
    return seen


async def test_joins_and_leaves_racing_posts(people: People, engine: AsyncEngine) -> None:
    alice, bob, jo = people("alice"), people("bob"), people("jo")
    group = await conversation(alice, members=("bob", "jo"))
    await leave(jo, group)  # a group is re-joined by a member who left
    for round_no in range(ROUNDS):
        for action, ok in (("join", 201), ("leave", 204)):
            start = (await sequence(engine, group))[1]
            calls = [
                _post(alice if i % 2 else bob, group, f"{action} {round_no}.{i}")
                for i in range(POSTS)
            ]
            calls.insert(round_no % (POSTS + 1), jo.post(f"/chat/conversations/{group}/{action}"))
            answers = await _at_once(engine, calls, _lock(group, round_no))
            assert sorted(a.status_code for a in answers) == sorted([ok] + [202] * POSTS)
            seen = await _settled(engine, jo, "jo", group, start)
            joined, left = await _interval(engine, group, "jo")
            round_seqs = set(range(start + 1, start + POSTS + 1))
            edge = {s for s in round_seqs if s > joined and (left is None or s <= left)}
            assert seen == edge, (action, start, joined, left)


async def test_kicks_racing_posts(people: People, engine: AsyncEngine) -> None:
    alice, bob, jo = people("alice"), people("bob"), people("jo")
    group = await conversation(alice, members=("bob", "jo"))
    for round_no in range(ROUNDS):
        start = (await sequence(engine, group))[1]
        calls = [_post(alice if i % 2 else bob, group, f"{round_no}.{i}") for i in range(POSTS)]
        calls.append(_post(jo, group, f"jo {round_no}"))  # 202 before the kick, 403 after
        calls.insert(
            round_no % (POSTS + 2), alice.delete(f"/chat/conversations/{group}/members/jo")
        )
        answers = await _at_once(engine, calls, _lock(group, round_no))
        statuses = [a.status_code for a in answers]
        assert statuses.count(204) == 1 and statuses.count(202) in (POSTS, POSTS + 1), statuses
        seen = await _settled(engine, jo, "jo", group, start)
        joined, left = await _interval(engine, group, "jo")
        assert left is not None
        end = (await sequence(engine, group))[1]
        assert seen == set(range(start + 1, left + 1)), (start, joined, left)
        assert left <= end
        jo_posted = [
            a.json() for a in answers if a.status_code == 202 and a.json()["senderId"] == "jo"
        ]
        assert all(m["seq"] <= left for m in jo_posted)  # a post after the kick is refused
        await add(alice, group, "jo")


async def test_one_client_message_id_posted_at_once_is_one_message(
    people: People, engine: AsyncEngine
) -> None:
    alice, bob = people("alice"), people("bob")
    first = await conversation(alice, members=("bob",))
    second = await conversation(alice, members=("bob",))
    for round_no in range(ROUNDS):
        key = f"{round_no}-{word()}"
        calls = [
            bob.post(
                "/chat/messages",
                json={"conversationId": target, "text": f"once {key}", "clientMessageId": key},
            )
            for target in (first, first, first, second, second)
        ]
        # Held rounds: an uncommitted message of bob's already holds the key, so the first post
        # of each conversation waits at its insert and the others behind the conversations'
        # locks; both inserts then race for the key (the loser's sequence is rolled back).
        hold = None
        if round_no % 2 == 0:
            hold = (
                "INSERT INTO chat_messages (id, conversation_id, tenant_id, seq, sender_id, "
                "text, client_message_id) VALUES (gen_random_uuid(), :c, :t, 0, 'bob', 'x', :k)",
                {"c": first, "t": TENANT, "k": key},
            )
        answers = await _at_once(engine, calls, hold)
        # One post wins; a repeat in its conversation answers the stored message, one in the
        # other conversation is refused (the id names one message of bob's).
        (winner,) = [a.json() for a in answers if a.status_code == 202]
        for target, answer in zip((first, first, first, second, second), answers, strict=True):
            if target == winner["conversationId"]:
                assert answer.status_code in (200, 202) and answer.json()["id"] == winner["id"]
            else:
                assert answer.status_code == 409, answer.text
        for conversation_id in (first, second):
            found, last = await sequence(engine, conversation_id)
            assert found == list(range(1, last + 1))
        async with engine.connect() as conn:
            assert await _count(conn, key) == 1
    assert (
        len((await sequence(engine, first))[0]) + len((await sequence(engine, second))[0]) == ROUNDS
    )


async def test_one_idempotency_key_posted_at_once_is_one_message(
    people: People, engine: AsyncEngine
) -> None:
    bob = people("bob")
    group = await conversation(people("alice"), members=("bob",))
    for round_no in range(ROUNDS):
        key = f"key-{round_no}-{word()}"
        body = {"conversationId": group, "text": key}
        answers = await asyncio.gather(
            *(
                bob.post("/chat/messages", json=body, headers={"Idempotency-Key": key})
                for _ in range(3)
            )
        )
        statuses = sorted(a.status_code for a in answers)
        # One is accepted; each other one answers, while the first still runs, 409, and after
        # it committed, the stored answer: the same 202 with the same message (how often each
        # happens is timing; that one message was posted is checked below).
        assert 202 in statuses and set(statuses) <= {202, 409}, statuses
        assert len({a.json()["id"] for a in answers if a.status_code == 202}) == 1
    found, last = await sequence(engine, group)
    assert found == list(range(1, ROUNDS + 1)) and last == ROUNDS


async def _count(conn: AsyncConnection, key: str) -> int:
    found = await conn.scalar(
        text("SELECT count(*) FROM chat_messages WHERE client_message_id = :k"), {"k": key}
    )
    return int(found)
