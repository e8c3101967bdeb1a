"""mailing_recipients.email_id is indexed only once it is set.

A recipient gets its email id when the dispatcher queues it, so at ingest every row carried a
NULL into this index: one index insertion per row of a million-row upload for entries nobody
looks up (lookups are always by a known email id).

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_mailing_recipients_email_id"


def upgrade() -> None:
    op.drop_index(INDEX, table_name="mailing_recipients")
    op.create_index(
        INDEX,
        "mailing_recipients",
        ["email_id"],
        postgresql_where=sa.text("email_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="mailing_recipients")
    op.create_index(INDEX, "mailing_recipients", ["email_id"])
