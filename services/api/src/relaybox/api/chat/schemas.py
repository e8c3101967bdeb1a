"""Request and response shapes of the messenger (`/chat`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from relaybox.api.fields import SINGLE_LINE, TEXT
from relaybox.common.chat.delivery import RecipientStatus

Kind = Literal["direct", "group", "channel"]
Role = Literal["owner", "admin", "member"]
Platform = Literal["android", "ios", "web"]
MAX_ID = 255
MAX_TEXT = 4096
MAX_MEMBERS = 5000
MAX_ATTACHMENTS = 10


def _when_kind(kind: str, then: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema: "when `kind` is `kind`, the body also matches `then`"."""
    return {"anyOf": [{"not": {"properties": {"kind": {"const": kind}}}}, then]}


# The kind rules the validator applies, stated in the document (a client may send anything the
# document allows): a direct has no title and exactly one member; a channel has a title.
_KIND_RULES: dict[str, Any] = {
    "allOf": [
        _when_kind(
            "direct",
            {
                "properties": {
                    "title": {"type": "null"},
                    "members": {"minItems": 1, "maxItems": 1},
                },
                "required": ["members"],
            },
        ),
        _when_kind("channel", {"properties": {"title": {"type": "string"}}, "required": ["title"]}),
    ]
}
# A message has a text, attachments, or both.
_NOT_EMPTY: dict[str, Any] = {
    "anyOf": [
        {"properties": {"text": {"type": "string"}}, "required": ["text"]},
        {"properties": {"attachmentIds": {"minItems": 1}}, "required": ["attachmentIds"]},
    ]
}


class CreateConversationRequest(BaseModel):
    """POST /chat/conversations body. A `direct` names the other user, alone, in `members`; a
    `channel` needs a `title`; the caller owns a group or channel they create."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra=_KIND_RULES)

    kind: Kind
    title: str | None = Field(
        default=None, min_length=1, max_length=200, json_schema_extra=SINGLE_LINE.schema()
    )
    members: list[str] = Field(
        default_factory=list,
        max_length=MAX_MEMBERS,
        description="user ids (JWT subjects of the caller's tenant) to add as members",
        json_schema_extra={
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_ID, **SINGLE_LINE.schema()}
        },
    )

    @field_validator("title")
    @classmethod
    def _title(cls, value: str | None) -> str | None:
        return None if value is None else SINGLE_LINE.check(value)

    @field_validator("members")
    @classmethod
    def _members(cls, value: list[str]) -> list[str]:
        for user in value:
            if not 0 < len(user) <= MAX_ID:
                raise ValueError(f"a user id is 1 to {MAX_ID} characters")
            SINGLE_LINE.check(user)
        return list(dict.fromkeys(value))  # once each, in order

    @model_validator(mode="after")
    def _kind_rules(self) -> CreateConversationRequest:
        if self.kind == "channel" and self.title is None:
            raise ValueError("a channel needs a title (it is how people find it)")
        if self.kind == "direct" and self.title is not None:
            raise ValueError("a direct conversation has no title")
        if self.kind == "direct" and len(self.members) != 1:
            raise ValueError("a direct conversation names the other user, alone, in `members`")
        return self


class AddMemberRequest(BaseModel):
    """POST /chat/conversations/{id}/members body."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    user_id: str = Field(
        alias="userId", min_length=1, max_length=MAX_ID, json_schema_extra=SINGLE_LINE.schema()
    )
    role: Role = "member"

    @field_validator("user_id")
    @classmethod
    def _user(cls, value: str) -> str:
        return SINGLE_LINE.check(value)


class ChangeRoleRequest(BaseModel):
    """PATCH /chat/conversations/{id}/members/{userId} body."""

    model_config = ConfigDict(extra="forbid")

    role: Role


