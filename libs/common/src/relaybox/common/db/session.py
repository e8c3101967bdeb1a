"""Engine and session factory: one AsyncSession per task, expire_on_commit=False."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_

from relaybox.common.settings import DatabaseSettings

_FRESH = "relaybox_fresh"  # a connection record's info key: connected, not yet checked out


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An asyncpg engine sized from the settings.

    `pool_pre_ping` tests a pooled connection on checkout (a PostgreSQL restart then costs no
    request). It is done here with one round trip: SQLAlchemy's own asyncpg ping wraps the
    probe in BEGIN ... ROLLBACK (for pgbouncer's transaction mode), three round trips.
    """
    engine = create_async_engine(
        settings.url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        echo=settings.echo,
    )
    if settings.pool_pre_ping:
        _ping_on_checkout(engine)
    return engine


def _ping_on_checkout(engine: AsyncEngine) -> None:
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "connect")
    def _mark_fresh(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_FRESH] = True

    @event.listens_for(pool, "checkout")
    def _ping(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        if record.info.pop(_FRESH, False):
            return  # just connected: nothing to test
        try:
            await_(dbapi_connection.driver_connection.fetchval(";"))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Like a failed pre-ping: this and every older pooled connection are replaced.
            raise InvalidatePoolError(f"pre-ping failed: {type(exc).__name__}") from exc


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection's asyncpg connection, for a hot path that runs its own statements.

    Statements run in autocommit (one statement, one transaction) unless the caller opens a
    transaction itself; the connection goes back to the pool (pre-pinged) afterwards.
    """
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection
        yield driver


def asyncpg_dsn(url: str) -> str:
    """The plain libpq URL asyncpg.connect() takes (for LISTEN connections)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
