"""Engine and session factory (one AsyncSession per task, expire_on_commit=False), and the
pre-pinged pool's driver-level path for hot statements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import await_, greenlet_spawn

from relaybox.common.settings import DatabaseSettings

_FRESH = "relaybox_fresh"  # a connection record's info key: connected, not yet checked out
# Set while a caller that tests the connection by using it checks one out (no pre-ping).
_UNPINGED: ContextVar[bool] = ContextVar("relaybox_unpinged_checkout", default=False)
# What a lost connection raises: the socket's end, the server's goodbye (57P01 terminated,
# 57P02 crash, 57P03 starting up), a connection asyncpg knows to be closed or is still busy
# closing (InternalClientError: the goodbye arrived unasked and is being handled).
_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
T = TypeVar("T")


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
        # A failed test replaces this and every older pooled connection (InvalidatePoolError).
        driver: asyncpg.Connection = dbapi_connection.driver_connection
        if driver.is_closed():  # the server's goodbye was already read: no round trip needed
            raise InvalidatePoolError("pre-ping: the connection is closed")
        if _UNPINGED.get():
            return  # the caller tests it by using it
        try:
            await_(driver.fetchval(";"))
        except (*_LOST, asyncpg.PostgresError) as exc:
            raise InvalidatePoolError(f"pre-ping failed: {type(exc).__name__}") from exc


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def connection(
    engine: AsyncEngine, *, autocommit: bool = False, pre_ping: bool = True
) -> AsyncIterator[AsyncConnection]:
    """A pooled connection. `autocommit`: each statement is its own transaction (no BEGIN and
    COMMIT round trips; for single statements). `pre_ping=False` saves the pre-ping's round
    trip for callers that ride out a lost connection themselves (they retry); a connection
    already known to be closed is still replaced."""
    token = _UNPINGED.set(not pre_ping)
    try:
        conn = await engine.connect().start()
    finally:
        _UNPINGED.reset(token)
    try:
        if autocommit:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn
    finally:
        await conn.close()


async def run_on_driver(
    engine: AsyncEngine, work: Callable[[asyncpg.Connection, bool], Awaitable[T]]
) -> T:
    """Run `work(connection, repeated)` on a pooled asyncpg connection, tested by using it: for a
    hot path that runs its own statements, without SQLAlchemy's Connection around them. They run
    in autocommit (one statement, one transaction) unless `work` opens a transaction.

    Saves the pre-ping's round trip, not its safety: a connection already known to be closed
    is replaced at checkout (with every older pooled one, as after a failed ping); when the
    connection is lost under `work` (a restart not noticed yet), `work` runs once more, with
    `repeated=True`, on a connection checked out with the pre-ping. So `work` must be safe to
    repeat after a lost connection, when whether its first run committed is unknown.
    """
    for repeated in (False, True):
        token = _UNPINGED.set(not repeated)
        try:
            pooled = await engine.raw_connection()
        finally:
            _UNPINGED.reset(token)
        lost = False
        try:
            return await work(pooled.driver_connection, repeated)
        except _LOST:
            lost = True
            if repeated:
                raise
        finally:
            await _release(pooled, lost=lost)
    raise AssertionError("unreachable")  # pragma: no cover


async def _release(pooled: PoolProxiedConnection, *, lost: bool = False) -> None:
    """Back to the pool; a lost connection is discarded instead."""
    driver = pooled.driver_connection
    if lost or (driver is not None and driver.is_closed()):
        await greenlet_spawn(pooled.invalidate)
    await greenlet_spawn(pooled.close)


def asyncpg_dsn(url: str) -> str:
    """The plain libpq URL asyncpg.connect() takes (for LISTEN connections)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
