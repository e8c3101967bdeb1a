"""`run_on_driver`: the hot paths' asyncpg pool beside the engine's SQLAlchemy pool."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db import session
from relaybox.common.db.session import create_engine, dispose, run_on_driver
from relaybox.common.settings import DatabaseSettings


async def _terminate(engine: AsyncEngine, pid: int) -> None:
    async with engine.connect() as other:
        await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


async def test_work_runs_once_more_on_a_fresh_connection_after_losing_one(
    engine: AsyncEngine,
) -> None:
    runs: list[tuple[int, bool]] = []

    async def work(conn: asyncpg.Connection, repeated: bool) -> int:
        runs.append((conn.get_server_pid(), repeated))
        if not repeated:
            await _terminate(engine, conn.get_server_pid())  # what a restart does to it
        value: int = await conn.fetchval("SELECT 1")
        return value

    assert await run_on_driver(engine, work) == 1
    assert [repeated for _, repeated in runs] == [False, True]
    assert runs[0][0] != runs[1][0]


LOST = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


async def test_a_second_loss_is_raised(engine: AsyncEngine) -> None:
    runs: list[bool] = []

    async def work(conn: asyncpg.Connection, repeated: bool) -> None:
        runs.append(repeated)
        await _terminate(engine, conn.get_server_pid())
        await conn.fetchval("SELECT 1")

    with pytest.raises(LOST):  # which one depends on when the server's goodbye is read
        await run_on_driver(engine, work)
    assert runs == [False, True]


async def test_every_pooled_connection_is_replaced_after_a_loss(engine: AsyncEngine) -> None:
    """After a restart every pooled connection is dead: the repeat must not pick another one."""

    async def pid(conn: asyncpg.Connection, _repeated: bool) -> int:
        value: int = await conn.fetchval("SELECT pg_backend_pid()")
        return value

    async def hold_two(conn: asyncpg.Connection, _repeated: bool) -> list[int]:
        return [await pid(conn, False), await run_on_driver(engine, pid)]  # two in the pool

    pooled = await run_on_driver(engine, hold_two)
    async with engine.connect() as other:
        await other.execute(
            text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS int[])) AS pid"),
            {"pids": pooled},
        )
    assert await run_on_driver(engine, pid) not in pooled


async def test_json_comes_back_decoded_and_goes_in_as_text(engine: AsyncEngine) -> None:
    async def roundtrip(conn: asyncpg.Connection, _repeated: bool) -> tuple[object, object]:
        row = await conn.fetchrow(
            "SELECT $1::jsonb AS b, $1::json AS j", '{"id": "x", "n": [1, 2.5, null]}'
        )
        assert row is not None
        return row["b"], row["j"]

    expected = {"id": "x", "n": [1, 2.5, None]}
    assert await run_on_driver(engine, roundtrip) == (expected, expected)


async def test_dispose_closes_the_driver_pool(
    engine: AsyncEngine, db_settings: DatabaseSettings
) -> None:
    own = create_engine(db_settings)
    backend = await run_on_driver(own, lambda conn, _: conn.fetchval("SELECT pg_backend_pid()"))
    await dispose(own)
    for _ in range(100):  # the backend exits once it has read the Terminate message
        async with engine.connect() as conn:
            alive = await conn.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": backend}
            )
        if not alive:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"backend {backend} still connected after dispose()")


async def test_url_options_reach_the_driver_as_sqlalchemy_reads_them(
    db_settings: DatabaseSettings,
) -> None:
    """`?ssl=…` and `prepared_statement_cache_size=0` (pgbouncer) are connection arguments,
    not server settings: the hot paths must connect wherever the ORM does."""
    url = f"{db_settings.url}?ssl=disable&prepared_statement_cache_size=0"
    own = create_engine(db_settings.model_copy(update={"url": url}))
    try:

        async def probe(conn: asyncpg.Connection, _repeated: bool) -> int:
            await conn.fetchval("SELECT 1")
            assert conn._stmt_cache.get_max_size() == 0  # no prepared statements
            value: int = await conn.fetchval("SELECT 2")
            return value

        assert await run_on_driver(own, probe) == 2
    finally:
        await dispose(own)


async def test_an_error_of_the_work_itself_is_raised_at_once(engine: AsyncEngine) -> None:
    runs: list[bool] = []

    async def work(conn: asyncpg.Connection, repeated: bool) -> int:
        runs.append(repeated)
        pid: int = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.fetchval("SELECT $1::int", "not a number")  # a bad parameter (DataError)
        return pid

    with pytest.raises(asyncpg.DataError):
        await run_on_driver(engine, work)
    assert runs == [False]  # not taken for a lost connection: no repeat, the pool kept


async def test_a_checkout_gives_up_when_the_pool_stays_exhausted(
    db_settings: DatabaseSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "ACQUIRE_TIMEOUT_S", 0.2)
    own = create_engine(db_settings.model_copy(update={"pool_size": 1, "max_overflow": 0}))
    try:

        async def nested(_conn: asyncpg.Connection, _repeated: bool) -> None:
            await run_on_driver(own, lambda c, _: c.fetchval("SELECT 1"))  # needs a 2nd one

        with pytest.raises(TimeoutError):
            await run_on_driver(own, nested)
    finally:
        await dispose(own)


def test_each_event_loop_gets_a_pool_of_its_own(db_settings: DatabaseSettings) -> None:
    """An asyncpg pool serves the loop it was made on: the same engine used on another loop
    (scripts, tests) gets a new pool, and the old one's connections are aborted."""
    own = create_engine(db_settings)

    async def pid() -> int:
        value: int = await run_on_driver(own, lambda c, _: c.fetchval("SELECT pg_backend_pid()"))
        return value

    async def pid_then_dispose() -> int:
        try:
            return await pid()  # drops the earlier loop's pool
        finally:
            await dispose(own)

    earlier = asyncio.new_event_loop()
    try:
        first = earlier.run_until_complete(pid())
        second = asyncio.run(pid_then_dispose())
        earlier.run_until_complete(asyncio.sleep(0.05))  # which closes its aborted sockets
        assert first != second
    finally:
        earlier.close()
