"""The realtime stream: event rows with their transaction ids, single-use stream tickets, socket
presence, and the events' retention horizon.

- `chat_events`: every change a connected client must see (a post, a membership change, a read
  watermark, a copy's status move), written in the transaction that makes the change. `xid` is
  that transaction's id (`pg_current_xact_id()`, as bigint): a resume serves events in
  `(xid, id)` order and checkpoints only below the oldest running transaction, so an event that
  commits late is never skipped (docs/messenger/stream.md).
- `chat_event_readers`: who may see each event, one row per user, keyed (tenant, user, xid, id):
  a resume reads exactly its user's events in stream order, never the tenant's.
- `outbox.xid`: set on the rows that carry events to the realtime replicas, so a replica can
  tell which events' transactions are all published (the checkpoint's second bound).
- `chat_stream_tickets`: the ids of used tickets (a ticket is accepted once).
- `chat_presence`: one row per live socket of a registered device; the consumer does not push
  to a device with a fresh row.
- `chat_stream_state`: one row, the highest `xid` the sweeper deleted events below; a cursor
  older than it gets `resync`.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")
CURRENT_XID = sa.text("(pg_current_xact_id()::text)::bigint")


def upgrade() -> None:
    op.add_column("outbox", sa.Column("xid", sa.BigInteger))
    op.create_index("ix_outbox_xid", "outbox", ["xid"], postgresql_where=sa.text("xid IS NOT NULL"))
    op.create_table(
        "chat_events",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("xid", sa.BigInteger, nullable=False, server_default=CURRENT_XID),
        sa.Column("tenant_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("conversation_id", UUID),
        sa.Column("message_id", UUID),
        sa.Column("audience", ARRAY(sa.String(255))),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "(audience IS NULL) = (kind = 'message.created')", name="audience_or_copies"
        ),
    )
    op.create_index("ix_chat_events_tenant_id_xid_id", "chat_events", ["tenant_id", "xid", "id"])
    op.create_index("ix_chat_events_created_at", "chat_events", ["created_at"])
    op.create_table(
        "chat_event_readers",
        sa.Column("tenant_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("xid", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "user_id", "xid", "event_id"),
    )
    op.create_index("ix_chat_event_readers_event_id", "chat_event_readers", ["event_id"])
    op.create_table(
        "chat_stream_tickets",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_chat_stream_tickets_expires_at", "chat_stream_tickets", ["expires_at"])
    op.create_table(
        "chat_presence",
        sa.Column("connection_id", UUID, primary_key=True),
        sa.Column("device_id", UUID, nullable=False),
        sa.Column("tenant_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("replica", sa.String(255), nullable=False),
        sa.Column("connected_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )
    op.create_index("ix_chat_presence_device_id", "chat_presence", ["device_id"])
    op.create_index("ix_chat_presence_replica", "chat_presence", ["replica"])
    op.create_table(
        "chat_stream_state",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("swept_xid", sa.BigInteger, nullable=False, server_default="0"),
        sa.CheckConstraint("id = 1", name="one_row"),
    )
    op.execute("INSERT INTO chat_stream_state (id) VALUES (1)")


def downgrade() -> None:
    op.drop_table("chat_stream_state")
    op.drop_table("chat_presence")
    op.drop_table("chat_stream_tickets")
    op.drop_table("chat_event_readers")
    op.drop_table("chat_events")
    op.drop_index("ix_outbox_xid", table_name="outbox")
    op.drop_column("outbox", "xid")
