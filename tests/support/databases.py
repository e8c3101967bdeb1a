"""Create-and-drop helpers for the per-run test databases."""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy.engine import make_url

from relaybox.common.db.session import asyncpg_dsn


def drop_database(url: str) -> None:
    """Drop the database a URL names (connected sessions are terminated)."""
    asyncio.run(drop_database_async(url))


async def drop_database_async(url: str) -> None:
    """`drop_database` inside a running event loop."""
    parsed = make_url(url)
    admin = asyncpg_dsn(parsed.set(database="postgres").render_as_string(hide_password=False))
    conn = await asyncpg.connect(admin, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
    finally:
        await conn.close()
