"""Webhook events are purged once older than the retention: an index to find them by age.

Built CONCURRENTLY: `webhook_events` was never purged before, so it may be large, and a plain
CREATE INDEX would block the webhooks' inserts while it builds.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_webhook_events_received_at",
            "webhook_events",
            ["received_at"],
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_webhook_events_received_at",
            table_name="webhook_events",
            postgresql_concurrently=True,
        )
