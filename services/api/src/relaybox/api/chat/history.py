"""Reading messages: a conversation's history newest first, search, one message, and the
DELIVERED mark a fetch gives the caller's own copies. Every query filters with the history
rule (`relaybox.common.chat.visibility.visible_message`)."""

from __future__ import annotations

import uuid

from sqlalchemy import Select, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client
from relaybox.api.chat.access import seat
from relaybox.api.chat.schemas import MessagePage, MessageView, SearchPage
from relaybox.api.chat.views import message_views
from relaybox.api.errors import NotFoundError
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


def _matching(stmt: Select[ChatMessage], q: str | None) -> Select[ChatMessage]:
    """`stmt` limited to messages matching the search `q` (web-search syntax), if given."""
    if q is None:
        return stmt
    return stmt.where(ChatMessage.search.op("@@")(func.websearch_to_tsquery(SEARCH_CONFIG, q)))


async def _fetched(
    session: AsyncSession, client: Client, stmt: Select[ChatMessage], limit: int
) -> tuple[list[ChatMessage], list[MessageView], bool]:
    """Up to `limit` rows of `stmt`, their views, and whether more follow; marks them fetched."""
    rows = list((await session.scalars(stmt.limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    await mark_fetched(session, client, [row.id for row in rows])
    return rows, await message_views(session, rows), more


async def page(
    session: AsyncSession,
    client: Client,
    conversation_id: uuid.UUID,
    *,
    q: str | None,
    before: int | None,
    after: int | None,
    limit: int,
) -> MessagePage:
    """A conversation's messages the caller may see, newest first (keyset on the sequence)."""
    async with session.begin():
        await seat(session, client, conversation_id)  # 404 unless they may see it
        stmt = select(ChatMessage).where(
            ChatMessage.conversation_id == conversation_id,
            visible_message(client.tenant, client.id),
        )
        if before is not None:
            stmt = stmt.where(ChatMessage.seq < before)
        if after is not None:
            stmt = stmt.where(ChatMessage.seq > after)
        stmt = _matching(stmt.order_by(ChatMessage.seq.desc()), q)
        rows, views, more = await _fetched(session, client, stmt, limit)
    return MessagePage(data=views, next_before=rows[-1].seq if more else None)


async def search(
    session: AsyncSession, client: Client, *, q: str, cursor: str | None, limit: int
) -> SearchPage:
    """Matches in every conversation the caller may see, newest first (keyset on time, id)."""
    stmt = select(ChatMessage).where(visible_message(client.tenant, client.id))
    if cursor is not None:
        key = tuple_(ChatMessage.created_at, ChatMessage.id)
        stmt = stmt.where(key < tuple_(*decode_cursor(cursor)))
    stmt = _matching(stmt.order_by(ChatMessage.created_at.desc(), ChatMessage.id.desc()), q)
    async with session.begin():
        rows, views, more = await _fetched(session, client, stmt, limit)
    if not more:
        return SearchPage(data=views, next_cursor=None)
    last = rows[-1]
    return SearchPage(data=views, next_cursor=encode_cursor(last.created_at, last.id))


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
