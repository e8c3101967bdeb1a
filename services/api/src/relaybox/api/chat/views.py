"""Rows to responses: messages with their attachments, conversations with the caller's unread
count and the last message they may see."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from relaybox.api.chat.schemas import (
    AttachmentRef,
    ConversationView,
    MessageView,
)
from relaybox.common.chat.visibility import Who, visible_message
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


async def _attachments(
    db: AsyncSession | AsyncConnection, message_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[AttachmentRef]]:
    """The attachments of these messages, in order (one query; none for no ids)."""
    attached: dict[uuid.UUID, list[AttachmentRef]] = {}
    if message_ids:
        rows = await db.execute(
            select(
                ChatMessageAttachment.message_id,
                ChatAttachment.id,
                ChatAttachment.filename,
                ChatAttachment.content_type,
                ChatAttachment.size_bytes,
            )
            .join(ChatAttachment, ChatAttachment.id == ChatMessageAttachment.attachment_id)
            .where(ChatMessageAttachment.message_id.in_(message_ids))
            .order_by(ChatMessageAttachment.message_id, ChatMessageAttachment.position)
        )
        for message_id, attachment_id, filename, content_type, size_bytes in rows:
            attached.setdefault(message_id, []).append(
                AttachmentRef(
                    id=attachment_id,
                    filename=filename,
                    content_type=content_type,
                    size_bytes=size_bytes,
                )
            )
    return attached


async def message_views(
    db: AsyncSession | AsyncConnection, messages: Sequence[MessageRow]
) -> list[MessageView]:
    """The messages with their attachments (one query for all that have any; a row that says
    `has_attachments` false needs none)."""
    attached = await _attachments(
        db, [m.id for m in messages if getattr(m, "has_attachments", True)]
    )
    return [
        MessageView(
            id=m.id,
            conversation_id=m.conversation_id,
            seq=m.seq,
            sender_id=m.sender_id,
            text=m.text,
            attachments=attached.get(m.id, []),
            created_at=m.created_at,
            client_message_id=m.client_message_id,
        )
        for m in messages
    ]


def _newest_visible_seq(tenant: Who, user: Who) -> ColumnElement[Any]:
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
            ChatMember.tenant_id == tenant,
            ChatMember.user_id == user,
            end > ChatMember.joined_seq,
        )
        .scalar_subquery()
    )
    return case((ChatConversation.kind == "channel", ChatConversation.last_seq), else_=in_intervals)


def conversations_query(tenant: Who, user: Who) -> Select[Any]:
    """Conversations of `tenant` with `user`'s current membership (outer-joined: NULL when they
    are not a member), their unread count and the last message they may see, as columns (in the
    order `conversation_views` unpacks them)."""
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
                me.user_id == user,
                me.left_seq.is_(None),
            ),
        )
        .outerjoin(
            last,
            and_(
                last.conversation_id == ChatConversation.id,
                last.seq == _newest_visible_seq(tenant, user),
                visible_message(tenant, user, last),
            ),
        )
        .where(ChatConversation.tenant_id == tenant)
    )


async def conversation_views(
    db: AsyncSession | AsyncConnection, stmt: Select[Any], params: dict[str, Any] | None = None
) -> list[ConversationView]:
    """The views of `conversations_query` rows (unpacked by position: a page of 200 rows reads
    a few thousand values, and a Row's attribute lookup by name costs several times more)."""
    rows = [tuple(row) for row in (await db.execute(stmt, params or {})).all()]
    lasts = {row[10]: row[10:] for row in rows if row[10] is not None}
    attached = await _attachments(db, [m[0] for m in lasts.values() if m[7]])
    views = []
    for row in rows:
        (cid, kind, title, created_by, created_at, active_at, role, read_seq, unread, count) = row[
            :10
        ]
        last = lasts.get(row[10])
        member = role is not None
        # Who is in a group, and whether it is still active, is for its members (and, in a
        # public channel, anyone); a former member sees only the history they kept.
        shown = member or kind == "channel"
        views.append(
            ConversationView(
                id=cid,
                kind=kind,
                title=title,
                created_by=created_by,
                created_at=created_at,
                last_activity_at=active_at if shown else None,
                role=role,
                unread_count=unread if member else 0,
                read_up_to_seq=read_seq if member else None,
                last_message=None
                if last is None
                else MessageView(
                    id=last[0],
                    conversation_id=last[1],
                    seq=last[2],
                    sender_id=last[3],
                    text=last[4],
                    attachments=attached.get(last[0], []),
                    created_at=last[5],
                    client_message_id=last[6],
                ),
                member_count=count if shown else None,
            )
        )
    return views
