"""Engine and session factory (one AsyncSession per task, expire_on_commit=False), and the
pre-pinged pool's driver-level path for hot statements."""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import Engine, event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool
from sqlalchemy.util import await_

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
# Errors that say the server or the socket is gone even if asyncpg has not closed the
# connection yet (the goodbye is still being read).
_SERVER_GONE = (
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InternalClientError,
)
ACQUIRE_TIMEOUT_S = 30.0  # as SQLAlchemy's pool_timeout
IDLE_S = 300.0  # a driver connection unused this long is closed (the pool shrinks after a burst)
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
    _DRIVER_POOLS[engine.sync_engine] = _DriverPool(
        engine, settings.pool_size + settings.max_overflow
    )
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


class _DriverPool:
    """The plain asyncpg pool beside an engine's SQLAlchemy pool, for `run_on_driver`.

    Checking a connection out of SQLAlchemy's pool and back costs ~100 µs of CPU (two greenlet
    hops, the queue, the fairy, the events); asyncpg's own pool costs about half, a fifth of the
    CPU of a whole `POST /send`. It behaves as the engine's pool does: the same connection
    arguments (from the URL, as SQLAlchemy's dialect reads them), the same size limit
    (`pool_size + max_overflow`), a checkout that gives up after `ACQUIRE_TIMEOUT_S`, and
    connections opened when first needed and closed after `IDLE_S` unused. It skips the reset
    round trip on release: the hot paths leave no session state behind.
    """

    def __init__(self, engine: AsyncEngine, max_size: int) -> None:
        _, kwargs = engine.dialect.create_connect_args(engine.sync_engine.url)
        kwargs.pop("prepared_statement_name_func", None)  # SQLAlchemy's own statement cache
        if (cache_size := kwargs.pop("prepared_statement_cache_size", None)) is not None:
            kwargs["statement_cache_size"] = cache_size  # 0 (for pgbouncer): none in asyncpg
        self.connect_kwargs: dict[str, Any] = dict(kwargs)
        self.max_size = max_size
        self.pool: asyncpg.Pool | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._opening = asyncio.Lock()

    async def get(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # first use, or another event loop (a pool serves one)
            if self.pool is not None:
                _drop(self.pool)
            self.loop, self.pool, self._opening = loop, None, asyncio.Lock()
        if self.pool is None:
            async with self._opening:
                if self.pool is None:
                    self.pool = await asyncpg.create_pool(
                        min_size=0,
                        max_size=self.max_size,
                        init=_json_codecs,
                        reset=_keep_session,
                        max_inactive_connection_lifetime=IDLE_S,
                        **self.connect_kwargs,
                    )
        return self.pool

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        if self.loop is not asyncio.get_running_loop():
            _drop(pool)
            return
        try:
            await asyncio.wait_for(pool.close(), 5)
        except TimeoutError:
            pool.terminate()


def _drop(pool: asyncpg.Pool) -> None:
    """Abort the connections of a pool whose event loop is elsewhere (it cannot be awaited
    here). If that loop is closed already, they close when they are garbage-collected."""
    with contextlib.suppress(RuntimeError):  # "Event loop is closed"
        pool.terminate()


_DRIVER_POOLS: weakref.WeakKeyDictionary[Engine, _DriverPool] = weakref.WeakKeyDictionary()


async def _json_codecs(conn: asyncpg.Connection) -> None:
    """JSON in and out as SQLAlchemy's asyncpg dialect has it: a parameter is a JSON text, a
    result is decoded."""
    await conn.set_type_codec(
        "json", encoder=str.encode, decoder=_decode_json, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )


def _encode_jsonb(text: str) -> bytes:
    return b"\x01" + text.encode()  # jsonb's binary format: a version byte, then the text


def _decode_json(data: bytes) -> Any:
    return json.loads(data)


def _decode_jsonb(data: bytes) -> Any:
    return json.loads(data[1:])


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """No `RESET ALL` round trip on release (an open transaction is still rolled back)."""


def _driver_pool(engine: AsyncEngine) -> _DriverPool:
    """The engine's driver pool (sized by `create_engine`; as SQLAlchemy's pool otherwise)."""
    pools = _DRIVER_POOLS.get(engine.sync_engine)
    if pools is None:
        pool = engine.sync_engine.pool
        size = pool.size() + max(0, pool._max_overflow) if isinstance(pool, QueuePool) else 5
        pools = _DRIVER_POOLS[engine.sync_engine] = _DriverPool(engine, size)
    return pools


async def dispose(engine: AsyncEngine) -> None:
    """Close the engine's pools: its SQLAlchemy pool and the driver pool of `run_on_driver`."""
    try:
        if (pools := _DRIVER_POOLS.pop(engine.sync_engine, None)) is not None:
            await pools.close()
    finally:
        await engine.dispose()


def _gone(conn: asyncpg.Connection, exc: BaseException) -> bool:
    """Whether `exc` under `work` means the connection is lost (not a failure of `work`)."""
    if isinstance(exc, _SERVER_GONE):
        return True
    try:
        closed: bool = conn.is_closed()
        return closed
    except asyncpg.InterfaceError:  # the pool took the connection back as it closed
        return True


async def run_on_driver(
    engine: AsyncEngine, work: Callable[[asyncpg.Connection, bool], Awaitable[T]]
) -> T:
    """Run `work(connection, repeated)` on a pooled asyncpg connection: for a hot path that runs
    its own statements, without SQLAlchemy around them. They run in autocommit (one statement,
    one transaction) unless `work` opens a transaction. The pool is the engine's driver pool
    (`_DriverPool`); `dispose(engine)` closes it.

    No pre-ping round trip, and no less safe: a connection known to be closed is reopened at
    checkout; when the connection is lost under `work` (a restart not noticed yet), every
    connection of the pool is expired (reopened at its next checkout, as after a failed ping)
    and `work` runs once more, with `repeated=True`. So `work` must be safe to repeat after a
    lost connection, when whether its first run committed is unknown.
    """
    pool = await _driver_pool(engine).get()
    for repeated in (False, True):
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            try:
                return await work(conn, repeated)
            except _LOST as exc:
                if repeated or not _gone(conn, exc):
                    raise  # not a lost connection: a bad parameter, a broker error in `work`
        await pool.expire_connections()
    raise AssertionError("unreachable")  # pragma: no cover


def asyncpg_dsn(url: str) -> str:
    """The plain libpq URL asyncpg.connect() takes (for LISTEN connections)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
