"""Reading messages: a conversation's history newest first, search, one message, and the
DELIVERED mark a fetch gives the caller's own copies. Every query filters with the history
rule (`relaybox.common.chat.visibility.visible_message`)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client
from relaybox.api.chat.access import seat
from relaybox.api.chat.schemas import MessagePage, MessageView
from relaybox.api.chat.views import message_views
from relaybox.api.errors import ApiError, NotFoundError
from relaybox.api.pagination import decode_cursor, encode_cursor
from relaybox.common.chat.delivery import RecipientStatus, may_become
from relaybox.common.chat.visibility import visible_message
from relaybox.common.db.models import ChatMessage, ChatRecipient

SEARCH_CONFIG = "simple"  # language-neutral: words as written, lower-cased


async def mark_fetched(session: AsyncSession, client: Client, ids: list[uuid.UUID]) -> None:
    """The caller's client has these messages: their copies are DELIVERED (forward only)."""
    if ids:
        await session.execute(
            update(ChatRecipient)
            .where(
                ChatRecipient.message_id.in_(ids),
                ChatRecipient.user_id == client.id,
                may_become(ChatRecipient.status, RecipientStatus.DELIVERED),
            )
            .values(
                status=RecipientStatus.DELIVERED.value,
                delivered_at=func.coalesce(ChatRecipient.delivered_at, func.now()),
            )
        )


async def page(
    session: AsyncSession,
    client: Client,
    *,
    conversation_id: uuid.UUID | None,
    q: str | None,
    before: int | None,
    after: int | None,
    cursor: str | None,
    limit: int,
) -> MessagePage:
    """Newest first. Within one conversation the keyset is the sequence (`before`/`after`);
    a search over every conversation the caller may see orders by time (keyset `cursor`)."""
    if conversation_id is None and q is None:
        raise ApiError("give a conversationId, or a q to search every conversation", field="q")
    if conversation_id is None and (before is not None or after is not None):
        raise ApiError("before and after page within one conversationId", field="before")
    if conversation_id is not None and cursor is not None:
        raise ApiError(
            "cursor pages a search of every conversation; in one, page with before",
            field="cursor",
        )
    async with session.begin():
        stmt = select(ChatMessage).where(visible_message(client.tenant, client.id))
        if conversation_id is not None:
            await seat(session, client, conversation_id)  # 404 unless they may see it
            stmt = stmt.where(ChatMessage.conversation_id == conversation_id)
            if before is not None:
                stmt = stmt.where(ChatMessage.seq < before)
            if after is not None:
                stmt = stmt.where(ChatMessage.seq > after)
            stmt = stmt.order_by(ChatMessage.seq.desc())
        else:
            if cursor is not None:
                key = tuple_(ChatMessage.created_at, ChatMessage.id)
                stmt = stmt.where(key < tuple_(*decode_cursor(cursor)))
            stmt = stmt.order_by(ChatMessage.created_at.desc(), ChatMessage.id.desc())
        if q is not None:
            stmt = stmt.where(
                ChatMessage.search.op("@@")(func.websearch_to_tsquery(SEARCH_CONFIG, q))
            )
        rows = list((await session.scalars(stmt.limit(limit + 1))).all())
        more = len(rows) > limit
        rows = rows[:limit]
        await mark_fetched(session, client, [row.id for row in rows])
        views = await message_views(session, rows)
    if not more:
        return MessagePage(data=views, next_before=None, next_cursor=None)
    last = rows[-1]
    if conversation_id is not None:
        return MessagePage(data=views, next_before=last.seq, next_cursor=None)
    return MessagePage(
        data=views, next_before=None, next_cursor=encode_cursor(last.created_at, last.id)
    )


async def visible(session: AsyncSession, client: Client, message_id: uuid.UUID) -> ChatMessage:
    """The message if the caller may see it, else 404."""
    message = await session.scalar(
        select(ChatMessage).where(
            ChatMessage.id == message_id, visible_message(client.tenant, client.id)
        )
    )
    if message is None:
        raise NotFoundError.of("message", message_id)
    return message


async def one(session: AsyncSession, client: Client, message_id: uuid.UUID) -> MessageView:
    async with session.begin():
        message = await visible(session, client, message_id)
        await mark_fetched(session, client, [message.id])
        (view,) = await message_views(session, [message])
    return view
