"""The publisher's batch beneath aio-pika (`relaybox.publisher.confirms`): one write per batch,
and every message's own verdict: confirmed rows are deleted, a returned (unroutable) or refused
row stays, postponed with its reason, and the messages carry what aio-pika's publish gave them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aiormq.exceptions import AMQPError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.messaging.topology import EMAIL_SEND, Topology
from relaybox.common.outbox import EVENTS, enqueue
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.publisher.relay import Relay
from tests.support.broker import drain_queue
from tests.support.pipeline import eventually, publisher_settings

HEADERS = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


@pytest.fixture
async def relay(
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
) -> AsyncIterator[Relay]:
    started = Relay(publisher_settings(db_settings, broker_settings), engine)
    await started.start(connect_attempts=3)
    yield started
    await started.close()


async def add(engine: AsyncEngine, routing_key: str = EMAIL_SEND, **extra: Any) -> uuid.UUID:
    async with engine.begin() as conn:
        return await enqueue(
            conn, routing_key=routing_key, payload={"id": str(uuid.uuid4())}, **extra
        )


async def outbox(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT message_id, publish_attempts, last_error, available_at > now() AS later"
                " FROM outbox ORDER BY id"
            )
        )
        return list(result)


async def test_a_batch_is_published_in_order_with_the_properties_of_a_publish(
    relay: Relay, engine: AsyncEngine, topology: Topology, broker_settings: BrokerSettings
) -> None:
    ids = [await add(engine, headers={**HEADERS, "x-correlation-id": f"c{i}"}) for i in range(5)]
    assert await relay.drain() == 5
    assert await outbox(engine) == []  # confirmed, so deleted
    taken = await drain_queue(broker_settings.url, topology.queue(EMAIL_SEND))
    assert [m.message_id for m in taken] == [str(i) for i in ids]  # in outbox order
    first = taken[0]
    assert first.content_type == "application/json"
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert {k: v for k, v in first.headers.items() if k != "x-delivery-count"} == {
        **HEADERS,
        "x-correlation-id": "c0",
    }
    assert first.timestamp is not None
    assert abs((datetime.now(UTC) - first.timestamp).total_seconds()) < 60
    assert first.routing_key == EMAIL_SEND
    assert set(json.loads(first.body)) == {"id"}
    assert b" " not in first.body  # compact JSON, as before


async def test_an_unroutable_row_is_postponed_and_the_rest_of_its_batch_goes(
    relay: Relay, engine: AsyncEngine, topology: Topology, broker_settings: BrokerSettings
) -> None:
    before = await add(engine)
    nowhere = await add(engine, routing_key="nobody.listens")  # mandatory: returned
    after = await add(engine)
    assert await relay.drain() == 3
    left = await outbox(engine)
    assert [(r.message_id, r.publish_attempts, r.later) for r in left] == [(nowhere, 1, True)]
    assert "unroutable" in left[0].last_error
    taken = await drain_queue(broker_settings.url, topology.queue(EMAIL_SEND))
    assert [m.message_id for m in taken] == [str(before), str(after)]


async def test_an_unknown_destination_is_postponed_with_its_reason(
    relay: Relay, engine: AsyncEngine
) -> None:
    await add(engine, destination="retry.123456789")  # no such tier
    ok = await add(engine)
    assert await relay.drain() == 2
    left = await outbox(engine)
    assert len(left) == 1
    assert "unknown destination" in left[0].last_error
    assert left[0].message_id != ok


async def test_a_live_event_nobody_listens_to_is_confirmed_not_kept(
    relay: Relay, engine: AsyncEngine
) -> None:
    await add(engine, routing_key="chat.nobody", destination=EVENTS)
    assert await relay.drain() == 1
    assert await outbox(engine) == []  # not mandatory: unroutable is fine, and it is gone


async def test_a_body_larger_than_a_frame_arrives_whole(
    relay: Relay, engine: AsyncEngine, topology: Topology, broker_settings: BrokerSettings
) -> None:
    big = "x" * 300_000  # frame_max is 128 KiB by default: three body frames
    async with engine.begin() as conn:
        await enqueue(conn, routing_key=EMAIL_SEND, payload={"id": "big", "text": big})
    await add(engine)
    assert await relay.drain() == 2
    taken = await drain_queue(broker_settings.url, topology.queue(EMAIL_SEND))
    assert json.loads(taken[0].body) == {"id": "big", "text": big}
    assert len(taken) == 2


async def test_a_batch_without_confirms_in_time_keeps_its_rows(
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
) -> None:
    """No verdict within publish_timeout_s: the batch fails and rolls back (rows stay, to be
    published again: at least once)."""
    relay = Relay(publisher_settings(db_settings, broker_settings, publish_timeout_s=0.001))
    await relay.start(connect_attempts=3)
    try:
        for _ in range(50):
            await add(engine)
        with pytest.raises(TimeoutError):
            await relay.publish_batch()
        assert len(await outbox(engine)) == 50
        async with engine.connect() as conn:  # the batch's transaction ended: nothing locked
            locked = await conn.scalar(
                text("SELECT count(*) FROM (SELECT 1 FROM outbox FOR UPDATE SKIP LOCKED) AS x")
            )
        assert locked == 50
    finally:
        await relay.close()
    relay = Relay(publisher_settings(db_settings, broker_settings))
    await relay.start(connect_attempts=3)
    try:
        assert await relay.drain() == 50
    finally:
        await relay.close()
    await asyncio.sleep(0.5)  # the timed-out batch's copies may have arrived too
    depth = len(await drain_queue(broker_settings.url, topology.queue(EMAIL_SEND)))
    assert 50 <= depth <= 100  # at least once


async def test_under_a_stream_the_relay_lingers_and_a_lone_row_goes_at_once(
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
) -> None:
    """`linger_s`: rows that come within the linger of the last batch with rows wait for the
    ones that follow them (one batch); a row after a quiet spell is published at once."""
    relay = Relay(publisher_settings(db_settings, broker_settings, linger_s=0.5), engine)
    batches: list[tuple[float, int]] = []
    publish = relay.publish_batch
    published = asyncio.Condition()

    async def recorded() -> int:
        count = await publish()
        if count:
            batches.append((time.monotonic(), count))
            async with published:
                published.notify_all()
        return count

    async def until_published(rows: int) -> None:
        async with published:
            await asyncio.wait_for(
                published.wait_for(lambda: sum(n for _, n in batches) >= rows), 10
            )

    relay.publish_batch = recorded  # type: ignore[method-assign]
    await relay.start(connect_attempts=3)
    running = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.3)  # listening, idle
        started = time.monotonic()
        await add(engine)  # after a quiet spell
        await until_published(1)
        assert batches[0][0] - started < 0.4  # at once, not after the 0.5 s linger
        await add(engine)  # a stream now: this one waits for the next
        await asyncio.sleep(0.1)
        await add(engine)
        await until_published(3)
        assert [n for _, n in batches] == [1, 2]
    finally:
        relay.stop()
        await running
        await relay.close()


async def test_a_channel_the_broker_closes_mid_batch_loses_nothing(
    relay: Relay, engine: AsyncEngine, topology: Topology, broker_settings: BrokerSettings
) -> None:
    """A batch publishing to an exchange the broker no longer has: the broker closes the
    channel, every confirmation still pending fails, the batch rolls back (its rows stay);
    aio-pika's robust channel reopens and declares the exchange again, and the next batches
    publish every row."""
    admin = await aio_pika.connect(broker_settings.url)
    async with admin:
        channel = await admin.channel()
        await channel.exchange_delete(topology.events_exchange)
    await add(engine, routing_key="chat.nobody", destination=EVENTS)
    email = await add(engine)
    with pytest.raises(AMQPError):
        await relay.publish_batch()
    assert len(await outbox(engine)) == 2  # nothing deleted
    running = asyncio.create_task(relay.run())

    async def published() -> bool:
        return not await outbox(engine)

    try:
        await eventually(published)
    finally:
        relay.stop()
        await running
    taken = await drain_queue(broker_settings.url, topology.queue(EMAIL_SEND))
    assert str(email) in [m.message_id for m in taken]
