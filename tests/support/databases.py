"""Create-and-drop helpers for the per-run test databases."""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy.engine import make_url

from relaybox.common.db.session import asyncpg_dsn


def drop_database(url: str) -> None:
    """Drop the database a URL names (connected sessions are terminated)."""
    parsed = make_url(url)
    admin = asyncpg_dsn(parsed.set(database="postgres").render_as_string(hide_password=False))

    async def drop() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())
