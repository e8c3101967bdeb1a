"""SQLAlchemy models of every table (the migrations are the source of truth for DDL)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB, datetime: DateTime(timezone=True)}


class Outbox(Base):
    """Messages waiting for the publisher; a row is deleted only after the broker confirmed it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID, unique=True)
    destination: Mapped[str] = mapped_column(String(64), server_default="work")
    routing_key: Mapped[str] = mapped_column(String(255))
    payload: Mapped[dict[str, Any]]
    headers: Mapped[dict[str, Any]] = mapped_column(server_default=sql_text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    available_at: Mapped[datetime] = mapped_column(server_default=func.now())
    publish_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    xid: Mapped[int | None] = mapped_column(BigInteger)  # the writer's, on rows carrying events

    __table_args__ = (
        Index("ix_outbox_available_at_id", "available_at", "id"),
        Index("ix_outbox_xid", "xid", postgresql_where=sql_text("xid IS NOT NULL")),
    )


class Email(Base):
    """One queued email and its delivery log entry."""

    __tablename__ = "emails"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(255))
    to_address: Mapped[str] = mapped_column(String(320))
    from_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(255))
    text_body: Mapped[str | None] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), server_default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    throttled: Mapped[int] = mapped_column(Integer, server_default="0")  # 429s among attempts
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None]
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    sent_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("status IN ('PENDING', 'SENDING', 'SENT', 'FAILED')", name="status_known"),
        Index("ix_emails_created_at_id", "created_at", "id"),
        Index("ix_emails_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        Index("ix_emails_status_created_at", "status", "created_at"),
    )


class IdempotencyKey(Base):
    """The stored outcome of a creating POST, keyed by client, endpoint and Idempotency-Key."""

    __tablename__ = "idempotency_keys"

    client_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    scope: Mapped[str] = mapped_column(String(255), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)  # the purge


class Conversation(Base):
    """A customer thread on one channel; one per (tenant, channel, participant)."""

    __tablename__ = "conversations"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str] = mapped_column(String(16))
    participant_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(8), server_default="open")
    unread_count: Mapped[int] = mapped_column(Integer, server_default="0")
    last_message_at: Mapped[datetime | None]
    last_message_preview: Mapped[str | None] = mapped_column(String(200))
    last_read_at: Mapped[datetime | None]
    archived_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("tenant_id", "channel", "participant_id"),
        CheckConstraint("channel IN ('whatsapp', 'instagram')", name="channel_known"),
        CheckConstraint("status IN ('open', 'closed')", name="status_known"),
        CheckConstraint("unread_count >= 0", name="unread_not_negative"),
        Index("ix_conversations_last_message_at_id", "last_message_at", "id"),
        Index(
            "ix_conversations_tenant_id_last_message_at_id", "tenant_id", "last_message_at", "id"
        ),
    )


class Message(Base):
    """One inbound or outbound Meta-like message; outbound ones follow the delivery machine."""

    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("conversations.id"))
    tenant_id: Mapped[str] = mapped_column(String(255))  # the conversation's
    direction: Mapped[str] = mapped_column(String(8))
    channel: Mapped[str] = mapped_column(String(16))
    participant_id: Mapped[str] = mapped_column(String(255))
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    client_message_id: Mapped[str | None] = mapped_column(String(255))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    provider_event_id: Mapped[str | None] = mapped_column(String(255))
    sort_at: Mapped[datetime] = mapped_column(server_default=func.now())
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    throttled: Mapped[int] = mapped_column(Integer, server_default="0")  # 429s among attempts
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("tenant_id", "channel", "client_message_id"),
        CheckConstraint("direction IN ('inbound', 'outbound')", name="direction_known"),
        CheckConstraint(
            "status IN ('RECEIVED', 'PENDING', 'SENDING', 'SENT', 'DELIVERED', 'READ', 'FAILED')",
            name="status_known",
        ),
        Index("ix_messages_conversation_id_sort_at", "conversation_id", "sort_at"),
        Index(
            "ix_messages_provider_message_id",
            "provider_message_id",
            unique=True,
            postgresql_where=sql_text("provider_message_id IS NOT NULL"),
        ),
        Index("ix_messages_status_updated_at", "status", "updated_at"),
    )


