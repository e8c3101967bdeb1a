"""`run_on_driver`: the hot paths' asyncpg pool beside the engine's SQLAlchemy pool."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

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
