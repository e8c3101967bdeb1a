"""The messenger tests' requests: one call that checks its status, and the few requests every
test makes (a conversation, a post, membership changes, history, search, the inbox), plus the
database's own view of sequences and recipient copies."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def call(client: httpx.AsyncClient, method: str, url: str, status: int, **kwargs: Any) -> Any:
    """The JSON answer (None when empty) of a request that must answer `status`."""
    answer = await client.request(method, url, **kwargs)
    assert answer.status_code == status, f"{method} {url}: {answer.status_code} {answer.text}"
    return answer.json() if answer.content else None


def word() -> str:
    """A word no other message of the run holds (a search that finds it found the plant)."""
    return f"w{uuid.uuid4().hex[:12]}"


async def conversation(
    owner: httpx.AsyncClient, kind: str = "group", members: tuple[str, ...] = ()
) -> str:
    body: dict[str, Any] = {"kind": kind, "members": list(members)}
    if kind != "direct":
        body["title"] = f"{kind} {word()}"
    return str((await call(owner, "POST", "/chat/conversations", 201, json=body))["id"])


async def post(
    client: httpx.AsyncClient, conversation_id: str, body: str = "hello", status: int = 202
) -> dict[str, Any]:
    message: dict[str, Any] = await call(
        client,
        "POST",
        "/chat/messages",
        status,
        json={"conversationId": conversation_id, "text": body},
    )
    return message


async def join(client: httpx.AsyncClient, conversation_id: str, status: int = 201) -> None:
    await call(client, "POST", f"/chat/conversations/{conversation_id}/join", status)


async def leave(client: httpx.AsyncClient, conversation_id: str, status: int = 204) -> None:
    await call(client, "POST", f"/chat/conversations/{conversation_id}/leave", status)


async def add(
    client: httpx.AsyncClient,
    conversation_id: str,
    user: str,
    status: int = 201,
    role: str = "member",
) -> None:
    url = f"/chat/conversations/{conversation_id}/members"
    await call(client, "POST", url, status, json={"userId": user, "role": role})


async def kick(
    client: httpx.AsyncClient, conversation_id: str, user: str, status: int = 204
) -> None:
    await call(client, "DELETE", f"/chat/conversations/{conversation_id}/members/{user}", status)


async def page(client: httpx.AsyncClient, status: int = 200, **params: Any) -> Any:
    """GET /chat/messages with these query parameters (conversationId, q, before, ...)."""
    return await call(client, "GET", "/chat/messages", status, params=params)


async def seqs(client: httpx.AsyncClient, conversation_id: str) -> list[int]:
    """The sequences of the conversation `client` may see, oldest first (one page of 100)."""
    found = await page(client, conversationId=conversation_id, limit=100)
    assert found["nextBefore"] is None
    return sorted(m["seq"] for m in found["data"])


async def search(client: httpx.AsyncClient, q: str, conversation_id: str | None = None) -> set[str]:
    """The ids of the messages a search finds (in one conversation, or in all)."""
    if conversation_id is not None:
        found = await page(client, q=q, limit=100, conversationId=conversation_id)
    else:
        found = await call(client, "GET", "/chat/search", 200, params={"q": q, "limit": 100})
    return {m["id"] for m in found["data"]}


async def inbox(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """The caller's conversations by id (one page of 200)."""
    found = await call(client, "GET", "/chat/conversations", 200, params={"limit": 200})
    assert found["nextCursor"] is None
    return {c["id"]: c for c in found["data"]}


async def unread(client: httpx.AsyncClient, conversation_id: str) -> int:
    """The caller's unread count of a conversation they may see, as the inbox and the
    conversation itself say it (they must agree; 0 in the inbox when not listed)."""
    detail = await call(client, "GET", f"/chat/conversations/{conversation_id}", 200)
    listed = (await inbox(client)).get(conversation_id)
    assert (listed is not None) == (detail["role"] is not None)
    if listed is not None:
        assert listed["unreadCount"] == detail["unreadCount"]
    count: int = detail["unreadCount"]
    return count


async def read(client: httpx.AsyncClient, message_id: str, status: int = 200) -> Any:
    return await call(client, "POST", f"/chat/messages/{message_id}/read", status)


async def receipts(client: httpx.AsyncClient, message_id: str, status: int = 200) -> Any:
    return await call(client, "GET", f"/chat/messages/{message_id}/receipts", status)


async def sequence(engine: AsyncEngine, conversation_id: str) -> tuple[list[int], int]:
    """Every message's sequence (ascending) and the conversation's `last_seq`."""
    async with engine.connect() as conn:
        found = (
            await conn.scalars(
                text("SELECT seq FROM chat_messages WHERE conversation_id = :c ORDER BY seq"),
                {"c": conversation_id},
            )
        ).all()
        last = await conn.scalar(
            text("SELECT last_seq FROM chat_conversations WHERE id = :c"), {"c": conversation_id}
        )
    return list(found), int(last)


async def copies(engine: AsyncEngine, conversation_id: str, user: str) -> dict[int, str]:
    """The user's recipient copies in a conversation: sequence → status."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT seq, status FROM chat_recipients WHERE conversation_id = :c "
                "AND user_id = :u"
            ),
            {"c": conversation_id, "u": user},
        )
        return {int(seq): str(status) for seq, status in rows}


_OUTSIDE = """
SELECT r.seq, r.user_id FROM chat_recipients r
WHERE r.conversation_id = :c AND NOT EXISTS (
    SELECT 1 FROM chat_members mb
    WHERE mb.conversation_id = r.conversation_id AND mb.user_id = r.user_id
      AND mb.joined_seq < r.seq AND (mb.left_seq IS NULL OR r.seq <= mb.left_seq))
"""
_MISSING = """
SELECT m.seq, mb.user_id FROM chat_messages m
JOIN chat_members mb ON mb.conversation_id = m.conversation_id
  AND mb.joined_seq < m.seq AND (mb.left_seq IS NULL OR m.seq <= mb.left_seq)
WHERE m.conversation_id = :c AND mb.user_id <> m.sender_id AND NOT EXISTS (
    SELECT 1 FROM chat_recipients r WHERE r.message_id = m.id AND r.user_id = mb.user_id)
"""
_UNPUSHED = """
SELECT m.seq FROM chat_messages m
WHERE m.conversation_id = :c AND (
    SELECT coalesce(array_agg(u ORDER BY u), '{}') FROM outbox o,
      jsonb_array_elements_text(o.payload -> 'recipients') u
    WHERE o.routing_key = 'chat.deliver' AND o.payload ->> 'messageId' = m.id::text
) IS DISTINCT FROM (
    SELECT coalesce(array_agg(r.user_id::text ORDER BY r.user_id), '{}')
    FROM chat_recipients r WHERE r.message_id = m.id)
"""


async def copy_violations(engine: AsyncEngine, conversation_id: str) -> dict[str, list[Any]]:
    """What breaks "a message has a copy for exactly the other members whose interval holds
    it, and its outbox rows push exactly those copies": copies outside every interval of their
    user, (seq, user) without a copy, and messages whose outbox recipients differ (empty lists
    when nothing breaks it)."""
    found: dict[str, list[Any]] = {}
    async with engine.connect() as conn:
        for name, sql in (("outside", _OUTSIDE), ("missing", _MISSING), ("unpushed", _UNPUSHED)):
            found[name] = [
                tuple(row) for row in await conn.execute(text(sql), {"c": conversation_id})
            ]
    return found