class WebhookEvent(Base):
    """Every provider event seen once: the unique (provider, event_id) makes webhooks idempotent."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str | None] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    applied_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("provider", "event_id"),
        Index(
            "ix_webhook_events_pending_status",
            "provider_message_id",
            postgresql_where=sql_text("applied_at IS NULL"),
        ),
        Index("ix_webhook_events_received_at", "received_at"),  # the sweeper's purge
    )


class RateLimit(Base):
    """GCRA state of one provider limit, shared by every replica."""

    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    tat: Mapped[datetime] = mapped_column(server_default=func.now())
    paused_until: Mapped[datetime | None]


class Mailing(Base):
    """A bulk mailing from an uploaded CSV; its recipients are dispatched at the provider's pace."""

    __tablename__ = "mailings"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), server_default="PARSING")
    subject: Mapped[str] = mapped_column(String(255))
    body_template: Mapped[str] = mapped_column(Text)
    file_name: Mapped[str | None] = mapped_column(String(255))
    file_sha256: Mapped[str] = mapped_column(String(64))
    file_bytes: Mapped[int] = mapped_column(BigInteger)
    rows_total: Mapped[int] = mapped_column(Integer, server_default="0")
    valid_count: Mapped[int] = mapped_column(Integer, server_default="0")
    invalid_count: Mapped[int] = mapped_column(Integer, server_default="0")
    duplicate_count: Mapped[int] = mapped_column(Integer, server_default="0")
    parsed_chunks: Mapped[int] = mapped_column(Integer, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(
            "status IN ('PARSING', 'RUNNING', 'PAUSED', 'COMPLETED', 'CANCELLED', 'FAILED')",
            name="status_known",
        ),
        Index(
            "ix_mailings_tenant_id_file_sha256_created_at", "tenant_id", "file_sha256", "created_at"
        ),
        Index("ix_mailings_status_id", "status", "id"),
    )


class MailingChunk(Base):
    """The uploaded file, stored in ordered chunks so parsing streams it in constant memory."""

    __tablename__ = "mailing_chunks"

    mailing_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("mailings.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class MailingRecipient(Base):
    """One valid, de-duplicated address of a mailing; its email row carries the delivery.

    `mailing_id` has no foreign key (migration 0004: its per-row check was a third of a bulk
    ingest's database work); a trigger on `mailings` deletes a mailing's recipients and errors.
    """

    __tablename__ = "mailing_recipients"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    mailing_id: Mapped[uuid.UUID] = mapped_column(UUID)
    row_number: Mapped[int] = mapped_column(Integer)
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320, collation="C"))  # equality only
    status: Mapped[str] = mapped_column(String(16), server_default="PENDING")
    email_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    token_hash: Mapped[str | None] = mapped_column(String(64))
    dispatched_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("mailing_id", "email_key"),
        CheckConstraint("status IN ('PENDING', 'QUEUED', 'CANCELLED')", name="status_known"),
        Index("ix_mailing_recipients_mailing_id_status_id", "mailing_id", "status", "id"),
        Index(
            "ix_mailing_recipients_email_id",
            "email_id",
            postgresql_where=sql_text("email_id IS NOT NULL"),  # set when queued (0004)
        ),
    )


class MailingError(Base):
    """An invalid row of an uploaded file: its row number, the raw value and why."""

    __tablename__ = "mailing_errors"

    mailing_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)  # no FK: see above
    row_number: Mapped[int] = mapped_column(Integer, primary_key=True)
    raw_value: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)


# --- The internal messenger (/chat). docs/messenger/notes.md explains the model. -------------


class ChatConversation(Base):
    """A direct, group or channel conversation of one tenant; `last_seq` is its message
    sequence, advanced only under this row's lock (posts, joins, leaves and kicks all take it)."""

    __tablename__ = "chat_conversations"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(8))
    title: Mapped[str | None] = mapped_column(String(200))
    direct_key: Mapped[str | None] = mapped_column(String(511))  # the pair, sorted: one direct
    created_by: Mapped[str] = mapped_column(String(255))
    last_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    last_activity_at: Mapped[datetime] = mapped_column(server_default=func.now())
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("tenant_id", "direct_key"),
        CheckConstraint("kind IN ('direct', 'group', 'channel')", name="kind_known"),
        CheckConstraint("(kind = 'direct') = (direct_key IS NOT NULL)", name="direct_has_key"),
        Index("ix_chat_conversations_tenant_id_kind_created_at", "tenant_id", "kind", "created_at"),
    )


