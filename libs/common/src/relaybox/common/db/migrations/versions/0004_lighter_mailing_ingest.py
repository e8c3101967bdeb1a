"""Less work per ingested recipient: what a million-row upload paid for on every row.

- `mailing_recipients.email_id` is indexed only once it is set. A recipient gets its email id
  when the dispatcher queues it, so at ingest every row carried a NULL into this index: entries
  nobody looks up (lookups are always by a known email id).
- `mailing_recipients.email_key` compares bytewise (`COLLATE "C"`): it is the lower-cased address,
  used only for equality (de-duplication), and the unique index on it was paying for the
  database's linguistic collation on every comparison.
- No foreign key from `mailing_recipients` / `mailing_errors` to `mailings`: its check (a
  `SELECT … FOR KEY SHARE` on the mailing, per inserted row) was about a third of the database's
  work per row. The only writer inserts them in a statement that first takes its mailing
  `FOR KEY SHARE` (once per batch of 10,000 rows: the lock the check took per row) and checks it
  is still parsing; what `ON DELETE CASCADE` did is done by a statement-level trigger on
  `mailings`.

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

EMAIL_ID_INDEX = "ix_mailing_recipients_email_id"
FOREIGN_KEYS = {
    "mailing_recipients": "fk_mailing_recipients_mailing_id_mailings",
    "mailing_errors": "fk_mailing_errors_mailing_id_mailings",
}
CASCADE_FUNCTION = """
CREATE FUNCTION mailings_delete_dependents() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM mailing_recipients r USING deleted d WHERE r.mailing_id = d.id;
    DELETE FROM mailing_errors e USING deleted d WHERE e.mailing_id = d.id;
    RETURN NULL;
END
$$
"""
CASCADE_TRIGGER = """
CREATE TRIGGER mailings_delete_dependents AFTER DELETE ON mailings
REFERENCING OLD TABLE AS deleted
FOR EACH STATEMENT EXECUTE FUNCTION mailings_delete_dependents()
"""


def upgrade() -> None:
    op.drop_index(EMAIL_ID_INDEX, table_name="mailing_recipients")
    op.create_index(
        EMAIL_ID_INDEX,
        "mailing_recipients",
        ["email_id"],
        postgresql_where=sa.text("email_id IS NOT NULL"),
    )
    op.alter_column(
        "mailing_recipients",
        "email_key",
        type_=sa.String(320, collation="C"),
        existing_type=sa.String(320),
        existing_nullable=False,
    )
    for table, name in FOREIGN_KEYS.items():
        op.drop_constraint(name, table, type_="foreignkey")
    op.execute(CASCADE_FUNCTION)
    op.execute(CASCADE_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER mailings_delete_dependents ON mailings")
    op.execute("DROP FUNCTION mailings_delete_dependents()")
    for table, name in FOREIGN_KEYS.items():
        op.create_foreign_key(name, table, "mailings", ["mailing_id"], ["id"], ondelete="CASCADE")
    op.alter_column(
        "mailing_recipients",
        "email_key",
        type_=sa.String(320),
        existing_type=sa.String(320, collation="C"),
        existing_nullable=False,
    )
    op.drop_index(EMAIL_ID_INDEX, table_name="mailing_recipients")
    op.create_index(EMAIL_ID_INDEX, "mailing_recipients", ["email_id"])
