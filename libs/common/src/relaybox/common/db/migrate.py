"""Alembic migrations run from code: create the database if missing, then upgrade to head."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from relaybox.common.db.session import asyncpg_dsn
from relaybox.common.errors import RelayboxError

MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseUnreachableError(RelayboxError):
    """PostgreSQL could not be reached at the configured URL."""


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations and the given database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def create_database_if_missing(url: str) -> bool:
    """Create the database named in the URL; True if it was created."""
    parsed = make_url(url)
    name = parsed.database
    if not name:
        raise RelayboxError("the database URL names no database")
    admin = asyncpg_dsn(parsed.set(database="postgres").render_as_string(hide_password=False))
    try:
        conn = await asyncpg.connect(admin, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        where = parsed.render_as_string(hide_password=True)
        raise DatabaseUnreachableError(f"cannot connect to PostgreSQL at {where}: {exc}") from exc
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        await conn.execute(f'CREATE DATABASE "{name}"')
        return True
    finally:
        await conn.close()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database schema to `revision` (blocking; run it outside an event loop)."""
    asyncio.run(create_database_if_missing(url))
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Step the schema back to `revision`."""
    command.downgrade(alembic_config(url), revision)
