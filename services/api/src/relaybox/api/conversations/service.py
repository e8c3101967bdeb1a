"""Conversation service: the inbox SQL (listing, one thread, read/archive/close) and the upsert
every new message goes through."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, owned_by
from relaybox.api.conversations.schemas import (
    ConversationDetail,
    ConversationItem,
    ConversationPage,
    PageMeta,
    conversation_item,
    conversation_message,
)
from relaybox.api.errors import NotFoundError
from relaybox.common.db.models import Conversation, Message

PREVIEW_CHARS = 200


def preview(text: str) -> str:
    return text[:PREVIEW_CHARS]


def upsert_sql(*, row: str, inbound: bool, source: str = "") -> str:
    """The rule every new message applies to its (tenant, channel, participant) conversation, as
    one `INSERT … ON CONFLICT DO UPDATE … RETURNING c.id` (the row stays locked until the
    transaction ends). `row` is the SELECT list of the new conversation: id, tenant, channel,
    participant id, the message's time and its preview; `source` what it selects from, if
    anything (`FROM …`).

    `lastMessageAt` and the preview only move forward (an older message arriving late changes
    neither). An inbound message also counts as unread and reopens and unarchives the thread.
    Inbound messages use it inside the webhook's one statement, outbound ones through
    `upsert_conversation`.
    """
    inbound_changes = (
        """,
        unread_count = c.unread_count + 1,
        status = 'open',
        archived_at = NULL"""
        if inbound
        else ""
    )
    return f"""INSERT INTO conversations AS c
        (unread_count, id, tenant_id, channel, participant_id, last_message_at,
         last_message_preview)
    SELECT {1 if inbound else 0}, {row} {source}
    ON CONFLICT (tenant_id, channel, participant_id) DO UPDATE SET
        last_message_at = GREATEST(c.last_message_at, EXCLUDED.last_message_at),
        last_message_preview = CASE
            WHEN c.last_message_at IS NULL OR EXCLUDED.last_message_at >= c.last_message_at
            THEN EXCLUDED.last_message_preview ELSE c.last_message_preview END,
        updated_at = now(){inbound_changes}
    RETURNING c.id"""


_OUTBOUND_UPSERT_SQL = upsert_sql(
    row="$1::uuid, $2::text, $3::text, $4::text, now(), $5::text", inbound=False
)


async def upsert_conversation(
    session: AsyncSession, *, tenant: str, channel: str, participant_id: str, text: str
) -> uuid.UUID:
    """The id of the tenant's (channel, participant) conversation of an outbound message sent
    now, created if needed (`upsert_sql`), in the session's transaction."""
    conn = await session.connection()
    result = await conn.exec_driver_sql(
        _OUTBOUND_UPSERT_SQL, (uuid.uuid4(), tenant, channel, participant_id, preview(text))
    )
    conversation_id: uuid.UUID = result.scalar_one()
    return conversation_id


@dataclass(frozen=True)
class ConversationQuery:
    """Validated query of the inbox. `archived` picks archived (True) or active (False) threads;
    unset, archived ones are hidden unless `include_archived`."""

    page: int
    limit: int
    channel: str | None = None
    status: str | None = None
    archived: bool | None = None
    include_archived: bool = False


def _filtered(client: Client, query: ConversationQuery) -> Select[Any]:
    stmt = select(Conversation).where(owned_by(Conversation.tenant_id, client))
    if query.channel:
        stmt = stmt.where(Conversation.channel == query.channel)
    if query.status:
        stmt = stmt.where(Conversation.status == query.status)
    if query.archived is True:
        stmt = stmt.where(Conversation.archived_at.is_not(None))
    elif query.archived is False or not query.include_archived:
        stmt = stmt.where(Conversation.archived_at.is_(None))
    return stmt


async def list_conversations(
    session: AsyncSession, client: Client, query: ConversationQuery
) -> ConversationPage:
    """The tenant's conversations (all, for an admin): newest activity first (never-active ones
    last), ties broken by id."""
    stmt = (
        _filtered(client, query)
        .order_by(Conversation.last_message_at.desc().nulls_last(), Conversation.id.desc())
        .offset((query.page - 1) * query.limit)
        .limit(query.limit)
    )
    rows = (await session.scalars(stmt)).all()
    total = await session.scalar(
        select(func.count()).select_from(_filtered(client, query).subquery())
    )
    return ConversationPage(
        data=[conversation_item(r) for r in rows],
        meta=PageMeta(page=query.page, limit=query.limit, total=total or 0),
    )


async def get_conversation(
    session: AsyncSession, client: Client, conversation_id: uuid.UUID, *, page: int, limit: int
) -> ConversationDetail:
    """The conversation and one page of its messages, newest first (by provider time)."""
    row = await session.scalar(
        select(Conversation).where(
            Conversation.id == conversation_id, owned_by(Conversation.tenant_id, client)
        )
    )
    if row is None:
        raise NotFoundError.of("conversation", conversation_id)
    in_thread = Message.conversation_id == conversation_id
    messages = (
        await session.scalars(
            select(Message)
            .where(in_thread)
            .order_by(Message.sort_at.desc(), Message.id.desc())
            .offset((page - 1) * limit)
            .limit(limit)
        )
    ).all()
    total = await session.scalar(select(func.count()).select_from(Message).where(in_thread))
    item = conversation_item(row)
    return ConversationDetail(
        **{f: getattr(item, f) for f in item.__struct_fields__},
        messages=[conversation_message(m) for m in messages],
        meta=PageMeta(page=page, limit=limit, total=total or 0),
    )


async def _change(
    session: AsyncSession, client: Client, conversation_id: uuid.UUID, **values: Any
) -> ConversationItem:
    """One UPDATE of one of the tenant's conversations, committed; the conversation as it is
    now."""
    async with session.begin():
        row = await session.scalar(
            update(Conversation)
            .where(Conversation.id == conversation_id, owned_by(Conversation.tenant_id, client))
            .values(updated_at=func.now(), **values)
            .returning(Conversation)
            .execution_options(populate_existing=True)
        )
        if row is None:
            raise NotFoundError.of("conversation", conversation_id)
    return conversation_item(row)


async def mark_read(
    session: AsyncSession, client: Client, conversation_id: uuid.UUID
) -> ConversationItem:
    return await _change(session, client, conversation_id, unread_count=0, last_read_at=func.now())


async def set_archived(
    session: AsyncSession, client: Client, conversation_id: uuid.UUID, *, archived: bool
) -> ConversationItem:
    """Archive (keeping the first archive time if already archived) or unarchive."""
    archived_at = func.coalesce(Conversation.archived_at, func.now()) if archived else None
    return await _change(session, client, conversation_id, archived_at=archived_at)


async def set_status(
    session: AsyncSession, client: Client, conversation_id: uuid.UUID, status: str
) -> ConversationItem:
    return await _change(session, client, conversation_id, status=status)
