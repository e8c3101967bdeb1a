"""The migrations and the models agree, and the migrations go down and up cleanly."""

from __future__ import annotations

import uuid
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
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