class PostMessageRequest(BaseModel):
    """POST /chat/messages body: text, attachments (ids of the caller's uploads), or both."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra=_NOT_EMPTY)

    conversation_id: uuid.UUID = Field(alias="conversationId")
    text: str | None = Field(
        default=None, min_length=1, max_length=MAX_TEXT, json_schema_extra=TEXT.schema()
    )
    attachment_ids: list[uuid.UUID] = Field(
        default_factory=list, alias="attachmentIds", max_length=MAX_ATTACHMENTS
    )
    client_message_id: str | None = Field(
        default=None,
        alias="clientMessageId",
        min_length=1,
        max_length=MAX_ID,
        description="the sender's id of this message: a repeat posts nothing and answers the "
        "stored message",
        json_schema_extra=SINGLE_LINE.schema(),
    )

    @field_validator("text")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return None if value is None else TEXT.check(value)

    @field_validator("client_message_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        return None if value is None else SINGLE_LINE.check(value)

    @field_validator("attachment_ids")
    @classmethod
    def _attachments(cls, value: list[uuid.UUID]) -> list[uuid.UUID]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _not_empty(self) -> PostMessageRequest:
        if self.text is None and not self.attachment_ids:
            raise ValueError("a message needs a text, attachments, or both")
        return self


class RegisterDeviceRequest(BaseModel):
    """POST /chat/devices body."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    platform: Platform
    push_token: str = Field(
        alias="pushToken", min_length=1, max_length=4096, json_schema_extra=SINGLE_LINE.schema()
    )

    @field_validator("push_token")
    @classmethod
    def _token(cls, value: str) -> str:
        return SINGLE_LINE.check(value)


class AttachmentRef(msgspec.Struct, rename="camel"):
    id: uuid.UUID
    filename: str
    content_type: str
    size_bytes: int


class MessageView(msgspec.Struct, rename="camel"):
    """One message; `seq` numbers it within its conversation (gap-free, in commit order)."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    sender_id: str
    text: str | None
    attachments: list[AttachmentRef]
    created_at: datetime
    client_message_id: str | None


class MessagePage(msgspec.Struct, rename="camel"):
    """A conversation's messages, newest first; `nextBefore` is the `before` of the next
    (older) page, null on the last."""

    data: list[MessageView]
    next_before: int | None


class SearchPage(msgspec.Struct, rename="camel"):
    """Matches in every conversation the caller may see, newest first; `nextCursor` pages on."""

    data: list[MessageView]
    next_cursor: str | None


class MemberView(msgspec.Struct, rename="camel"):
    user_id: str
    role: Role
    joined_at: datetime
    added_by: str | None


class ConversationView(msgspec.Struct, rename="camel"):
    """A conversation as the caller sees it: `role` is null when they are not a member (a
    channel reader, or a former member who keeps the history they saw); `unreadCount` counts
    other people's messages after the caller's read watermark in their current membership. A
    former member of a group sees neither its members nor its activity (`memberCount`,
    `lastActivityAt` null, `members` empty)."""

    id: uuid.UUID
    kind: Kind
    title: str | None
    created_by: str
    created_at: datetime
    last_activity_at: datetime | None
    role: Role | None
    unread_count: int
    read_up_to_seq: int | None
    last_message: MessageView | None
    member_count: int | None


class ConversationDetail(ConversationView, kw_only=True):
    members: list[MemberView]


class ConversationPage(msgspec.Struct, rename="camel"):
    data: list[ConversationView]
    next_cursor: str | None


class ReadResult(msgspec.Struct, rename="camel"):
    """What a read recorded: the copies it moved to READ and the caller's watermark now."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    seq: int
    marked_read: int
    read_up_to_seq: int | None


class RecipientReceipt(msgspec.Struct, rename="camel"):
    user_id: str
    status: RecipientStatus
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    last_error: str | None


class ReceiptSummary(msgspec.Struct, rename="camel"):
    """How many copies are in each status (`total` = every recipient)."""

    total: int
    pending: int
    sent: int
    delivered: int
    read: int
    failed: int


class Receipts(msgspec.Struct, rename="camel"):
    message_id: uuid.UUID
    summary: ReceiptSummary
    recipients: list[RecipientReceipt]


class DeviceView(msgspec.Struct, rename="camel"):
    """A registered device; the push token is never echoed whole (its last 6 characters)."""

    id: uuid.UUID
    platform: Platform
    token_suffix: str
    created_at: datetime
