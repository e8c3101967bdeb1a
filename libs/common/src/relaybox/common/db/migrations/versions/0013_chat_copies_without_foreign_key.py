"""No foreign key from `chat_recipients` (a message's copies) to `chat_messages`.

The key's check runs once per inserted row: a post to a group of 100 ran 99 of them (a
`SELECT … FOR KEY SHARE` of the message it had just inserted, each), for copies that the same
statement inserts from that message. `python -m bench.chat_copies` (a message and its 99 copies
in one statement, into the table as it is and into the same with the key, alternating, on the
development VM): PostgreSQL's CPU 1.24-1.43 ms without the key against 1.98-2.11 ms with it
(`key_ratio` 0.62-0.68).

The copies' only writer is the chat post, which inserts them in the statement that inserts their
message, so a copy never names a missing message. What `ON DELETE CASCADE` did (a message's
copies go with it, as when its conversation is deleted) is done by a statement-level trigger on
`chat_messages`, as migration 0004 did for a mailing's recipients.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEY = "fk_chat_recipients_message_id_chat_messages"
CASCADE_FUNCTION = """
CREATE FUNCTION chat_messages_delete_copies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM chat_recipients r USING deleted d WHERE r.message_id = d.id;
    RETURN NULL;
END
$$
"""
CASCADE_TRIGGER = """
CREATE TRIGGER chat_messages_delete_copies AFTER DELETE ON chat_messages
REFERENCING OLD TABLE AS deleted
FOR EACH STATEMENT EXECUTE FUNCTION chat_messages_delete_copies()
"""


def upgrade() -> None:
    op.drop_constraint(FOREIGN_KEY, "chat_recipients", type_="foreignkey")
    op.execute(CASCADE_FUNCTION)
    op.execute(CASCADE_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER chat_messages_delete_copies ON chat_messages")
    op.execute("DROP FUNCTION chat_messages_delete_copies()")
    op.execute(
        "DELETE FROM chat_recipients r WHERE NOT EXISTS "
        "(SELECT FROM chat_messages m WHERE m.id = r.message_id)"
    )
    op.create_foreign_key(
        FOREIGN_KEY, "chat_recipients", "chat_messages", ["message_id"], ["id"], ondelete="CASCADE"
    )
