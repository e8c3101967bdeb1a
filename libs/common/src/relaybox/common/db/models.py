"""SQLAlchemy models of every table (the migrations are the source of truth for DDL)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import JSONB, UUID
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

    __table_args__ = (Index("ix_outbox_available_at_id", "available_at", "id"),)


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
