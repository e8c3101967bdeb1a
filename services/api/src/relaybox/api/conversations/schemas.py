"""Response shapes of the conversation endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import msgspec

from relaybox.api.messages.schemas import Channel, MessageDetail, message_detail
from relaybox.common.db.models import Conversation, Message

ConversationStatus = Literal["open", "closed"]


class PageMeta(msgspec.Struct, rename="camel"):
    page: int
    limit: int
    total: int


class ConversationItem(msgspec.Struct, rename="camel"):
    """One conversation of the inbox."""

    id: uuid.UUID
    channel: Channel
    participant_id: str
    last_message_preview: str | None
    last_message_at: datetime | None
    unread_count: int
    status: ConversationStatus
    archived_at: datetime | None
    last_read_at: datetime | None


class ConversationPage(msgspec.Struct):
    """GET /conversations: newest activity first."""

    data: list[ConversationItem]
    meta: PageMeta


class ConversationMessage(MessageDetail, rename="camel"):
    """A message of a conversation; `sortAt` is its place in the thread (the provider's
    timestamp of an inbound message, the time an outbound one was accepted)."""

    sort_at: datetime


class ConversationDetail(ConversationItem, rename="camel"):
    """GET /conversations/{id}: the conversation and one page of its messages, newest first."""

    messages: list[ConversationMessage]
    meta: PageMeta


def conversation_item(row: Conversation) -> ConversationItem:
    return ConversationItem(
        id=row.id,
        channel=row.channel,  # type: ignore[arg-type]
        participant_id=row.participant_id,
        last_message_preview=row.last_message_preview,
        last_message_at=row.last_message_at,
        unread_count=row.unread_count,
        status=row.status,  # type: ignore[arg-type]
        archived_at=row.archived_at,
        last_read_at=row.last_read_at,
    )


def conversation_message(row: Message) -> ConversationMessage:
    detail = message_detail(row)
    return ConversationMessage(
        **{f: getattr(detail, f) for f in detail.__struct_fields__}, sort_at=row.sort_at
    )
