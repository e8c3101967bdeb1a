"""Run the publisher and consumer in-process against the test servers, and wait on outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.consumer.providers.smtp import SmtpSettings
from relaybox.consumer.runner import create_consumer
from relaybox.consumer.settings import ConsumerSettings
from relaybox.consumer.worker import Worker
from relaybox.publisher.relay import Relay
from relaybox.publisher.settings import PublisherSettings


def publisher_settings(
    db: DatabaseSettings, broker: BrokerSettings, **extra: Any
) -> PublisherSettings:
    return PublisherSettings(database=db, broker=broker, poll_interval_s=0.2, **extra)


def consumer_settings(
    db: DatabaseSettings, broker: BrokerSettings, smtp_port: int, **extra: Any
) -> ConsumerSettings:
    extra.setdefault("lease_s", 5.0)
    return ConsumerSettings(
        database=db,
        broker=broker,
        smtp=SmtpSettings(host="127.0.0.1", port=smtp_port, timeout_s=5),
        **extra,
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, interval: float = 0.05
) -> None:
    """Poll `check` until it is true; fail with the last state after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


async def email_row(engine: AsyncEngine, email_id: str) -> dict[str, Any]:
    """One `emails` row, every column."""
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT * FROM emails WHERE id = :id"), {"id": email_id})
        return dict(result.mappings().one())


async def dead_letters(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every filed dead letter, the first seen first."""
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT * FROM dead_letters ORDER BY first_seen_at, id"))
        return [dict(r) for r in rows.mappings()]


async def filed(engine: AsyncEngine, count: int) -> list[dict[str, Any]]:
    """The dead letters, once `count` are filed (the consumer drains the DLQs)."""

    async def enough() -> bool:
        return len(await dead_letters(engine)) >= count

    await eventually(enough)
    return await dead_letters(engine)


async def statuses(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id::text, status FROM emails"))
        return {r[0]: r[1] for r in rows}


async def wait_final(engine: AsyncEngine, count: int, *, timeout: float = 30.0) -> dict[str, str]:
    """Wait until `count` emails exist and none is PENDING/SENDING; their statuses."""

    async def done() -> bool:
        found = await statuses(engine)
        return len(found) >= count and all(s in ("SENT", "FAILED") for s in found.values())

    await eventually(done, timeout=timeout)
    return await statuses(engine)


@dataclass
class Pipeline:
    """A publisher replica and a consumer replica running as tasks in the test's loop."""

    relay: Relay
    worker: Worker
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_pipeline(
    engine: AsyncEngine,
    topology: Topology,
    pub: PublisherSettings,
    con: ConsumerSettings,
) -> AsyncIterator[Pipeline]:
    """Publisher + consumer, the consumer built by the consumer's own factory (its sweeper and
    mailing dispatcher are not run: tests drive them)."""
    relay = Relay(pub, engine=engine)
    await relay.start(connect_attempts=3)
    consumer = create_consumer(con, engine=engine)
    assert consumer.worker.topology == topology
    worker = consumer.worker
    await worker.start(connect_attempts=3)
    pipeline = Pipeline(relay, worker, [asyncio.create_task(relay.run())])
    try:
        yield pipeline
    finally:
        relay.stop()
        await asyncio.gather(*pipeline.tasks)
        await worker.close()
        await relay.close()
        for provider in consumer.providers:
            await provider.close()
