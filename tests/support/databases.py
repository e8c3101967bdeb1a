"""Databases of test and benchmark runs: a fresh one migrated to head, emptied, dropped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import asyncpg
from sqlalchemy.engine import make_url

from relaybox.common.db.migrate import upgrade
from relaybox.common.db.models import Base
from relaybox.common.db.session import asyncpg_dsn

TABLES = tuple(table.name for table in reversed(Base.metadata.sorted_tables))
"""Every table of the schema (children first)."""


@contextlib.contextmanager
def migrated_database(admin_url: str, name: str) -> Iterator[str]:
    """A fresh database `name` beside `admin_url`'s, migrated to head; dropped on exit."""
    rendered = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(rendered)
        yield rendered
    finally:
        drop_database(rendered)


async def truncate(url: str, tables: tuple[str, ...] = TABLES) -> None:
    """Empty `tables` (every table by default)."""
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    try:
        await conn.execute(f"TRUNCATE {', '.join(tables)}")
    finally:
        await conn.close()


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
