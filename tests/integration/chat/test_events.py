"""Chat events written by the API, in the transaction of the change they announce: posts,
conversations and memberships, reads, the DELIVERED a fetch or a push receipt records; stream
tickets; and the sweeper's retention of events, tickets and presence rows.

Each event is checked as a `chat_events` row (kind, audience, data) and as the outbox rows that
carry it to the realtime replicas (destination `events`, routing key `chat.event`, the users'
routing keys in `BCC`, `fanout_batch` users a row, `outbox.xid` = the event's xid). A copy's move
and its event are proven to be one transaction by the copy row's `xmin` (the 32 low bits of the
event's xid). The API runs with `fanout_batch` = 2 so that every audience of three or more users
spans several outbox rows.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.auth import USER_SCOPES
from relaybox.api.settings import ApiSettings
from relaybox.common.chat.events import ROUTING_KEY, user_route
from relaybox.common.chat.tickets import verify_ticket
from relaybox.common.outbox import EVENTS
from relaybox.common.signing import SIGNATURE_HEADER, sign
from relaybox.consumer.sweeper import Sweeper
from tests.integration.chat.conftest import TENANT, People
from tests.integration.chat.support import (
    add,
    call,
    conversation,
    join,
    kick,
    leave,
    page,
    post,
    read,
)
from tests.integration.conftest import WEBHOOK_SECRET

FANOUT = 2
XID_LOW_BITS = 0xFFFFFFFF


@pytest.fixture
def chat_settings(chat_settings: ApiSettings) -> ApiSettings:
    """Small fan-out batches: an audience of three or more spans several outbox rows."""
    chat = chat_settings.chat.model_copy(update={"fanout_batch": FANOUT})
    return chat_settings.model_copy(update={"chat": chat})


# --- reading events back --------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    id: int
    xid: int
    tenant: str
    kind: str
    conversation_id: str | None
    message_id: str | None
    audience: list[str] | None
    data: dict[str, Any]


async def events(engine: AsyncEngine, *kinds: str) -> list[Event]:
    """The chat events (of these kinds, or all), in the order they were written."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, xid, tenant_id, kind, conversation_id::text, message_id::text, "
                "audience, payload FROM chat_events "
                "WHERE cardinality(CAST(:kinds AS text[])) = 0 "
                "OR kind = ANY(CAST(:kinds AS text[]))"
                " ORDER BY id"
            ),
            {"kinds": list(kinds)},
        )
        return [Event(*row) for row in rows]