class ChatMember(Base):
    """One membership interval: the member sees the messages with `joined_seq < seq <=
    left_seq` (`left_seq` NULL while the membership lasts). Leave and re-join make two rows, so
    the gap between them stays hidden. `read_seq` is the read watermark, forward only."""

    __tablename__ = "chat_members"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("chat_conversations.id", ondelete="CASCADE")
    )
    tenant_id: Mapped[str] = mapped_column(String(255))  # the conversation's
    user_id: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(8))
    joined_seq: Mapped[int] = mapped_column(BigInteger)
    left_seq: Mapped[int | None] = mapped_column(BigInteger)
    ended_by: Mapped[str | None] = mapped_column(String(8))  # 'left' or 'kicked'
    added_by: Mapped[str | None] = mapped_column(String(255))  # NULL: joined or created it
    read_seq: Mapped[int] = mapped_column(BigInteger)
    joined_at: Mapped[datetime] = mapped_column(server_default=func.now())
    left_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("role IN ('owner', 'admin', 'member')", name="role_known"),
        CheckConstraint("ended_by IN ('left', 'kicked')", name="ended_by_known"),
        CheckConstraint("(left_seq IS NULL) = (ended_by IS NULL)", name="ended_has_reason"),
        CheckConstraint("left_seq IS NULL OR left_seq >= joined_seq", name="interval_ordered"),
        CheckConstraint("read_seq >= joined_seq", name="watermark_in_interval"),
        Index(
            "ix_chat_members_current",
            "conversation_id",
            "user_id",
            unique=True,
            postgresql_where=sql_text("left_seq IS NULL"),
        ),
        Index(
            "ix_chat_members_inbox",
            "tenant_id",
            "user_id",
            postgresql_where=sql_text("left_seq IS NULL"),
        ),
        Index("ix_chat_members_user_id_conversation_id", "user_id", "conversation_id"),
    )


class ChatMessage(Base):
    """One message, numbered `seq` within its conversation (gap-free, in commit order)."""

    __tablename__ = "chat_messages"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("chat_conversations.id", ondelete="CASCADE")
    )
    tenant_id: Mapped[str] = mapped_column(String(255))
    seq: Mapped[int] = mapped_column(BigInteger)
    sender_id: Mapped[str] = mapped_column(String(255))
    text: Mapped[str | None] = mapped_column(Text)
    client_message_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    search: Mapped[str] = mapped_column(
        TSVECTOR, Computed("to_tsvector('simple'::regconfig, coalesce(text, ''))", persisted=True)
    )

    __table_args__ = (
        UniqueConstraint("tenant_id", "sender_id", "client_message_id"),
        Index(
            "ix_chat_messages_conversation_id_seq",
            "conversation_id",
            "seq",
            unique=True,
            postgresql_include=["sender_id"],  # unread counts read the index alone
        ),
        # btree_gin: one index answers "this conversation AND these words"
        Index(
            "ix_chat_messages_conversation_id_search",
            "conversation_id",
            "search",
            postgresql_using="gin",
        ),
    )


class ChatRecipient(Base):
    """One recipient's copy of a message (every other member when it was posted): the delivery
    machine PENDING → SENT → DELIVERED → READ, or FAILED; each state keeps its first time."""

    __tablename__ = "chat_recipients"

    # No foreign key (migration 0013): the chat post inserts the copies in the statement that
    # inserts their message, and a trigger on `chat_messages` deletes them with it.
    message_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(UUID)
    seq: Mapped[int] = mapped_column(BigInteger)  # the message's, for "read up to seq"
    status: Mapped[str] = mapped_column(String(10), server_default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(
            "status IN ('PENDING', 'SENT', 'DELIVERED', 'READ', 'FAILED')", name="status_known"
        ),
        Index(
            "ix_chat_recipients_user_id_conversation_id_seq", "user_id", "conversation_id", "seq"
        ),
        # Room on each page for a copy's next versions: its status changes are HOT updates
        # (migration 0012 has the measurements).
        {"postgresql_with": {"fillfactor": 60}},
    )


class ChatDevice(Base):
    """A user's device that receives pushes; a push token belongs to one device at a time."""

    __tablename__ = "chat_devices"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    platform: Mapped[str] = mapped_column(String(8))
    push_token: Mapped[str] = mapped_column(String(4096), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("platform IN ('android', 'ios', 'web')", name="platform_known"),
        Index("ix_chat_devices_tenant_id_user_id", "tenant_id", "user_id"),
    )


