"""The migrations and the models agree, and the migrations go down and up cleanly."""

from __future__ import annotations

import uuid
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.migrate import downgrade, upgrade
from relaybox.common.db.models import Base
from tests.support.databases import drop_database


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_server_default": False})
    return list(compare_metadata(context, Base.metadata))


async def test_models_match_the_migrated_schema(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


def test_migrations_downgrade_and_upgrade(database_url: str) -> None:
    scratch = make_url(database_url).set(database=f"relaybox_mig_{uuid.uuid4().hex[:8]}")
    url = scratch.render_as_string(hide_password=False)
    try:
        upgrade(url)
        downgrade(url, "base")
        upgrade(url)
    finally:
        drop_database(url)


async def test_deleting_a_mailing_deletes_its_recipients_and_errors(engine: AsyncEngine) -> None:
    """What ON DELETE CASCADE did before migration 0004 dropped the per-row foreign keys."""
    kept, deleted = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        for mailing_id in (kept, deleted):
            await conn.execute(
                text(
                    "INSERT INTO mailings (id, tenant_id, subject, body_template, file_sha256,"
                    " file_bytes) VALUES (:id, 'c', 's', 'b', repeat('0', 64), 1)"
                ),
                {"id": mailing_id},
            )
            await conn.execute(
                text(
                    "INSERT INTO mailing_recipients (mailing_id, row_number, email, email_key)"
                    " VALUES (:id, 2, 'A@x.example', 'a@x.example')"
                ),
                {"id": mailing_id},
            )
            await conn.execute(
                text(
                    "INSERT INTO mailing_errors (mailing_id, row_number, raw_value, reason)"
                    " VALUES (:id, 3, 'nope', 'not an address')"
                ),
                {"id": mailing_id},
            )
        await conn.execute(text("DELETE FROM mailings WHERE id = :id"), {"id": deleted})
        left = {
            table: set((await conn.execute(text(f"SELECT mailing_id FROM {table}"))).scalars())
            for table in ("mailing_recipients", "mailing_errors")
        }
    assert left == {"mailing_recipients": {kept}, "mailing_errors": {kept}}


async def test_deleting_a_message_or_its_conversation_deletes_its_copies(
    engine: AsyncEngine,
) -> None:
    """What ON DELETE CASCADE did before migration 0013 dropped the copies' foreign key."""
    conversations = [uuid.uuid4(), uuid.uuid4()]
    messages = {conversation: [uuid.uuid4(), uuid.uuid4()] for conversation in conversations}
    async with engine.begin() as conn:
        for conversation, ids in messages.items():
            await conn.execute(
                text(
                    "INSERT INTO chat_conversations (id, tenant_id, kind, title, created_by)"
                    " VALUES (:c, 't', 'group', 'g', 'ann')"
                ),
                {"c": conversation},
            )
            for seq, message in enumerate(ids, start=1):
                await conn.execute(
                    text(
                        "WITH m AS (INSERT INTO chat_messages (id, conversation_id, tenant_id,"
                        " seq, sender_id, text) VALUES (:m, :c, 't', :s, 'ann', 'hi')"
                        " RETURNING id, seq)"
                        " INSERT INTO chat_recipients (message_id, user_id, conversation_id, seq)"
                        " SELECT m.id, u, :c, m.seq FROM m, unnest(ARRAY['bob', 'cy']) u"
                    ),
                    {"m": message, "c": conversation, "s": seq},
                )
        (kept, gone), (_, _) = messages[conversations[0]], messages[conversations[1]]
        await conn.execute(text("DELETE FROM chat_messages WHERE id = :m"), {"m": gone})
        await conn.execute(
            text("DELETE FROM chat_conversations WHERE id = :c"), {"c": conversations[1]}
        )
        left = (
            await conn.execute(text("SELECT DISTINCT message_id FROM chat_recipients"))
        ).scalars()
    assert set(left) == {kept}