async def carriers(engine: AsyncEngine, event: Event) -> list[dict[str, Any]]:
    """The outbox rows that carry `event`, in order."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT destination, routing_key, headers, payload, xid FROM outbox "
                "WHERE destination = :d AND (payload ->> 'id')::bigint = :id ORDER BY id"
            ),
            {"d": EVENTS, "id": event.id},
        )
        return [dict(row) for row in rows.mappings()]


async def carried(engine: AsyncEngine, event: Event) -> list[str]:
    """Check the outbox rows that carry `event` (one per FANOUT users, each user's routing key
    in BCC, the event in the body, the event's xid) and return their users, in order."""
    rows = await carriers(engine, event)
    assert rows, f"no outbox row carries event {event.id}"
    to: list[str] = []
    for i, row in enumerate(rows):
        users = row["payload"]["to"]
        assert 0 < len(users) <= FANOUT
        assert len(users) == FANOUT or i == len(rows) - 1  # full batches but the last
        assert row["routing_key"] == ROUTING_KEY
        assert row["headers"] == {"BCC": [user_route(event.tenant, u) for u in users]}
        assert row["payload"] == {
            "id": event.id,
            "xid": event.xid,
            "tenant": event.tenant,
            "type": event.kind,
            "to": users,
            "data": event.data,
        }
        assert row["xid"] == event.xid
        to.extend(users)
    assert len(to) == len(set(to)), "each user once"
    if event.audience is not None:
        assert to == event.audience
    async with engine.connect() as conn:  # the resume's index: the same users, in stream order
        readers = await conn.execute(
            text("SELECT tenant_id, user_id, xid FROM chat_event_readers WHERE event_id = :e"),
            {"e": event.id},
        )
        assert sorted(tuple(r) for r in readers) == sorted((event.tenant, u, event.xid) for u in to)
    return to


async def one(engine: AsyncEngine, kind: str) -> Event:
    found = await events(engine, kind)
    assert len(found) == 1, found
    return found[0]


async def copy_xmin(engine: AsyncEngine, message_id: str, user: str) -> int:
    """The id (32 bits) of the transaction that last wrote this copy."""
    async with engine.connect() as conn:
        xmin = await conn.scalar(
            text(
                "SELECT xmin::text::bigint FROM chat_recipients "
                "WHERE message_id = :m AND user_id = :u"
            ),
            {"m": message_id, "u": user},
        )
    assert xmin is not None
    return int(xmin)


async def status_events(engine: AsyncEngine, status: str) -> list[Event]:
    return [e for e in await events(engine, "message.status") if e.data["status"] == status]


def copies_of(event: Event) -> set[tuple[str, str]]:
    return {(c["messageId"], c["userId"]) for c in event.data["copies"]}


# --- message.created ------------------------------------------------------------------------------


async def test_a_post_writes_message_created_as_get_shows_it(
    people: People, engine: AsyncEngine
) -> None:
    alice = people("alice")
    group = await conversation(alice, members=("bob", "carol", "dave"))
    body = {"conversationId": group, "text": "lunch?", "clientMessageId": "c-lunch"}
    posted = await call(alice, "POST", "/chat/messages", 202, json=body)
    event = await one(engine, "message.created")
    shown = await call(alice, "GET", f"/chat/messages/{posted['id']}", 200)
    assert event.data == shown == posted
    assert event.data["createdAt"].endswith("Z") and event.data["clientMessageId"] == "c-lunch"
    assert event.tenant == TENANT and event.audience is None  # a resume reads the copies
    assert (event.conversation_id, event.message_id) == (group, posted["id"])
    to = await carried(engine, event)
    assert to[0] == "alice" and sorted(to) == ["alice", "bob", "carol", "dave"]
    # the copies and the event are one transaction
    assert await copy_xmin(engine, posted["id"], "bob") == event.xid & XID_LOW_BITS


async def test_a_replayed_post_writes_no_event(people: People, engine: AsyncEngine) -> None:
    alice = people("alice")
    group = await conversation(alice, members=("bob",))
    body = {"conversationId": group, "text": "once", "clientMessageId": "c-once"}
    await call(alice, "POST", "/chat/messages", 202, json=body)
    await call(alice, "POST", "/chat/messages", 200, json=body)  # the same clientMessageId
    keyed = {"conversationId": group, "text": "keyed"}
    headers = {"Idempotency-Key": "k-1"}
    first = await call(alice, "POST", "/chat/messages", 202, json=keyed, headers=headers)
    again = await call(alice, "POST", "/chat/messages", 202, json=keyed, headers=headers)
    assert again == first
    created = await events(engine, "message.created")
    assert [e.data["text"] for e in created] == ["once", "keyed"]
    # a refused post writes nothing either
    await call(people("mallory"), "POST", "/chat/messages", 404, json={**keyed, "text": "x"})
    await call(
        alice,
        "POST",
        "/chat/messages",
        409,
        json={
            "conversationId": await conversation(alice),
            "text": "x",
            "clientMessageId": "c-once",
        },
    )
    assert len(await events(engine, "message.created")) == 2


async def test_a_post_to_a_conversation_alone_tells_the_sender(
    people: People, engine: AsyncEngine
) -> None:
    alice = people("alice")
    alone = await conversation(alice)
    posted = await post(alice, alone, "note to self")
    event = await one(engine, "message.created")
    assert event.message_id == posted["id"]
    assert await carried(engine, event) == ["alice"]


# --- conversations and members --------------------------------------------------------------------


async def test_a_new_conversation_tells_its_first_members(
    people: People, engine: AsyncEngine
) -> None:
    olga = people("olga")
    body = {"kind": "group", "title": "Ops", "members": ["m1", "m2", "olga"]}
    group = (await call(olga, "POST", "/chat/conversations", 201, json=body))["id"]
    event = await one(engine, "conversation.created")
    assert event.data == {
        "conversationId": group,
        "kind": "group",
        "title": "Ops",
        "createdBy": "olga",
    }
    assert event.audience == ["olga", "m1", "m2"] and event.conversation_id == group
    await carried(engine, event)


async def test_a_direct_conversation_is_announced_once(people: People, engine: AsyncEngine) -> None:
    first = await call(
        people("ann"),
        "POST",
        "/chat/conversations",
        201,
        json={"kind": "direct", "members": ["ben"]},
    )
    again = await call(
        people("ben"),
        "POST",
        "/chat/conversations",
        200,
        json={"kind": "direct", "members": ["ann"]},
    )
    assert again["id"] == first["id"]
    event = await one(engine, "conversation.created")
    assert event.data == {
        "conversationId": first["id"],
        "kind": "direct",
        "title": None,
        "createdBy": "ann",
    }
    assert await carried(engine, event) == ["ann", "ben"]


def member_data(conversation_id: str, user: str, role: str, by: str) -> dict[str, str]:
    return {"conversationId": conversation_id, "userId": user, "role": role, "by": by}


async def test_membership_changes_tell_the_members_and_the_user_concerned(
    people: People, engine: AsyncEngine
) -> None:
    olga = people("olga")
    group = await conversation(olga, members=("m1", "m2"))
    await add(olga, group, "newbie")
    joined = await one(engine, "member.joined")
    assert joined.data == member_data(group, "newbie", "member", "olga")
    assert joined.audience == ["olga", "m1", "m2", "newbie"]
    await carried(engine, joined)

    url = f"/chat/conversations/{group}/members/m1"
    await call(olga, "PATCH", url, 200, json={"role": "admin"})
    role = await one(engine, "member.role")
    assert role.data == member_data(group, "m1", "admin", "olga")
    assert role.audience == ["olga", "m1", "m2", "newbie"]

    await leave(people("m2"), group)
    left = await one(engine, "member.left")
    assert left.data == member_data(group, "m2", "member", "m2")
    assert left.audience == ["olga", "m1", "newbie", "m2"]  # the leaver learns it too
    await carried(engine, left)

    await kick(people("m1"), group, "newbie")
    kicked = await one(engine, "member.kicked")
    assert kicked.data == member_data(group, "newbie", "member", "m1")
    assert kicked.audience == ["olga", "m1", "newbie"]
    await carried(engine, kicked)
    assert [e.kind for e in await events(engine)] == [
        "conversation.created",
        "member.joined",
        "member.role",
        "member.left",
        "member.kicked",
    ]


async def test_membership_calls_that_change_nothing_write_no_event(
    people: People, engine: AsyncEngine
) -> None:
    olga = people("olga")
    group = await conversation(olga, members=("m1", "m2"))
    written = len(await events(engine))
    await add(olga, group, "m1", status=200)  # already a member
    await call(
        olga, "PATCH", f"/chat/conversations/{group}/members/m1", 200, json={"role": "member"}
    )
    await leave(olga, group, status=409)  # the only owner
    await kick(people("m1"), group, "olga", status=403)  # a member kicks nobody
    await kick(olga, group, "stranger", status=404)
    await add(people("m2"), group, "x", status=403)
    await join(people("m1"), group, status=200)
    await join(people("outsider"), group, status=404)
    assert len(await events(engine)) == written


async def test_joining_a_channel_tells_its_members(people: People, engine: AsyncEngine) -> None:
    olga = people("olga")
    channel = await conversation(olga, "channel", members=("m1",))
    await join(people("zed"), channel)
    await join(people("zed"), channel, status=200)
    joined = await one(engine, "member.joined")
    assert joined.data == member_data(channel, "zed", "member", "zed")
    assert joined.audience == ["olga", "m1", "zed"]
    await leave(people("zed"), channel)
    await join(people("zed"), channel)  # a new interval: announced again
    kinds = [e.kind for e in await events(engine, "member.joined", "member.left")]
    assert kinds == ["member.joined", "member.left", "member.joined"]


# --- reads ----------------------------------------------------------------------------------------


async def test_a_read_tells_the_senders_and_the_readers_other_clients(
    people: People, engine: AsyncEngine
) -> None:
    alice, bob, carol = people("alice"), people("bob"), people("carol")
    group = await conversation(alice, members=("bob", "carol"))
    m1 = (await post(alice, group, "one"))["id"]
    m2 = (await post(alice, group, "two"))["id"]
    m3 = (await post(carol, group, "three"))["id"]
    before = await events(engine, "message.status")
    answer = await read(bob, m3)
    assert answer["readUpToSeq"] == 3 and answer["markedRead"] == 3
    watermark = await one(engine, "read")
    assert watermark.data == {"conversationId": group, "readUpToSeq": 3}
    assert watermark.audience == ["bob"] and watermark.conversation_id == group
    await carried(engine, watermark)
    statuses = [e for e in await status_events(engine, "READ") if e not in before]
    by_sender = {e.audience[0] if e.audience else "": e for e in statuses}
    assert set(by_sender) == {"alice", "carol"}
    assert copies_of(by_sender["alice"]) == {(m1, "bob"), (m2, "bob")}
    assert copies_of(by_sender["carol"]) == {(m3, "bob")}
    for event in statuses:
        assert event.data["conversationId"] == group and event.data["status"] == "READ"
        datetime.fromisoformat(event.data["at"])
        await carried(engine, event)
    assert await copy_xmin(engine, m1, "bob") == watermark.xid & XID_LOW_BITS
    # nothing moves again: no event
    written = len(await events(engine))
    await read(bob, m3)
    await read(bob, m1)
    assert len(await events(engine)) == written


async def test_a_reply_reads_what_it_answers(people: People, engine: AsyncEngine) -> None:
    alice, bob = people("alice"), people("bob")
    group = await conversation(alice, members=("bob",))
    question = (await post(alice, group, "ready?"))["id"]
    await post(bob, group, "yes")
    (status,) = await status_events(engine, "READ")
    assert status.audience == ["alice"] and copies_of(status) == {(question, "bob")}
    # the sender's own watermark moves with every post: `message.created` says it, not `read`
    assert await events(engine, "read") == []
    # a channel reader who is no member moves nothing: no event
    channel = await conversation(alice, "channel")
    said = (await post(alice, channel, "news"))["id"]
    written = len(await events(engine))
    await read(people("reader"), said)
    assert len(await events(engine)) == written


async def test_a_reply_to_several_senders_is_three_statements(
    people: People, engine: AsyncEngine
) -> None:
    """A post that reads copies of two senders: the lock, the post, and one statement for its
    three events (a READ status to each sender and `message.created`), each carried to its own
    audience alone, all in the post's transaction."""
    alice, bob, carol = people("alice"), people("bob"), people("carol")
    group = await conversation(alice, members=("bob", "carol", "dave"))
    m1 = (await post(alice, group, "one"))["id"]
    m2 = (await post(bob, group, "two"))["id"]
    m3 = (await post(alice, group, "three"))["id"]
    written = len(await events(engine))
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    sa_event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        reply = (await post(carol, group, "all read"))["id"]
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert statements == ["SELECT", "WITH", "WITH"]  # the lock; the post; its events
    *statuses, created = (await events(engine))[written:]
    assert [e.kind for e in statuses] == ["message.status", "message.status"]
    by_sender = {e.audience[0] if e.audience else "": e for e in statuses}
    assert copies_of(by_sender["alice"]) == {(m1, "carol"), (m3, "carol")}
    assert copies_of(by_sender["bob"]) == {(m2, "carol")}
    assert {e.xid for e in (*statuses, created)} == {created.xid}
    for event in statuses:
        assert event.audience is not None
        assert await carried(engine, event) == event.audience
    assert created.message_id == reply
    assert await carried(engine, created) == ["carol", "alice", "bob", "dave"]
    async with engine.connect() as conn:  # the deliveries: FANOUT recipients a row, in order
        rows = await conn.execute(
            text(
                "SELECT payload FROM outbox WHERE routing_key = 'chat.deliver' "
                "AND payload ->> 'messageId' = :m ORDER BY id"
            ),
            {"m": reply},
        )
        assert [row[0]["recipients"] for row in rows] == [["alice", "bob"], ["dave"]]


# --- DELIVERED: fetching, push receipts -----------------------------------------------------------


async def test_fetching_marks_delivered_and_tells_the_senders(
    people: People, engine: AsyncEngine
) -> None:
    alice, bob, carol = people("alice"), people("bob"), people("carol")
    group = await conversation(alice, members=("bob", "carol", "dave"))
    m1 = (await post(alice, group, "one"))["id"]
    m2 = (await post(alice, group, "two"))["id"]
    m3 = (await post(carol, group, "three"))["id"]  # carol's copies of m1, m2: READ
    fetched = await page(bob, conversationId=group, limit=2)  # m3 and m2
    assert [m["id"] for m in fetched["data"]] == [m3, m2]
    delivered = await status_events(engine, "DELIVERED")
    by_sender = {e.audience[0] if e.audience else "": e for e in delivered}
    assert copies_of(by_sender["alice"]) == {(m2, "bob")}  # m1 was not fetched
    assert copies_of(by_sender["carol"]) == {(m3, "bob")}
    for event in delivered:
        assert event.conversation_id == group and event.data["conversationId"] == group
        await carried(engine, event)
    assert await copy_xmin(engine, m2, "bob") == delivered[0].xid & XID_LOW_BITS
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT message_id::text, status FROM chat_recipients WHERE user_id = 'bob'")
        )
        statuses = {row[0]: row[1] for row in rows}
    assert statuses == {m1: "PENDING", m2: "DELIVERED", m3: "DELIVERED"}
    # fetched again, nothing moves: nothing is written; one message, search: the rest
    await page(bob, conversationId=group, limit=2)
    assert len(await status_events(engine, "DELIVERED")) == 2
    await call(bob, "GET", f"/chat/messages/{m1}", 200)
    (last,) = (await status_events(engine, "DELIVERED"))[2:]
    assert last.audience == ["alice"] and copies_of(last) == {(m1, "bob")}
    await call(people("dave"), "GET", "/chat/search", 200, params={"q": "one"})
    (searched,) = (await status_events(engine, "DELIVERED"))[3:]
    assert copies_of(searched) == {(m1, "dave")}
    # copies already DELIVERED or READ, and a sender's own messages: nothing moves
    written = len(await events(engine))
    await page(bob, conversationId=group)
    await page(carol, conversationId=group)
    assert len(await events(engine)) == written