class ChatPush(Base):
    """The outcome of pushing one message to one device: a device is pushed a message once."""

    __tablename__ = "chat_pushes"

    message_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("chat_messages.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)  # may outlive it
    user_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(10))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (CheckConstraint("status IN ('ACCEPTED', 'FAILED')", name="status_known"),)


class ChatAttachment(Base):
    """An uploaded file: stored by its sha256, served only to who may see it."""

    __tablename__ = "chat_attachments"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(255))
    uploader_id: Mapped[str] = mapped_column(String(255))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    attached_at: Mapped[datetime | None]  # the first message that references it

    __table_args__ = (
        Index(
            "ix_chat_attachments_unattached_created_at",
            "created_at",
            postgresql_where=sql_text("attached_at IS NULL"),
        ),
        Index("ix_chat_attachments_sha256", "sha256"),
    )


class ChatMessageAttachment(Base):
    """Which attachments a message references."""

    __tablename__ = "chat_message_attachments"

    message_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("chat_messages.id", ondelete="CASCADE"), primary_key=True
    )
    attachment_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("chat_attachments.id"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_chat_message_attachments_attachment_id", "attachment_id"),)


CURRENT_XID = sql_text("(pg_current_xact_id()::text)::bigint")
"""The id of the transaction writing a row, as bigint (the epoch-extended `xid8`)."""


class ChatEvent(Base):
    """A change connected clients must see, written in the transaction that makes it; `xid` is
    that transaction's id. Who sees it: `audience`, or for `message.created` (audience NULL) the
    message's sender and its copies' recipients."""

    __tablename__ = "chat_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    xid: Mapped[int] = mapped_column(BigInteger, server_default=CURRENT_XID)
    tenant_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    message_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    audience: Mapped[list[str] | None] = mapped_column(ARRAY(String(255)))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "(audience IS NULL) = (kind = 'message.created')", name="audience_or_copies"
        ),
        Index("ix_chat_events_tenant_id_xid_id", "tenant_id", "xid", "id"),
        Index("ix_chat_events_created_at", "created_at"),
    )


class ChatEventReader(Base):
    """One user who may see an event (the audience, or for `message.created` the sender and the
    copies' recipients): the index a resume reads, in stream order, for that user alone."""

    __tablename__ = "chat_event_readers"

    tenant_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    xid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)

    __table_args__ = (Index("ix_chat_event_readers_event_id", "event_id"),)  # the sweeper


class ChatStreamTicket(Base):
    """A stream ticket that was used (a ticket connects once)."""

    __tablename__ = "chat_stream_tickets"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime]

    __table_args__ = (Index("ix_chat_stream_tickets_expires_at", "expires_at"),)


class ChatPresence(Base):
    """A live socket of a registered device, refreshed by the replica's heartbeat."""

    __tablename__ = "chat_presence"

    connection_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    device_id: Mapped[uuid.UUID] = mapped_column(UUID)
    tenant_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    replica: Mapped[str] = mapped_column(String(255))
    connected_at: Mapped[datetime] = mapped_column(server_default=func.now())
    seen_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        Index("ix_chat_presence_device_id", "device_id"),
        Index("ix_chat_presence_replica", "replica"),
    )


class ChatStreamState(Base):
    """One row: events with `xid` up to `swept_xid` may have been deleted by the retention."""

    __tablename__ = "chat_stream_state"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    swept_xid: Mapped[int] = mapped_column(BigInteger, server_default="0")

    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)


class DeadLetter(Base):
    """A message that died (its route's DLQ, drained by the consumer): kept for operators to
    inspect, replay through the outbox, or discard. One row per route and payload fingerprint;
    `count` says how often it died."""

    __tablename__ = "dead_letters"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    route: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    row_id: Mapped[str | None] = mapped_column(String(255))  # the domain row it points at
    payload: Mapped[dict[str, Any]]
    headers: Mapped[dict[str, Any]] = mapped_column(server_default=sql_text("'{}'::jsonb"))
    last_error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    count: Mapped[int] = mapped_column(Integer, server_default="1")
    status: Mapped[str] = mapped_column(String(16), server_default="open")
    last_message_id: Mapped[str | None] = mapped_column(String(255))
    first_seen_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(server_default=func.now())
    replayed_at: Mapped[datetime | None]
    discarded_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("route", "fingerprint"),
        CheckConstraint("status IN ('open', 'replayed', 'discarded')", name="status_known"),
        Index("ix_dead_letters_last_seen_at_id", "last_seen_at", "id"),
        Index("ix_dead_letters_status_route", "status", "route"),
    )
