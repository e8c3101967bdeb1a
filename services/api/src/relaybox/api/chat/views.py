"""Rows to responses: messages with their attachments, conversations with the caller's unread
count and the last message they may see."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from relaybox.api.auth import Client
from relaybox.api.chat.schemas import (
    AttachmentRef,
    ConversationView,
    MessageView,
)
from relaybox.common.chat.visibility import visible_message
from relaybox.common.db.models import (
    ChatAttachment,
    ChatConversation,
    ChatMember,
    ChatMessage,
    ChatMessageAttachment,
)


class MessageRow(Protocol):
    """What a message view is made of: a `ChatMessage`, or a row of `MESSAGE_COLUMNS`."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def conversation_id(self) -> uuid.UUID: ...
    @property
    def seq(self) -> int: ...
    @property
    def sender_id(self) -> str: ...
    @property
    def text(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def client_message_id(self) -> str | None: ...


def message_columns(message: Any = ChatMessage) -> tuple[ColumnElement[Any], ...]:
    """The columns a message view needs (of `ChatMessage` or an alias), and whether it has
    attachments (`has_attachments`): a read path selects these, not whole ORM objects."""
    return (
        message.id.label("id"),
        message.conversation_id.label("conversation_id"),
        message.seq.label("seq"),
        message.sender_id.label("sender_id"),
        message.text.label("text"),
        message.created_at.label("created_at"),
        message.client_message_id.label("client_message_id"),
        exists()
        .where(ChatMessageAttachment.message_id == message.id)
        .correlate(message)
        .label("has_attachments"),
    )


async def reader(session: AsyncSession) -> AsyncConnection:
    """The session's connection in autocommit: a read path's statements each commit alone, with
    no BEGIN and COMMIT round trips around them (use before anything else on the session)."""
    return await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


async def message_views(
    db: AsyncSession | AsyncConnection, messages: Sequence[MessageRow]
) -> list[MessageView]:
    """The messages with their attachments (one query for all that have any; a row that says
    `has_attachments` false needs none)."""
    attached: dict[uuid.UUID, list[AttachmentRef]] = {m.id: [] for m in messages}
    wanted = [m.id for m in messages if getattr(m, "has_attachments", True)]
    if wanted:
        rows = await db.execute(
            select(
                ChatMessageAttachment.message_id,
                ChatAttachment.id,
                ChatAttachment.filename,
                ChatAttachment.content_type,
                ChatAttachment.size_bytes,
            )
            .join(ChatAttachment, ChatAttachment.id == ChatMessageAttachment.attachment_id)
            .where(ChatMessageAttachment.message_id.in_(wanted))
            .order_by(ChatMessageAttachment.message_id, ChatMessageAttachment.position)
        )
        for message_id, attachment_id, filename, content_type, size_bytes in rows:
            attached[message_id].append(
                AttachmentRef(
                    id=attachment_id,
                    filename=filename,
                    content_type=content_type,
                    size_bytes=size_bytes,
                )
            )
    return [
        MessageView(
            id=m.id,
            conversation_id=m.conversation_id,
            seq=m.seq,
            sender_id=m.sender_id,
            text=m.text,
            attachments=attached[m.id],
            created_at=m.created_at,
            client_message_id=m.client_message_id,
        )
        for m in messages
    ]


def _newest_visible_seq(client: Client) -> ColumnElement[Any]:
    """The sequence of the newest message of the conversation the caller may see (NULL when
    none): a channel's last, else the end of their latest interval that holds a message. A
    former member's last message is the end of their interval, not the conversation's."""
    end = func.least(
        func.coalesce(ChatMember.left_seq, ChatConversation.last_seq), ChatConversation.last_seq
    )
    in_intervals = (
        select(func.max(end))
        .where(
            ChatMember.conversation_id == ChatConversation.id,
            ChatMember.tenant_id == client.tenant,
            ChatMember.user_id == client.id,
            end > ChatMember.joined_seq,
        )
        .scalar_subquery()
    )
    return case((ChatConversation.kind == "channel", ChatConversation.last_seq), else_=in_intervals)


def conversations_query(client: Client) -> Select[Any]:
    """Conversations with the caller's current membership (outer-joined: NULL when they are not
    a member), their unread count and the last message they may see, as columns."""
    me = aliased(ChatMember)
    last = aliased(ChatMessage)
    # Derived, never stored: the sequence is gap-free and only posts advance it, and a post
    # moves its sender's watermark to it, so every message after a member's watermark is
    # someone else's, inside their current interval (read_seq >= joined_seq).
    unread = ChatConversation.last_seq - me.read_seq
    members = (
        select(func.count())
        .select_from(ChatMember)
        .where(ChatMember.conversation_id == ChatConversation.id, ChatMember.left_seq.is_(None))
        .scalar_subquery()
    )
    last_columns = [column.element.label(f"last_{column.name}") for column in message_columns(last)]
    return (
        select(
            ChatConversation.id,
            ChatConversation.kind,
            ChatConversation.title,
            ChatConversation.created_by,
            ChatConversation.created_at,
            ChatConversation.last_activity_at,
            me.role.label("role"),
            me.read_seq.label("read_seq"),
            func.coalesce(unread, 0).label("unread"),
            members.label("member_count"),
            *last_columns,
        )
        .outerjoin(
            me,
            and_(
                me.conversation_id == ChatConversation.id,
                me.user_id == client.id,
                me.left_seq.is_(None),
            ),
        )
        .outerjoin(
            last,
            and_(
                last.conversation_id == ChatConversation.id,
                last.seq == _newest_visible_seq(client),
                visible_message(client.tenant, client.id, last),
            ),
        )
        .where(ChatConversation.tenant_id == client.tenant)
    )


@dataclass(frozen=True)
class _Last:
    """A conversation's last message, from its row's `last_*` columns."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    sender_id: str
    text: str | None
    created_at: datetime
    client_message_id: str | None
    has_attachments: bool


_LAST_FIELDS = tuple(f.name for f in fields(_Last))


async def conversation_views(
    db: AsyncSession | AsyncConnection, stmt: Select[Any]
) -> list[ConversationView]:
    rows = (await db.execute(stmt)).all()
    lasts = [
        _Last(*(getattr(row, f"last_{name}") for name in _LAST_FIELDS))
        for row in rows
        if row.last_id is not None
    ]
    by_id = {view.id: view for view in await message_views(db, lasts)}
    views = []
    for row in rows:
        member = row.role is not None
        # Who is in a group, and whether it is still active, is for its members (and, in a
        # public channel, anyone); a former member sees only the history they kept.
        shown = member or row.kind == "channel"
        views.append(
            ConversationView(
                id=row.id,
                kind=row.kind,
                title=row.title,
                created_by=row.created_by,
                created_at=row.created_at,
                last_activity_at=row.last_activity_at if shown else None,
                role=row.role,
                unread_count=row.unread if member else 0,
                read_up_to_seq=row.read_seq if member else None,
                last_message=by_id.get(row.last_id) if row.last_id is not None else None,
                member_count=row.member_count if shown else None,
            )
        )
    return views
