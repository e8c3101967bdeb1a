"""The Meta-like gateway API: idempotent sends, messages, retries, the conversation inbox and its
scopes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.auth import issue_token
from relaybox.api.settings import ApiSettings, RateLimitSettings
from tests.integration.gateway.test_webhooks import inbound, post_event
from tests.support.clients import api_client as api

PROBLEM = "application/problem+json"
SEND: dict[str, Any] = {"channel": "whatsapp", "to": "+15550001", "text": "Hello!"}
MESSAGE_FIELDS = {
    "id",
    "conversationId",
    "direction",
    "channel",
    "to",
    "text",
    "status",
    "providerMessageId",
    "retryCount",
    "lastError",
    "createdAt",
    "sentAt",
    "failedAt",
    "deliveredAt",
    "readAt",
    "clientMessageId",
}
CONVERSATION_FIELDS = {
    "id",
    "channel",
    "participantId",
    "lastMessagePreview",
    "lastMessageAt",
    "unreadCount",
    "status",
    "archivedAt",
    "lastReadAt",
}


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def rows(engine: AsyncEngine) -> tuple[int, int, int]:
    """(conversations, messages, outbox) row counts."""
    return (
        await count(engine, "conversations"),
        await count(engine, "messages"),
        await count(engine, "outbox"),
    )


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["status"] == status
    assert problem["detail"]
    if field is not None:
        assert problem.get("field") == field, problem
        assert field in problem["detail"]
    return problem


async def send(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/messages/send", json={**SEND, **body})


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def conversations(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/conversations", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def participants(page: dict[str, Any]) -> list[str]:
    return [c["participantId"] for c in page["data"]]


# --- POST /messages/send ----------------------------------------------------------------------


async def test_send_writes_message_conversation_and_outbox_row_and_answers_202(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await send(client, clientMessageId="c-1")
    assert response.status_code == 202, response.text
    record = response.json()
    assert set(record) == MESSAGE_FIELDS
    assert record["status"] == "PENDING"
    assert record["direction"] == "outbound"
    assert (record["channel"], record["to"], record["text"]) == ("whatsapp", "+15550001", "Hello!")
    assert record["clientMessageId"] == "c-1"
    assert record["retryCount"] == 0
    assert record["providerMessageId"] is None and record["sentAt"] is None
    created = datetime.fromisoformat(record["createdAt"])
    assert created.tzinfo is not None

    async with engine.connect() as conn:
        outbox = (
            await conn.execute(text("SELECT routing_key, payload, destination FROM outbox"))
        ).all()
        conversation = (
            await conn.execute(
                text(
                    "SELECT id, channel, participant_id, unread_count, last_message_at, "
                    "last_message_preview, status FROM conversations"
                )
            )
        ).one()
        sort_at = await conn.scalar(text("SELECT sort_at FROM messages"))
    assert [tuple(r) for r in outbox] == [("meta.send", {"id": record["id"]}, "work")]
    assert str(conversation.id) == record["conversationId"]
    assert (conversation.channel, conversation.participant_id) == ("whatsapp", "+15550001")
    assert conversation.unread_count == 0
    assert conversation.last_message_preview == "Hello!"
    assert conversation.last_message_at == sort_at == created
    assert conversation.status == "open"


async def test_send_without_client_message_id_sends_each_time(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first, second = await send(client), await send(client)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]
    assert first.json()["conversationId"] == second.json()["conversationId"]
    assert await rows(engine) == (1, 2, 2)


async def test_same_client_message_id_twice_is_one_message_202_then_200(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first = await send(client, clientMessageId="dup-1")
    async with engine.connect() as conn:
        before = (await conn.execute(text("SELECT * FROM conversations"))).one()
    again = await send(client, clientMessageId="dup-1")
    assert first.status_code == 202, first.text
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert await rows(engine) == (1, 1, 1)
    async with engine.connect() as conn:
        after = (await conn.execute(text("SELECT * FROM conversations"))).one()
    assert tuple(after) == tuple(before)  # not even updated_at moved


async def test_repeat_answers_the_current_status(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first = (await send(client, clientMessageId="dup-2")).json()
    await execute(
        engine,
        "UPDATE messages SET status = 'SENT', provider_message_id = 'pm-9', sent_at = now(), "
        "attempts = 1 WHERE id = :id",
        id=uuid.UUID(first["id"]),
    )
    again = await send(client, clientMessageId="dup-2")
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "SENT"
    assert again.json()["providerMessageId"] == "pm-9"
    assert await rows(engine) == (1, 1, 1)


async def test_repeat_to_another_participant_creates_no_conversation(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first = (await send(client, clientMessageId="dup-3")).json()
    again = await send(client, clientMessageId="dup-3", to="+15559999", text="other")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"]
    assert again.json()["to"] == "+15550001"
    assert await rows(engine) == (1, 1, 1)


async def test_client_message_id_is_per_channel(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    whatsapp = await send(client, clientMessageId="same")
    instagram = await send(client, clientMessageId="same", channel="instagram")
    assert whatsapp.status_code == instagram.status_code == 202
    assert await rows(engine) == (2, 2, 2)


async def test_twenty_concurrent_sends_of_one_client_message_id_make_one_message(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    answers = await asyncio.gather(*(send(client, clientMessageId="burst") for _ in range(20)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 19 + [202], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert await rows(engine) == (1, 1, 1)


async def test_send_moves_the_conversation_forward_only(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """An inbound message stamped in the future by the provider stays the last message."""
    await post_event(client, inbound(sender="+15550001", text="from the future", seconds=10**9))
    sent = await send(client)
    assert sent.status_code == 202, sent.text
    page = await conversations(client)
    assert page["data"][0]["lastMessagePreview"] == "from the future"
    await execute(engine, "UPDATE conversations SET last_message_at = now() - interval '1 day'")
    await send(client, text="now the newest")
    assert (await conversations(client))["data"][0]["lastMessagePreview"] == "now the newest"


async def test_send_limits_are_inclusive(client: httpx.AsyncClient) -> None:
    response = await send(client, to="t" * 255, text="x" * 4096, clientMessageId="c" * 255)
    assert response.status_code == 202, response.text
    preview = (await conversations(client))["data"][0]["lastMessagePreview"]
    assert preview == "x" * 200


BAD_SENDS: list[tuple[str, Any, str]] = [
    ("channel missing", {"to": "a", "text": "b"}, "channel"),
    ("channel unknown", {**SEND, "channel": "sms"}, "channel"),
    ("channel upper case", {**SEND, "channel": "WHATSAPP"}, "channel"),
    ("to missing", {"channel": "whatsapp", "text": "b"}, "to"),
    ("to empty", {**SEND, "to": ""}, "to"),
    ("to blank", {**SEND, "to": "   "}, "to"),
    ("to 256 chars", {**SEND, "to": "t" * 256}, "to"),
    ("to newline", {**SEND, "to": "a\nb"}, "to"),
    ("to number", {**SEND, "to": 15550001}, "to"),
    ("text missing", {"channel": "whatsapp", "to": "a"}, "text"),
    ("text empty", {**SEND, "text": ""}, "text"),
    ("text blank", {**SEND, "text": " \n "}, "text"),
    ("text 4097 chars", {**SEND, "text": "x" * 4097}, "text"),
    ("text NUL", {**SEND, "text": "a\x00b"}, "text"),
    ("clientMessageId empty", {**SEND, "clientMessageId": ""}, "clientMessageId"),
    ("clientMessageId 256", {**SEND, "clientMessageId": "c" * 256}, "clientMessageId"),
    ("clientMessageId number", {**SEND, "clientMessageId": 7}, "clientMessageId"),
    ("unknown field", {**SEND, "priority": "high"}, "priority"),
    ("array", [SEND], "body"),
]


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in BAD_SENDS], ids=[c[0] for c in BAD_SENDS]
)
async def test_bad_send_is_a_400_naming_the_field(
    client: httpx.AsyncClient, engine: AsyncEngine, body: Any, field: str
) -> None:
    response = await client.post("/messages/send", json=body)
    problem = assert_problem(response, 400, field)
    assert problem["errors"][0]["field"] == field
    assert await rows(engine) == (0, 0, 0)


async def test_send_not_json_is_a_400_naming_the_body(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await client.post(
        "/messages/send", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, "body")
    assert await rows(engine) == (0, 0, 0)


async def test_idempotency_key_replays_and_refuses_another_body(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = await client.post("/messages/send", json=SEND, headers=headers)
    replay = await client.post("/messages/send", json=SEND, headers=headers)
    assert first.status_code == replay.status_code == 202
    assert replay.json() == first.json()
    other = await client.post("/messages/send", json={**SEND, "text": "x"}, headers=headers)
    assert_problem(other, 422)
    assert await rows(engine) == (1, 1, 1)


async def test_send_is_rate_limited_per_client(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    settings = api_settings.model_copy(update={"rate_limit": RateLimitSettings(send_per_minute=2)})
    async with api(settings, engine, token) as limited:
        assert (await send(limited)).status_code == 202
        assert (await send(limited)).status_code == 202
        refused = await send(limited)
        assert_problem(refused, 429)
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await limited.get("/conversations")).status_code == 200
    assert await count(engine, "messages") == 2


# --- GET /messages/{id} -----------------------------------------------------------------------


async def test_get_message(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    sent = (await send(client, clientMessageId="g-1")).json()
    await execute(
        engine,
        "UPDATE messages SET status = 'FAILED', attempts = 3, last_error = 'provider said 500', "
        "failed_at = now() WHERE id = :id",
        id=uuid.UUID(sent["id"]),
    )
    response = await client.get(f"/messages/{sent['id']}")
    assert response.status_code == 200, response.text
    detail = response.json()
    assert set(detail) == MESSAGE_FIELDS
    assert detail["status"] == "FAILED"
    assert detail["retryCount"] == 2
    assert detail["lastError"] == "provider said 500"
    assert detail["failedAt"] is not None
    assert {k: detail[k] for k in ("id", "conversationId", "to", "text", "clientMessageId")} == {
        k: sent[k] for k in ("id", "conversationId", "to", "text", "clientMessageId")
    }


async def test_unknown_message_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"/messages/{uuid.uuid4()}"), 404)
    assert (await client.get("/messages/not-a-uuid")).status_code == 404


# --- POST /messages/{id}/retry ----------------------------------------------------------------


async def failed_message(client: httpx.AsyncClient, engine: AsyncEngine) -> dict[str, Any]:
    sent: dict[str, Any] = (await send(client)).json()
    await execute(
        engine,
        "UPDATE messages SET status = 'FAILED', attempts = 5, last_error = 'gave up', "
        "failed_at = now() WHERE id = :id",
        id=uuid.UUID(sent["id"]),
    )
    return sent


async def test_retry_sets_a_failed_message_pending_and_enqueues_it(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    failed = await failed_message(client, engine)
    response = await client.post(f"/messages/{failed['id']}/retry")
    assert response.status_code == 202, response.text
    record = response.json()
    assert set(record) == MESSAGE_FIELDS
    assert record["status"] == "PENDING"
    assert record["retryCount"] == 0
    assert record["lastError"] is None and record["failedAt"] is None
    async with engine.connect() as conn:
        attempts = await conn.scalar(text("SELECT attempts FROM messages"))
        outbox = (
            await conn.execute(text("SELECT routing_key, payload FROM outbox ORDER BY id"))
        ).all()
    assert attempts == 0
    assert [tuple(r) for r in outbox] == [("meta.send", {"id": failed["id"]})] * 2

    again = await client.post(f"/messages/{failed['id']}/retry")
    problem = assert_problem(again, 409)
    assert "PENDING" in problem["detail"]
    assert await count(engine, "outbox") == 2


@pytest.mark.parametrize("status", ["PENDING", "SENDING", "SENT", "DELIVERED", "READ"])
async def test_retry_of_a_message_that_is_not_failed_is_409(
    client: httpx.AsyncClient, engine: AsyncEngine, status: str
) -> None:
    sent = (await send(client)).json()
    await execute(engine, "UPDATE messages SET status = :s", s=status)
    problem = assert_problem(await client.post(f"/messages/{sent['id']}/retry"), 409)
    assert status in problem["detail"]
    assert await count(engine, "outbox") == 1
    assert (await client.get(f"/messages/{sent['id']}")).json()["status"] == status


async def test_retry_of_an_inbound_message_is_409(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await post_event(client, inbound())
    conversation = (await conversations(client))["data"][0]
    detail = (await client.get(f"/conversations/{conversation['id']}")).json()
    assert_problem(await client.post(f"/messages/{detail['messages'][0]['id']}/retry"), 409)
    assert await count(engine, "outbox") == 0


async def test_retry_of_an_unknown_message_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post(f"/messages/{uuid.uuid4()}/retry"), 404)


async def test_concurrent_retries_claim_once(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    failed = await failed_message(client, engine)
    answers = await asyncio.gather(
        *(client.post(f"/messages/{failed['id']}/retry") for _ in range(10))
    )
    assert sorted(a.status_code for a in answers) == [202] + [409] * 9
    assert await count(engine, "outbox") == 2


# --- GET /conversations -----------------------------------------------------------------------


async def seed(client: httpx.AsyncClient, *specs: tuple[str, str, int]) -> None:
    """(channel, participant, seconds after T0) inbound messages."""
    for channel, sender, seconds in specs:
        response = await post_event(
            client, inbound(channel=channel, sender=sender, seconds=seconds)
        )
        assert response.status_code == 200, response.text


async def test_list_shape_and_newest_activity_first(client: httpx.AsyncClient) -> None:
    await seed(client, ("whatsapp", "a", 10), ("instagram", "b", 30), ("whatsapp", "c", 20))
    page = await conversations(client)
    assert participants(page) == ["b", "c", "a"]
    assert page["meta"] == {"page": 1, "limit": 20, "total": 3}
    assert all(set(item) == CONVERSATION_FIELDS for item in page["data"])


async def test_never_active_conversations_come_last_and_ties_break_by_id(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await seed(client, ("whatsapp", "active", 10))
    ids = sorted(uuid.uuid4() for _ in range(3))
    for i, conversation_id in enumerate(ids):
        await execute(
            engine,
            "INSERT INTO conversations (id, tenant_id, channel, participant_id) "
            "VALUES (:id, 'test-client', 'whatsapp', :p)",
            id=conversation_id,
            p=f"idle-{i}",
        )
    assert participants(await conversations(client)) == ["active", "idle-2", "idle-1", "idle-0"]
    await execute(  # one time for all three, later than the active one's: ties broken by id
        engine,
        "UPDATE conversations SET last_message_at = '2026-01-01T00:00:00Z' "
        "WHERE participant_id LIKE 'idle-%'",
    )
    assert participants(await conversations(client)) == ["idle-2", "idle-1", "idle-0", "active"]


async def test_paging(client: httpx.AsyncClient) -> None:
    await seed(client, *(("whatsapp", f"p{i}", i) for i in range(7)))
    pages = [await conversations(client, page=n, limit=3) for n in (1, 2, 3, 4)]
    assert [participants(p) for p in pages] == [
        ["p6", "p5", "p4"],
        ["p3", "p2", "p1"],
        ["p0"],
        [],
    ]
    assert all(p["meta"]["total"] == 7 and p["meta"]["limit"] == 3 for p in pages)
    assert [p["meta"]["page"] for p in pages] == [1, 2, 3, 4]
    assert len((await conversations(client, limit=100))["data"]) == 7


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 101}, "limit"),
        ({"limit": 0}, "limit"),
        ({"page": 0}, "page"),
        ({"page": "x"}, "page"),
        ({"channel": "sms"}, "channel"),
        ({"status": "archived"}, "status"),
        ({"archived": "maybe"}, "archived"),
    ],
    ids=repr,
)
async def test_bad_list_query_is_a_400_naming_the_parameter(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    assert_problem(await client.get("/conversations", params=params), 400, field)


async def test_channel_and_status_filters(client: httpx.AsyncClient) -> None:
    await seed(client, ("whatsapp", "a", 1), ("instagram", "b", 2), ("whatsapp", "c", 3))
    assert participants(await conversations(client, channel="whatsapp")) == ["c", "a"]
    assert participants(await conversations(client, channel="instagram")) == ["b"]
    c = (await conversations(client, channel="whatsapp"))["data"][0]
    closed = await client.post(f"/conversations/{c['id']}/close")
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "closed"
    assert participants(await conversations(client, status="closed")) == ["c"]
    assert participants(await conversations(client, status="open")) == ["b", "a"]
    assert participants(await conversations(client, status="open", channel="whatsapp")) == ["a"]
    reopened = await client.post(f"/conversations/{c['id']}/reopen")
    assert reopened.json()["status"] == "open"
    assert participants(await conversations(client, status="closed")) == []


async def test_archive_hides_and_unarchive_shows(client: httpx.AsyncClient) -> None:
    await seed(client, ("whatsapp", "a", 1), ("whatsapp", "b", 2))
    b = (await conversations(client))["data"][0]
    archived = await client.post(f"/conversations/{b['id']}/archive")
    assert archived.status_code == 200, archived.text
    assert set(archived.json()) == CONVERSATION_FIELDS
    archived_at = archived.json()["archivedAt"]
    assert archived_at is not None
    assert participants(await conversations(client)) == ["a"]
    assert (await conversations(client))["meta"]["total"] == 1
    assert participants(await conversations(client, archived="true")) == ["b"]
    assert participants(await conversations(client, archived="false")) == ["a"]
    assert participants(await conversations(client, include_archived="true")) == ["b", "a"]

    again = await client.post(f"/conversations/{b['id']}/archive")
    assert again.json()["archivedAt"] == archived_at  # archiving twice keeps the first time

    unarchived = await client.post(f"/conversations/{b['id']}/unarchive")
    assert unarchived.status_code == 200, unarchived.text
    assert unarchived.json()["archivedAt"] is None
    assert participants(await conversations(client)) == ["b", "a"]
    assert participants(await conversations(client, archived="true")) == []


async def test_read_resets_unread(client: httpx.AsyncClient) -> None:
    await seed(client, ("whatsapp", "a", 1), ("whatsapp", "a", 2))
    item = (await conversations(client))["data"][0]
    assert item["unreadCount"] == 2 and item["lastReadAt"] is None
    read = await client.post(f"/conversations/{item['id']}/read")
    assert read.status_code == 200, read.text
    assert read.json()["unreadCount"] == 0
    assert datetime.fromisoformat(read.json()["lastReadAt"]).tzinfo is not None
    assert (await conversations(client))["data"][0]["unreadCount"] == 0
    await seed(client, ("whatsapp", "a", 3))
    assert (await conversations(client))["data"][0]["unreadCount"] == 1


@pytest.mark.parametrize("action", ["read", "archive", "unarchive", "close", "reopen"])
async def test_action_on_an_unknown_conversation_is_404(
    client: httpx.AsyncClient, action: str
) -> None:
    assert_problem(await client.post(f"/conversations/{uuid.uuid4()}/{action}"), 404)


# --- GET /conversations/{id} ------------------------------------------------------------------


async def test_conversation_detail_pages_messages_newest_first(
    client: httpx.AsyncClient,
) -> None:
    for seconds in (30, 10, 50, 20, 40):  # out of order
        await post_event(client, inbound(text=f"in {seconds}", seconds=seconds))
    conversation_id = (await conversations(client))["data"][0]["id"]
    sent = (await send(client, text="reply")).json()  # now: after every T0 + n event
    assert sent["conversationId"] == conversation_id

    detail = (await client.get(f"/conversations/{conversation_id}")).json()
    assert set(detail) == CONVERSATION_FIELDS | {"messages", "meta"}
    texts = [m["text"] for m in detail["messages"]]
    assert texts == ["reply", "in 50", "in 40", "in 30", "in 20", "in 10"]
    assert detail["meta"] == {"page": 1, "limit": 50, "total": 6}
    assert set(detail["messages"][0]) == MESSAGE_FIELDS | {"sortAt"}
    assert detail["messages"][0]["direction"] == "outbound"
    assert detail["lastMessagePreview"] == "reply"

    second = (
        await client.get(f"/conversations/{conversation_id}", params={"page": 2, "limit": 4})
    ).json()
    assert [m["text"] for m in second["messages"]] == ["in 20", "in 10"]
    assert second["meta"] == {"page": 2, "limit": 4, "total": 6}


async def test_same_sort_time_breaks_ties_by_id(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    for i in range(4):
        await post_event(client, inbound(text=f"m{i}", seconds=7))
    conversation_id = (await conversations(client))["data"][0]["id"]
    detail = (await client.get(f"/conversations/{conversation_id}")).json()
    ids = [m["id"] for m in detail["messages"]]
    assert ids == sorted(ids, key=uuid.UUID, reverse=True)


async def test_unknown_conversation_is_404_and_bad_paging_is_400(
    client: httpx.AsyncClient,
) -> None:
    assert_problem(await client.get(f"/conversations/{uuid.uuid4()}"), 404)
    await seed(client, ("whatsapp", "a", 1))
    conversation_id = (await conversations(client))["data"][0]["id"]
    response = await client.get(f"/conversations/{conversation_id}", params={"limit": 101})
    assert_problem(response, 400, "limit")


# --- auth and scopes --------------------------------------------------------------------------

SOME_ID = "6f1c1c1e-58b4-4a43-9b44-3d0e6f3c6a01"
READS = [
    ("GET", "/conversations"),
    ("GET", f"/conversations/{SOME_ID}"),
    ("GET", f"/messages/{SOME_ID}"),
]
WRITES = [
    ("POST", "/messages/send"),
    ("POST", f"/messages/{SOME_ID}/retry"),
    *(("POST", f"/conversations/{SOME_ID}/{a}") for a in ("read", "archive", "unarchive")),
    *(("POST", f"/conversations/{SOME_ID}/{a}") for a in ("close", "reopen")),
]


@pytest.mark.parametrize(("method", "path"), READS + WRITES)
async def test_no_token_is_401(client: httpx.AsyncClient, method: str, path: str) -> None:
    client.headers.pop("Authorization", None)
    response = await client.request(method, path, json=SEND if path.endswith("send") else None)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("scopes", "method", "path", "missing"),
    [
        *((("meta:send", "email:read"), m, p, "meta:read") for m, p in READS),
        *((("meta:read", "email:send"), m, p, "meta:send") for m, p in WRITES),
    ],
)
async def test_missing_scope_is_403_naming_it(
    client: httpx.AsyncClient,
    api_settings: ApiSettings,
    engine: AsyncEngine,
    scopes: tuple[str, ...],
    method: str,
    path: str,
    missing: str,
) -> None:
    token = issue_token(api_settings, "limited", scopes=scopes)
    response = await client.request(
        method,
        path,
        json=SEND if path.endswith("send") else None,
        headers={"Authorization": f"Bearer {token}"},
    )
    problem = assert_problem(response, 403)
    assert missing in problem["detail"]
    assert await rows(engine) == (0, 0, 0)


async def test_scope_limited_tokens_work_where_allowed(
    client: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    # one tenant (the subject), two tokens of narrower scopes
    sender = issue_token(api_settings, "test-client", scopes=("meta:send",))
    reader = issue_token(api_settings, "test-client", scopes=("meta:read",))
    sent = await client.post(
        "/messages/send", json=SEND, headers={"Authorization": f"Bearer {sender}"}
    )
    assert sent.status_code == 202, sent.text
    read = await client.get(
        f"/messages/{sent.json()['id']}", headers={"Authorization": f"Bearer {reader}"}
    )
    assert read.status_code == 200, read.text


async def test_openapi_documents_the_gateway(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/api/openapi.json")).json()["paths"]
    for path in (
        "/conversations",
        "/conversations/{conversation_id}",
        "/conversations/{conversation_id}/read",
        "/messages/send",
        "/messages/{message_id}",
        "/messages/{message_id}/retry",
        "/webhooks/mock-meta",
    ):
        assert path in paths, sorted(paths)
