"""Meta-like gateway: conversations, messages, webhook events, rate limits.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", postgresql.UUID(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("participant_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(8), server_default="open", nullable=False),
        sa.Column("unread_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_message_at", TZ, nullable=True),
        sa.Column("last_message_preview", sa.String(200), nullable=True),
        sa.Column("last_read_at", TZ, nullable=True),
        sa.Column("archived_at", TZ, nullable=True),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.UniqueConstraint(
            "channel", "participant_id", name="uq_conversations_channel_participant_id"
        ),
        sa.CheckConstraint(
            "channel IN ('whatsapp', 'instagram')", name=op.f("ck_conversations_channel_known")
        ),
        sa.CheckConstraint(
            "status IN ('open', 'closed')", name=op.f("ck_conversations_status_known")
        ),
        sa.CheckConstraint("unread_count >= 0", name=op.f("ck_conversations_unread_not_negative")),
    )
    op.create_index(
        "ix_conversations_last_message_at_id", "conversations", ["last_message_at", "id"]
    )
    op.create_table(
        "messages",
        sa.Column("id", postgresql.UUID(), nullable=False),
        sa.Column("conversation_id", postgresql.UUID(), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("participant_id", sa.String(255), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("client_message_id", sa.String(255), nullable=True),
        sa.Column("provider_message_id", sa.String(255), nullable=True),
        sa.Column("provider_event_id", sa.String(255), nullable=True),
        sa.Column("sort_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_until", TZ, nullable=True),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("sent_at", TZ, nullable=True),
        sa.Column("delivered_at", TZ, nullable=True),
        sa.Column("read_at", TZ, nullable=True),
        sa.Column("failed_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_messages_conversation_id_conversations",
        ),
        sa.UniqueConstraint(
            "channel", "client_message_id", name="uq_messages_channel_client_message_id"
        ),
        sa.CheckConstraint(
            "direction IN ('inbound', 'outbound')", name=op.f("ck_messages_direction_known")
        ),
        sa.CheckConstraint(
            "status IN ('RECEIVED', 'PENDING', 'SENDING', 'SENT', 'DELIVERED', 'READ', 'FAILED')",
            name=op.f("ck_messages_status_known"),
        ),
    )
    op.create_index(
        "ix_messages_conversation_id_sort_at", "messages", ["conversation_id", "sort_at"]
    )
    op.create_index(
        "ix_messages_provider_message_id",
        "messages",
        ["provider_message_id"],
        unique=True,
        postgresql_where=sa.text("provider_message_id IS NOT NULL"),
    )
    op.create_index("ix_messages_status_updated_at", "messages", ["status", "updated_at"])
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("provider_message_id", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("received_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("applied_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_events"),
        sa.UniqueConstraint("provider", "event_id", name="uq_webhook_events_provider_event_id"),
    )
    op.create_index(
        "ix_webhook_events_pending_status",
        "webhook_events",
        ["provider_message_id"],
        postgresql_where=sa.text("applied_at IS NULL"),
    )
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("tat", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("paused_until", TZ, nullable=True),
        sa.PrimaryKeyConstraint("key", name="pk_rate_limits"),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
    op.drop_index("ix_webhook_events_pending_status", table_name="webhook_events")
    op.drop_table("webhook_events")
    op.drop_index("ix_messages_status_updated_at", table_name="messages")
    op.drop_index("ix_messages_provider_message_id", table_name="messages")
    op.drop_index("ix_messages_conversation_id_sort_at", table_name="messages")
    op.drop_table("messages")
    op.drop_index("ix_conversations_last_message_at_id", table_name="conversations")
    op.drop_table("conversations")
