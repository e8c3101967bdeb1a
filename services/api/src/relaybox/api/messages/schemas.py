"""Request and response shapes of the message endpoints (shared by the conversation views)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from relaybox.api.fields import SINGLE_LINE, TEXT
from relaybox.common.db.models import Message

Channel = Literal["whatsapp", "instagram"]
Direction = Literal["inbound", "outbound"]
MessageStatus = Literal["RECEIVED", "PENDING", "SENDING", "SENT", "DELIVERED", "READ", "FAILED"]
MAX_TEXT = 4096
MAX_ID = 255


def single_line(value: str) -> str:
    """An identifier (participant, client message id): not blank, no control characters."""
    return SINGLE_LINE.check(value)


def message_text(value: str) -> str:
    """A message body: not blank and no NUL (PostgreSQL text cannot hold one)."""
    return TEXT.check(value)


class SendMessageRequest(BaseModel):
    """POST /messages/send body."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    channel: Channel
    to: str = Field(
        min_length=1,
        max_length=MAX_ID,
        examples=["+15551234567"],
        json_schema_extra=SINGLE_LINE.schema(),
    )
    text: str = Field(min_length=1, max_length=MAX_TEXT, json_schema_extra=TEXT.schema())
    client_message_id: str | None = Field(
        default=None,
        alias="clientMessageId",
        min_length=1,
        max_length=MAX_ID,
        description="the caller's id of this message: a repeat on the same channel sends nothing",
        json_schema_extra=SINGLE_LINE.schema(),
    )

    @field_validator("to", "client_message_id")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        return None if value is None else single_line(value)

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return message_text(value)


class MessageDetail(msgspec.Struct, rename="camel"):
    """One message; `to` is the conversation's participant, `retryCount` the sends after the
    first one (a provider's 429 included, though a 429 does not use up the retry budget)."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    direction: Direction
    channel: Channel
    to: str
    text: str
    status: MessageStatus
    provider_message_id: str | None
    retry_count: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    failed_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    client_message_id: str | None


def message_detail(row: Message) -> MessageDetail:
    return MessageDetail(
        id=row.id,
        conversation_id=row.conversation_id,
        direction=row.direction,  # type: ignore[arg-type]
        channel=row.channel,  # type: ignore[arg-type]
        to=row.participant_id,
        text=row.text,
        status=row.status,  # type: ignore[arg-type]
        provider_message_id=row.provider_message_id,
        retry_count=max(row.attempts - 1, 0),
        last_error=row.last_error,
        created_at=row.created_at,
        sent_at=row.sent_at,
        failed_at=row.failed_at,
        delivered_at=row.delivered_at,
        read_at=row.read_at,
        client_message_id=row.client_message_id,
    )
