"""A provider's 429s are counted apart from the attempts that use up the retry budget.

`attempts` counts every call to the provider (what `retryCount` and the email log show);
`throttled` counts the ones the provider answered 429, which do not count against
RELAYBOX_MAX_ATTEMPTS. A constant default: PostgreSQL adds the column without a rewrite.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("emails", "messages")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(
            table, sa.Column("throttled", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "throttled")
