"""A resume finds a user's `message.created` events through their membership intervals, not
through one `chat_event_readers` row per recipient.

Before, a post to a group of N wrote N `chat_event_readers` rows (the sender and the copies'
recipients) besides its event, and the sweeper deleted them a week later: for a 100-member group,
~1 ms of PostgreSQL's CPU per post to write them (100 rows and their two indexes), as much again
to sweep them, and for a 1,000-member channel ten times that. The same readers are already
written down twice: in the copies (`chat_recipients`) and in the membership intervals, whose rule
(`relaybox.common.chat.visibility`: a member sees `joined_seq < seq <= left_seq`) is exactly
who got a copy, since a post takes the conversation's lock that joins, leaves and kicks take.

Now a `message.created` event carries its message's `seq`, and a resume reads, per membership
interval of the user, that conversation's `message.created` events in stream order:
- `ix_chat_events_conversation_stream (conversation_id, xid, id)` for a current interval (every
  event from the cursor on is theirs but those before the join);
- `ix_chat_events_conversation_seq (conversation_id, seq)` for an ended one, bounded by the
  interval, so a busy conversation left long ago costs nothing.
Both are partial (`kind = 'message.created'`) and cover what the replay filters on (`INCLUDE`),
so a page is an index-only scan that stops at the page's size, as the readers rows' primary key
was. The other kinds keep their readers rows: their audiences are a handful of users, not a
conversation.

Upgrade: each `message.created` event gets its message's `seq` (0 if the message is gone, which
no interval shows: its copies went with it), and its readers rows are deleted.
Downgrade writes them back from the same rule.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE_CREATED = sa.text("kind = 'message.created'")


def upgrade() -> None:
    op.add_column("chat_events", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.execute(
        """
        UPDATE chat_events e
        SET seq = coalesce((SELECT m.seq FROM chat_messages m WHERE m.id = e.message_id), 0)
        WHERE e.kind = 'message.created'
        """
    )
    op.create_check_constraint(
        "seq_of_message", "chat_events", "(seq IS NOT NULL) = (kind = 'message.created')"
    )
    op.execute(
        """
        DELETE FROM chat_event_readers r USING chat_events e
        WHERE e.id = r.event_id AND e.kind = 'message.created'
        """
    )
    op.create_index(
        "ix_chat_events_conversation_stream",
        "chat_events",
        ["conversation_id", "xid", "id"],
        postgresql_include=["seq"],
        postgresql_where=MESSAGE_CREATED,
    )
    op.create_index(
        "ix_chat_events_conversation_seq",
        "chat_events",
        ["conversation_id", "seq"],
        postgresql_include=["xid", "id"],
        postgresql_where=MESSAGE_CREATED,
    )


def downgrade() -> None:
    op.execute(
        """
        INSERT INTO chat_event_readers (tenant_id, user_id, xid, event_id)
        SELECT e.tenant_id, m.user_id, e.xid, e.id
        FROM chat_events e
        JOIN chat_members m ON m.conversation_id = e.conversation_id
         AND m.joined_seq < e.seq AND (m.left_seq IS NULL OR e.seq <= m.left_seq)
        WHERE e.kind = 'message.created'
        ON CONFLICT DO NOTHING
        """
    )
    op.drop_index("ix_chat_events_conversation_seq", table_name="chat_events")
    op.drop_index("ix_chat_events_conversation_stream", table_name="chat_events")
    op.drop_constraint("seq_of_message", "chat_events", type_="check")
    op.drop_column("chat_events", "seq")
