"""The internal messenger: conversations, membership intervals, messages with a per-conversation
sequence and a full-text index, per-recipient delivery rows, devices, pushes and attachments.

`btree_gin` (a trusted contrib extension: a database owner may create it) lets one GIN index
answer "this conversation AND these words".

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TSVECTOR, UUID

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def _tenant() -> sa.Column[str]:
    return sa.Column("tenant_id", sa.String(255), nullable=False)


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    op.create_table(
        "chat_conversations",
        sa.Column("id", UUID, primary_key=True),
        _tenant(),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("title", sa.String(200)),
        sa.Column("direct_key", sa.String(511)),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column(
            "last_activity_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.UniqueConstraint("tenant_id", "direct_key"),
        sa.CheckConstraint("kind IN ('direct', 'group', 'channel')", name="kind_known"),
        sa.CheckConstraint("(kind = 'direct') = (direct_key IS NOT NULL)", name="direct_has_key"),
    )
    op.create_index(
        "ix_chat_conversations_tenant_id_kind_created_at",
        "chat_conversations",
        ["tenant_id", "kind", "created_at"],
    )
    op.create_table(
        "chat_members",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column(
            "conversation_id",
            UUID,
            sa.ForeignKey("chat_conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        _tenant(),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("joined_seq", sa.BigInteger, nullable=False),
        sa.Column("left_seq", sa.BigInteger),
        sa.Column("ended_by", sa.String(8)),
        sa.Column("added_by", sa.String(255)),
        sa.Column("read_seq", sa.BigInteger, nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("left_at", sa.DateTime(timezone=True)),
        sa.Column("read_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member')", name="role_known"),
        sa.CheckConstraint("ended_by IN ('left', 'kicked')", name="ended_by_known"),
        sa.CheckConstraint("(left_seq IS NULL) = (ended_by IS NULL)", name="ended_has_reason"),
        sa.CheckConstraint("left_seq IS NULL OR left_seq >= joined_seq", name="interval_ordered"),
        sa.CheckConstraint("read_seq >= joined_seq", name="watermark_in_interval"),
    )
    op.create_index(
        "ix_chat_members_current",
        "chat_members",
        ["conversation_id", "user_id"],
        unique=True,
        postgresql_where=sa.text("left_seq IS NULL"),
    )
    op.create_index(
        "ix_chat_members_inbox",
        "chat_members",
        ["tenant_id", "user_id"],
        postgresql_where=sa.text("left_seq IS NULL"),
    )
    op.create_index(
        "ix_chat_members_user_id_conversation_id", "chat_members", ["user_id", "conversation_id"]
    )
    op.create_table(
        "chat_messages",
        sa.Column("id", UUID, primary_key=True),
        sa.Column(
            "conversation_id",
            UUID,
            sa.ForeignKey("chat_conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        _tenant(),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("sender_id", sa.String(255), nullable=False),
        sa.Column("text", sa.Text),
        sa.Column("client_message_id", sa.String(255)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column(
            "search",
            TSVECTOR,
            sa.Computed("to_tsvector('simple'::regconfig, coalesce(text, ''))", persisted=True),
            nullable=False,
        ),
        sa.UniqueConstraint("tenant_id", "sender_id", "client_message_id"),
    )
    op.create_index(
        "ix_chat_messages_conversation_id_seq",
        "chat_messages",
        ["conversation_id", "seq"],
        unique=True,
        postgresql_include=["sender_id"],
    )
    op.create_index(
        "ix_chat_messages_conversation_id_search",
        "chat_messages",
        ["conversation_id", "search"],
        postgresql_using="gin",
    )
    op.create_table(
        "chat_recipients",
        sa.Column(
            "message_id",
            UUID,
            sa.ForeignKey("chat_messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("conversation_id", UUID, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(10), nullable=False, server_default="PENDING"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("read_at", sa.DateTime(timezone=True)),
        sa.Column("failed_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status IN ('PENDING', 'SENT', 'DELIVERED', 'READ', 'FAILED')", name="status_known"
        ),
    )
    op.create_index(
        "ix_chat_recipients_user_id_conversation_id_seq",
        "chat_recipients",
        ["user_id", "conversation_id", "seq"],
    )
    op.create_table(
        "chat_devices",
        sa.Column("id", UUID, primary_key=True),
        _tenant(),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("platform", sa.String(8), nullable=False),
        sa.Column("push_token", sa.String(4096), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.CheckConstraint("platform IN ('android', 'ios', 'web')", name="platform_known"),
    )
    op.create_index("ix_chat_devices_tenant_id_user_id", "chat_devices", ["tenant_id", "user_id"])
    op.create_table(
        "chat_pushes",
        sa.Column(
            "message_id",
            UUID,
            sa.ForeignKey("chat_messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("device_id", UUID, primary_key=True),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("provider_message_id", sa.String(255)),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.CheckConstraint("status IN ('ACCEPTED', 'FAILED')", name="status_known"),
    )
    op.create_table(
        "chat_attachments",
        sa.Column("id", UUID, primary_key=True),
        _tenant(),
        sa.Column("uploader_id", sa.String(255), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("attached_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "ix_chat_attachments_unattached_created_at",
        "chat_attachments",
        ["created_at"],
        postgresql_where=sa.text("attached_at IS NULL"),
    )
    op.create_index("ix_chat_attachments_sha256", "chat_attachments", ["sha256"])
    op.create_table(
        "chat_message_attachments",
        sa.Column(
            "message_id",
            UUID,
            sa.ForeignKey("chat_messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("attachment_id", UUID, sa.ForeignKey("chat_attachments.id"), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_index(
        "ix_chat_message_attachments_attachment_id",
        "chat_message_attachments",
        ["attachment_id"],
    )


def downgrade() -> None:
    for table in (
        "chat_message_attachments",
        "chat_attachments",
        "chat_pushes",
        "chat_devices",
        "chat_recipients",
        "chat_messages",
        "chat_members",
        "chat_conversations",
    ):
        op.drop_table(table)
