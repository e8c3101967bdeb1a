"""Conversation service: the inbox SQL (listing, one thread, read/archive/close) and the upsert
every new message goes through."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

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


async def upsert_conversation(
    session: AsyncSession,
    *,
    channel: str,
    participant_id: str,
    at: datetime | ColumnElement[Any],
    text: str,
    inbound: bool,
) -> uuid.UUID:
    """The id of the (channel, participant) conversation, created if needed, in one statement.

    `lastMessageAt` and the preview only move forward (an older message arriving late changes
    neither). An inbound message also counts as unread and reopens and unarchives the thread.
    The row stays locked until the caller's transaction ends.
    """
    stmt = pg_insert(Conversation).values(
        id=uuid.uuid4(),
        channel=channel,
        participant_id=participant_id,
        unread_count=1 if inbound else 0,
        last_message_at=at,
        last_message_preview=preview(text),
    )
    new = stmt.excluded
    newest = or_(
        Conversation.last_message_at.is_(None), new.last_message_at >= Conversation.last_message_at
    )
    changes: dict[str, Any] = {
        "last_message_at": func.greatest(Conversation.last_message_at, new.last_message_at),
        "last_message_preview": case(
            (newest, new.last_message_preview), else_=Conversation.last_message_preview
        ),
        "updated_at": func.now(),
    }
    if inbound:
        changes |= {
            "unread_count": Conversation.unread_count + 1,
            "status": "open",
            "archived_at": None,
        }
    conversation_id: uuid.UUID | None = await session.scalar(
        stmt.on_conflict_do_update(
            index_elements=[Conversation.channel, Conversation.participant_id], set_=changes
        ).returning(Conversation.id)
    )
    assert conversation_id is not None  # DO UPDATE always returns the row
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


def _filtered(query: ConversationQuery) -> Select[Any]:
    stmt = select(Conversation)
    if query.channel:
        stmt = stmt.where(Conversation.channel == query.channel)
    if query.status:
        stmt = stmt.where(Conversation.status == query.status)
    if query.archived is True:
        stmt = stmt.where(Conversation.archived_at.is_not(None))
    elif query.archived is False or not query.include_archived:
        stmt = stmt.where(Conversation.archived_at.is_(None))
    return stmt


async def list_conversations(session: AsyncSession, query: ConversationQuery) -> ConversationPage:
    """Newest activity first (never-active ones last), ties broken by id."""
    stmt = (
        _filtered(query)
        .order_by(Conversation.last_message_at.desc().nulls_last(), Conversation.id.desc())
        .offset((query.page - 1) * query.limit)
        .limit(query.limit)
    )
    rows = (await session.scalars(stmt)).all()
    total = await session.scalar(select(func.count()).select_from(_filtered(query).subquery()))
    return ConversationPage(
        data=[conversation_item(r) for r in rows],
        meta=PageMeta(page=query.page, limit=query.limit, total=total or 0),
    )


def _not_found(conversation_id: uuid.UUID) -> NotFoundError:
    return NotFoundError(f"no conversation with id {conversation_id}")


async def get_conversation(
    session: AsyncSession, conversation_id: uuid.UUID, *, page: int, limit: int
) -> ConversationDetail:
    """The conversation and one page of its messages, newest first (by provider time)."""
    row = await session.get(Conversation, conversation_id)
    if row is None:
        raise _not_found(conversation_id)
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
    session: AsyncSession, conversation_id: uuid.UUID, **values: Any
) -> ConversationItem:
    """One UPDATE of one conversation, committed; the conversation as it is now."""
    async with session.begin():
        row = await session.scalar(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(updated_at=func.now(), **values)
            .returning(Conversation)
            .execution_options(populate_existing=True)
        )
        if row is None:
            raise _not_found(conversation_id)
    return conversation_item(row)


async def mark_read(session: AsyncSession, conversation_id: uuid.UUID) -> ConversationItem:
    return await _change(session, conversation_id, unread_count=0, last_read_at=func.now())


async def set_archived(
    session: AsyncSession, conversation_id: uuid.UUID, *, archived: bool
) -> ConversationItem:
    """Archive (keeping the first archive time if already archived) or unarchive."""
    archived_at = func.coalesce(Conversation.archived_at, func.now()) if archived else None
    return await _change(session, conversation_id, archived_at=archived_at)


async def set_status(
    session: AsyncSession, conversation_id: uuid.UUID, status: str
) -> ConversationItem:
    return await _change(session, conversation_id, status=status)
