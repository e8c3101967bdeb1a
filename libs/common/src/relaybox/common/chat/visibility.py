"""The history rule, written once as SQL: who sees which message of a conversation.

A member sees the messages posted while they were a member: each membership interval
(`chat_members` row) shows the sequence numbers `joined_seq < seq <= left_seq` (`left_seq` NULL
while it lasts). A user who left or was kicked keeps the intervals they had (Matrix's rule);
the gap between a leave and a re-join stays hidden. A channel is public: anyone of its tenant
sees all of it, joined or not.

Every read path — the list, one message, search, the last message, receipts, reads, attachments —
filters with `visible_message`; none filters in Python. (Unread counts stay inside the current
interval by construction: see `relaybox.api.chat.views`.)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_

from relaybox.common.db.models import ChatConversation, ChatMember, ChatMessage

Who = str | ColumnElement[str]
"""A tenant or user: a value, or a bind parameter of a statement built once and reused."""


def visible_message(tenant: Who, user: Who, message: Any = ChatMessage) -> ColumnElement[bool]:
    """The SQL condition "`user` of `tenant` may see this message row" (`message` is
    `ChatMessage` or an alias of it)."""
    member_saw_it = (
        exists()
        .where(
            ChatMember.conversation_id == message.conversation_id,
            ChatMember.tenant_id == tenant,
            ChatMember.user_id == user,
            ChatMember.joined_seq < message.seq,
            or_(ChatMember.left_seq.is_(None), message.seq <= ChatMember.left_seq),
        )
        .correlate_except(ChatMember)
    )
    public = (
        exists()
        .where(
            ChatConversation.id == message.conversation_id,
            ChatConversation.tenant_id == tenant,
            ChatConversation.kind == "channel",
        )
        .correlate_except(ChatConversation)
    )
    return and_(message.tenant_id == tenant, or_(member_saw_it, public))
