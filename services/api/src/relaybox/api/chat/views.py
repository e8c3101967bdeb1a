"""Rows to responses: messages with their attachments, conversations with the caller's unread
count and the last message they may see."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
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


async def message_views(
    session: AsyncSession, messages: Sequence[ChatMessage]
) -> list[MessageView]:
    """The messages with their attachments (one query for all of them)."""
    attached: dict[uuid.UUID, list[AttachmentRef]] = {m.id: [] for m in messages}
    if messages:
        rows = await session.execute(
            select(ChatMessageAttachment.message_id, ChatAttachment)
            .join(ChatAttachment, ChatAttachment.id == ChatMessageAttachment.attachment_id)
            .where(ChatMessageAttachment.message_id.in_(list(attached)))
            .order_by(ChatMessageAttachment.message_id, ChatMessageAttachment.position)
        )
        for message_id, a in rows:
            attached[message_id].append(
                AttachmentRef(
                    id=a.id,
                    filename=a.filename,
                    content_type=a.content_type,
                    size_bytes=a.size_bytes,
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
    a member), their unread count and the last message they may see."""
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
    return (
        select(ChatConversation, me, last, func.coalesce(unread, 0), members)
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


async def conversation_views(session: AsyncSession, stmt: Select[Any]) -> list[ConversationView]:
    rows = (await session.execute(stmt)).all()
    lasts = await message_views(session, [row[2] for row in rows if row[2] is not None])
    by_id = {view.id: view for view in lasts}
    views = []
    for conversation, member, last, unread, members in rows:
        # Who is in a group, and whether it is still active, is for its members (and, in a
        # public channel, anyone); a former member sees only the history they kept.
        shown = member is not None or conversation.kind == "channel"
        views.append(
            ConversationView(
                id=conversation.id,
                kind=conversation.kind,
                title=conversation.title,
                created_by=conversation.created_by,
                created_at=conversation.created_at,
                last_activity_at=conversation.last_activity_at if shown else None,
                role=member.role if member is not None else None,
                unread_count=unread if member is not None else 0,
                read_up_to_seq=member.read_seq if member is not None else None,
                last_message=by_id.get(last.id) if last is not None else None,
                member_count=members if shown else None,
            )
        )
    return views
