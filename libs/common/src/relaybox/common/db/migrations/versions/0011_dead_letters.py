"""The dead-letter office: every message that died, drained from the `*.dlq` queues.

- `dead_letters`: one row per dead message, keyed by its route and a fingerprint of its payload
  (so the same message dying again counts up instead of adding a row). It keeps the payload
  (secrets removed), the headers, the last error and the attempts, first and last seen, and
  what an operator did with it: `open`, `replayed` (its row put back and a new outbox row
  written) or `discarded`. `last_message_id` is the AMQP message id of the last death: a
  redelivery of the same death (the drain crashed before its ack) does not count again.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("route", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("row_id", sa.String(255)),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("last_error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("count", sa.Integer, nullable=False, server_default="1"),
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),
        sa.Column("last_message_id", sa.String(255)),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("replayed_at", sa.DateTime(timezone=True)),
        sa.Column("discarded_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("route", "fingerprint"),
        sa.CheckConstraint("status IN ('open', 'replayed', 'discarded')", name="status_known"),
    )
    op.create_index("ix_dead_letters_last_seen_at_id", "dead_letters", ["last_seen_at", "id"])
    op.create_index("ix_dead_letters_status_route", "dead_letters", ["status", "route"])


def downgrade() -> None:
    op.drop_table("dead_letters")
