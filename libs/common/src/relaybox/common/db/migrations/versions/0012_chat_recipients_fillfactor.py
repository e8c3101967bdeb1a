"""`chat_recipients` pages are filled to 60% (`fillfactor`), so a copy's status changes are HOT
updates.

A copy is inserted PENDING and updated up to three times in its first seconds (SENT, DELIVERED,
READ). With full pages (the default fillfactor, 100) the new version of a row rarely fits on its
page, so each update also inserts into both of the table's indexes. None of the updated columns
is indexed, so with room left on the page PostgreSQL writes the new version beside the old one
and leaves the indexes alone (a heap-only tuple, HOT), pruning the old versions when it next
visits the page.

`python -m bench.chat_copies` (a message's 99 copies inserted, then moved to SENT, DELIVERED and
READ, one statement each, against the same table at fillfactor 100, alternating in one process)
on the development VM: 86% of the updates HOT against 20%, PostgreSQL's CPU per message 0.55-0.56x
(2.9-3.0 against 5.2-5.4 ms), and the table with its indexes 0.75x the size.

The setting applies to pages written from now on; `VACUUM FULL chat_recipients` (or
pg_repack) rewrites the existing ones, which is optional.

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE chat_recipients SET (fillfactor = 60)")


def downgrade() -> None:
    op.execute("ALTER TABLE chat_recipients RESET (fillfactor)")