async def test_a_fetch_that_moves_nothing_is_one_statement(
    people: People, engine: AsyncEngine
) -> None:
    """The common case (every copy fetched already DELIVERED or READ): one statement, no
    transaction; a fetch that moves copies: the page, then one transaction."""
    alice, bob = people("alice"), people("bob")
    group = await conversation(alice, members=("bob",))
    await post(alice, group)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    sa_event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        await page(bob, conversationId=group)
        moved = list(statements)
        statements.clear()
        await page(bob, conversationId=group)
        await call(bob, "GET", "/chat/search", 200, params={"q": "hello"})
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert statements == ["WITH", "WITH"]  # the page; the search
    assert moved == ["WITH", "WITH", "WITH"]  # the page; the move; its event (one statement)
    assert len(await status_events(engine, "DELIVERED")) == 1


def receipt(message_id: str, recipient: str, at: datetime) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "data": {"messageId": message_id, "recipient": recipient},
        "deliveredAt": at.isoformat().replace("+00:00", "Z"),
    }


async def post_receipts(client: httpx.AsyncClient, receipts: list[dict[str, Any]]) -> Any:
    body = json.dumps({"receipts": receipts}).encode()
    headers = {SIGNATURE_HEADER: sign(WEBHOOK_SECRET, body), "Content-Type": "application/json"}
    answer = await client.post("/webhooks/push", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_push_receipts_tell_the_senders(people: People, engine: AsyncEngine) -> None:
    alice, carol = people("alice"), people("carol")
    group = await conversation(alice, members=("bob", "carol"))
    m1 = (await post(alice, group, "one"))["id"]
    m2 = (await post(carol, group, "two"))["id"]
    other = await call(
        people("zoe", tenant="globex"),
        "POST",
        "/chat/conversations",
        201,
        json={"kind": "group", "title": "G", "members": ["yan"]},
    )
    m3 = (await post(people("zoe", tenant="globex"), other["id"], "three"))["id"]
    t0 = datetime.now(UTC) - timedelta(hours=1)  # before any time the posts recorded
    hook = people("anyone")
    ack = await post_receipts(
        hook,
        [
            receipt(m1, "bob", t0),
            receipt(m1, "carol", t0),
            receipt(m2, "bob", t0),
            receipt(m3, "yan", t0),
        ],
    )
    assert ack == {"received": 4, "applied": 4}
    delivered = await status_events(engine, "DELIVERED")
    assert {(e.tenant, e.audience[0] if e.audience else "") for e in delivered} == {
        (TENANT, "alice"),
        (TENANT, "carol"),
        ("globex", "zoe"),
    }
    for found in delivered:
        await carried(engine, found)
        if found.audience == ["alice"]:
            # carol's copy of m1 was READ already (her post read it): its time moved, not its
            # status, so it is no DELIVERED move
            assert copies_of(found) == {(m1, "bob")}
    assert await copy_xmin(engine, m3, "yan") == delivered[0].xid & XID_LOW_BITS
    # an earlier time changes the copy but moves no status: no event; a repeat: none either
    again = await post_receipts(
        hook, [receipt(m1, "bob", t0 - timedelta(seconds=5)), receipt(m2, "bob", t0)]
    )
    assert again == {"received": 2, "applied": 1}
    assert len(await status_events(engine, "DELIVERED")) == 3


# --- stream tickets -------------------------------------------------------------------------------


async def test_a_stream_ticket_names_the_caller_and_is_no_bearer_token(
    people: People, chat_settings: ApiSettings, engine: AsyncEngine
) -> None:
    alice = people("alice")
    answer = await alice.post("/chat/stream-tickets")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert set(body) == {"ticket", "expiresAt", "expiresInS"}
    assert body["expiresInS"] == int(chat_settings.chat.stream_ticket_ttl_s)
    expires = datetime.fromisoformat(body["expiresAt"])
    left = (expires - datetime.now(UTC)).total_seconds()
    assert 0 < left <= chat_settings.chat.stream_ticket_ttl_s
    ticket = verify_ticket(body["ticket"], chat_settings.auth)
    assert (ticket.caller.id, ticket.caller.tenant) == ("alice", TENANT)
    assert ticket.caller.scopes == frozenset(USER_SCOPES)
    assert abs((ticket.expires_at - expires).total_seconds()) < 1
    # each call a new ticket; none is written anywhere until the stream uses it
    second = (await call(alice, "POST", "/chat/stream-tickets", 201))["ticket"]
    assert verify_ticket(second, chat_settings.auth).jti != ticket.jti
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM chat_stream_tickets")) == 0
    # a ticket is not a bearer token, for this route or any other
    as_bearer = {"Authorization": f"Bearer {body['ticket']}"}
    for method, url in (("POST", "/chat/stream-tickets"), ("GET", "/chat/conversations")):
        refused = await alice.request(method, url, headers=as_bearer)
        assert refused.status_code == 401, refused.text


async def test_a_stream_ticket_needs_a_token_with_chat_read(people: People) -> None:
    request = people("alice").build_request("POST", "/chat/stream-tickets")
    del request.headers["Authorization"]
    assert (await people("alice").send(request)).status_code == 401
    writer = people("alice", scopes=("chat:write",))
    refused = await writer.post("/chat/stream-tickets")
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert (
        await people("alice", scopes=("chat:read",)).post("/chat/stream-tickets")
    ).status_code == 201


async def test_the_stream_ticket_route_is_documented(people: People) -> None:
    spec = await call(people("alice"), "GET", "/api/openapi.json", 200)
    operation = spec["paths"]["/chat/stream-tickets"]["post"]
    assert operation["summary"] and operation["description"]
    assert {"201", "401", "403"} <= set(operation["responses"])
    schema = operation["responses"]["201"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/StreamTicket")
    stored = spec["components"]["schemas"]["StreamTicket"]
    assert set(stored["required"]) == {"ticket", "expiresAt", "expiresInS"}


# --- the sweeper: events past the retention, the horizon, tickets, presence -----------------------


async def _age(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def test_the_sweeper_deletes_old_events_and_raises_the_horizon(
    people: People, engine: AsyncEngine
) -> None:
    alice = people("alice")
    group = await conversation(alice, members=("bob",))
    for i in range(5):
        await post(alice, group, f"m{i}")
    written = await events(engine)  # conversation.created, then each message.created
    old = [e for e in written if e.kind == "message.created"][:3]
    await _age(
        engine,
        "UPDATE chat_events SET created_at = now() - interval '8 days' WHERE id = ANY(:ids)",
        ids=[e.id for e in old],
    )
    await _age(
        engine,
        "INSERT INTO chat_stream_state (id, swept_xid) VALUES (1, 0) "
        "ON CONFLICT (id) DO UPDATE SET swept_xid = 0",
    )
    sweeper = Sweeper(engine, [], event_retention_s=7 * 24 * 3600, purge_batch_size=2)
    assert await sweeper.purge_events() == 2  # bounded batches
    assert await sweeper.purge_events() == 1
    assert await sweeper.purge_events() == 0
    kept = {e.id for e in await events(engine)}
    assert kept == {e.id for e in written} - {e.id for e in old}
    async with engine.connect() as conn:
        horizon = await conn.scalar(text("SELECT swept_xid FROM chat_stream_state WHERE id = 1"))
        readers = set(
            (await conn.scalars(text("SELECT DISTINCT event_id FROM chat_event_readers"))).all()
        )
    assert readers == kept  # an event's readers go with it
    assert horizon == max(e.xid for e in old)
    # never lowered: a later batch of older transactions leaves it where it is
    await _age(engine, "UPDATE chat_stream_state SET swept_xid = swept_xid + 1000")
    newest = written[-1]
    await _age(
        engine,
        "UPDATE chat_events SET created_at = now() - interval '8 days', xid = 1 WHERE id = :id",
        id=newest.id,
    )
    assert await sweeper.purge_events() == 1
    async with engine.connect() as conn:
        after = await conn.scalar(text("SELECT swept_xid FROM chat_stream_state WHERE id = 1"))
    assert after == horizon + 1000


async def test_the_sweeper_makes_the_horizon_row_if_missing(engine: AsyncEngine) -> None:
    await _age(
        engine,
        "INSERT INTO chat_events (tenant_id, kind, audience, payload, created_at) "
        "VALUES ('t', 'read', ARRAY['u'], '{}', now() - interval '9 days')",
    )
    sweeper = Sweeper(engine, [], event_retention_s=7 * 24 * 3600)
    assert await sweeper.purge_events() == 1
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM chat_stream_state")) == 1


async def test_the_sweeper_deletes_expired_tickets_and_stale_presence(engine: AsyncEngine) -> None:
    await _age(
        engine,
        "INSERT INTO chat_stream_tickets (jti, expires_at) VALUES "
        "('gone', now() - interval '1 second'), ('live', now() + interval '30 seconds')",
    )
    fresh, stale, recent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await _age(
        engine,
        "INSERT INTO chat_presence (connection_id, device_id, tenant_id, user_id, replica, seen_at)"
        " VALUES (:a, :d, 't', 'u', 'r1', now()),"
        " (:b, :d, 't', 'u', 'r2', now() - interval '451 seconds'),"
        " (:c, :d, 't', 'u', 'r3', now() - interval '300 seconds')",
        a=fresh,
        b=stale,
        c=recent,
        d=uuid.uuid4(),
    )
    sweeper = Sweeper(engine, [], presence_ttl_s=45)  # leftovers: unseen for 10 TTLs
    await sweeper.sweep()
    async with engine.connect() as conn:
        tickets = (await conn.scalars(text("SELECT jti FROM chat_stream_tickets"))).all()
        presence = set((await conn.scalars(text("SELECT connection_id FROM chat_presence"))).all())
    assert tickets == ["live"]
    assert presence == {fresh, recent}
