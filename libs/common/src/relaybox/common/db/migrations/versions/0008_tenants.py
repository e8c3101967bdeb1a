"""Every row belongs to a tenant: emails and mailings by their (renamed) owner column, gateway
conversations and messages by a new one.

- `emails.client_id` and `mailings.client_id` held the token subject that created the row;
  they are renamed `tenant_id` (with the default tenant claim, `sub`, the values are the same).
- `conversations.tenant_id` and `messages.tenant_id`: existing rows are given to `dev`, the
  default owner of the gateway's provider account (RELAYBOX_META__TENANT); a deployment with
  another owner updates both columns once after upgrading.
- Idempotency of outbound messages and the one conversation per participant hold per tenant:
  the unique constraints gain `tenant_id` in front.
- The lists each tenant reads are indexed by tenant first.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GATEWAY_TENANT = "dev"


def upgrade() -> None:
    op.alter_column("emails", "client_id", new_column_name="tenant_id")
    op.create_index(
        "ix_emails_tenant_id_created_at_id", "emails", ["tenant_id", "created_at", "id"]
    )
    op.alter_column("mailings", "client_id", new_column_name="tenant_id")
    op.execute(
        "ALTER INDEX ix_mailings_client_id_file_sha256_created_at "
        "RENAME TO ix_mailings_tenant_id_file_sha256_created_at"
    )
    for table in ("conversations", "messages"):
        op.add_column(
            table,
            sa.Column("tenant_id", sa.String(255), nullable=False, server_default=GATEWAY_TENANT),
        )
        op.alter_column(table, "tenant_id", server_default=None)
    op.drop_constraint("uq_conversations_channel_participant_id", "conversations")
    op.create_unique_constraint(
        "uq_conversations_tenant_id_channel_participant_id",
        "conversations",
        ["tenant_id", "channel", "participant_id"],
    )
    op.create_index(
        "ix_conversations_tenant_id_last_message_at_id",
        "conversations",
        ["tenant_id", "last_message_at", "id"],
    )
    op.drop_constraint("uq_messages_channel_client_message_id", "messages")
    op.create_unique_constraint(
        "uq_messages_tenant_id_channel_client_message_id",
        "messages",
        ["tenant_id", "channel", "client_message_id"],
    )


def downgrade() -> None:
    op.drop_constraint("uq_messages_tenant_id_channel_client_message_id", "messages")
    op.create_unique_constraint(
        "uq_messages_channel_client_message_id", "messages", ["channel", "client_message_id"]
    )
    op.drop_index("ix_conversations_tenant_id_last_message_at_id", table_name="conversations")
    op.drop_constraint("uq_conversations_tenant_id_channel_participant_id", "conversations")
    op.create_unique_constraint(
        "uq_conversations_channel_participant_id", "conversations", ["channel", "participant_id"]
    )
    for table in ("conversations", "messages"):
        op.drop_column(table, "tenant_id")
    op.execute(
        "ALTER INDEX ix_mailings_tenant_id_file_sha256_created_at "
        "RENAME TO ix_mailings_client_id_file_sha256_created_at"
    )
    op.alter_column("mailings", "tenant_id", new_column_name="client_id")
    op.drop_index("ix_emails_tenant_id_created_at_id", table_name="emails")
    op.alter_column("emails", "tenant_id", new_column_name="client_id")
