"""Bulk mailings: mailings, their stored file chunks, recipients and invalid rows.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
STATUSES = "status IN ('PARSING', 'RUNNING', 'PAUSED', 'COMPLETED', 'CANCELLED', 'FAILED')"


def upgrade() -> None:
    op.create_table(
        "mailings",
        sa.Column("id", postgresql.UUID(), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), server_default="PARSING", nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("body_template", sa.Text(), nullable=False),
        sa.Column("file_name", sa.String(255), nullable=True),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("file_bytes", sa.BigInteger(), nullable=False),
        sa.Column("rows_total", sa.Integer(), server_default="0", nullable=False),
        sa.Column("valid_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("invalid_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("duplicate_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("parsed_chunks", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_mailings"),
        sa.CheckConstraint(STATUSES, name=op.f("ck_mailings_status_known")),
    )
    op.create_index(
        "ix_mailings_client_id_file_sha256_created_at",
        "mailings",
        ["client_id", "file_sha256", "created_at"],
    )
    op.create_index("ix_mailings_status_id", "mailings", ["status", "id"])
    op.create_table(
        "mailing_chunks",
        sa.Column("mailing_id", postgresql.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("mailing_id", "seq", name="pk_mailing_chunks"),
        sa.ForeignKeyConstraint(
            ["mailing_id"],
            ["mailings.id"],
            name="fk_mailing_chunks_mailing_id_mailings",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "mailing_recipients",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("mailing_id", postgresql.UUID(), nullable=False),
        sa.Column("row_number", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_key", sa.String(320), nullable=False),
        sa.Column("status", sa.String(16), server_default="PENDING", nullable=False),
        sa.Column("email_id", postgresql.UUID(), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=True),
        sa.Column("dispatched_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_mailing_recipients"),
        sa.ForeignKeyConstraint(
            ["mailing_id"],
            ["mailings.id"],
            name="fk_mailing_recipients_mailing_id_mailings",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "mailing_id", "email_key", name="uq_mailing_recipients_mailing_id_email_key"
        ),
        sa.CheckConstraint(
            "status IN ('PENDING', 'QUEUED', 'CANCELLED')",
            name=op.f("ck_mailing_recipients_status_known"),
        ),
    )
    op.create_index(
        "ix_mailing_recipients_mailing_id_status_id",
        "mailing_recipients",
        ["mailing_id", "status", "id"],
    )
    op.create_index("ix_mailing_recipients_email_id", "mailing_recipients", ["email_id"])
    op.create_table(
        "mailing_errors",
        sa.Column("mailing_id", postgresql.UUID(), nullable=False),
        sa.Column("row_number", sa.Integer(), nullable=False),
        sa.Column("raw_value", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("mailing_id", "row_number", name="pk_mailing_errors"),
        sa.ForeignKeyConstraint(
            ["mailing_id"],
            ["mailings.id"],
            name="fk_mailing_errors_mailing_id_mailings",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("mailing_errors")
    op.drop_index("ix_mailing_recipients_email_id", table_name="mailing_recipients")
    op.drop_index("ix_mailing_recipients_mailing_id_status_id", table_name="mailing_recipients")
    op.drop_table("mailing_recipients")
    op.drop_table("mailing_chunks")
    op.drop_index("ix_mailings_status_id", table_name="mailings")
    op.drop_index("ix_mailings_client_id_file_sha256_created_at", table_name="mailings")
    op.drop_table("mailings")
