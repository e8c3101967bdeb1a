"""Processes killed between steps lose nothing and send at most what the invariants allow."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import create_engine, dispose
from relaybox.common.messaging.topology import EMAIL_SEND, Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.mock_meta.smtp.sink import SmtpSink
from relaybox.publisher.relay import Relay
from tests.support.broker import drain_queue
from tests.support.pipeline import (
    consumer_settings,
    email_row,
    publisher_settings,
    running_pipeline,
    wait_final,
)
from tests.support.processes import CRASH_EXIT_CODE, service_env, start_service, wait_exit

pytestmark = pytest.mark.chaos
LEASE_S = 1.5


async def accept_many(client: httpx.AsyncClient, count: int) -> list[str]:
    ids = []
    for i in range(count):
        response = await client.post(
            "/send", json={"to": f"user{i}@example.com", "subject": f"#{i}", "text": "hi"}
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


async def crash_consumer_at(
    failpoint: str,
    engine: AsyncEngine,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
) -> None:
    """Publish what the outbox holds, then run a consumer process that dies at `failpoint`."""
    relay = Relay(publisher_settings(db_settings, broker_settings), engine=engine)
    await relay.start(connect_attempts=3)
    await relay.drain()
    await relay.close()
    env = service_env(
        db_settings,
        broker_settings,
        smtp__port=sink.port,
        lease_s=LEASE_S,
        faults__crash_at=failpoint,
    )
    process = await start_service("relaybox.consumer", env)
    assert await wait_exit(process) == CRASH_EXIT_CODE


async def test_consumer_killed_after_claim_sends_exactly_once_after_the_lease(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
) -> None:
    (email_id,) = await accept_many(client, 1)
    await crash_consumer_at("email.send.after_claim", engine, db_settings, broker_settings, sink)
    claimed = await email_row(engine, email_id)
    assert claimed["status"] == "SENDING"
    assert not sink.store.find()

    con = consumer_settings(db_settings, broker_settings, sink.port, lease_s=LEASE_S)
    async with running_pipeline(
        engine, topology, publisher_settings(db_settings, broker_settings), con
    ):
        assert await wait_final(engine, 1) == {email_id: "SENT"}
    assert len(sink.store.find()) == 1
    assert (await email_row(engine, email_id))["attempts"] == 2


async def test_consumer_killed_after_send_resends_at_most_once_with_the_same_message_id(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
) -> None:
    (email_id,) = await accept_many(client, 1)
    await crash_consumer_at("email.send.after_send", engine, db_settings, broker_settings, sink)
    assert (await email_row(engine, email_id))["status"] == "SENDING"
    assert len(sink.store.find()) == 1  # the provider accepted it; the crash lost the record

    con = consumer_settings(db_settings, broker_settings, sink.port, lease_s=LEASE_S)
    async with running_pipeline(
        engine, topology, publisher_settings(db_settings, broker_settings), con
    ):
        assert await wait_final(engine, 1) == {email_id: "SENT"}
    received = sink.store.find()
    assert len(received) <= 2
    assert {m.message_id for m in received} == {f"<{email_id}@relaybox>"}


async def test_publisher_killed_mid_batch_loses_nothing_and_sends_once(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
) -> None:
    ids = await accept_many(client, 30)
    env = service_env(db_settings, broker_settings, faults__crash_at="publisher.after_publish")
    process = await start_service("relaybox.publisher", env)
    assert await wait_exit(process) == CRASH_EXIT_CODE
    async with engine.connect() as conn:  # published but never deleted: still in the outbox
        assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 30

    con = consumer_settings(db_settings, broker_settings, sink.port)
    async with running_pipeline(
        engine, topology, publisher_settings(db_settings, broker_settings), con
    ) as running:
        final = await wait_final(engine, 30)
        await running.worker.run_until_idle()
    assert final == dict.fromkeys(ids, "SENT")
    received = sink.store.find()
    assert len(received) == 30
    assert len({m.message_id for m in received}) == 30


async def test_two_publishers_publish_each_row_once(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
) -> None:
    ids = await accept_many(client, 300)
    settings = publisher_settings(db_settings, broker_settings, batch_size=20)
    engines = [create_engine(db_settings), create_engine(db_settings)]
    relays = [Relay(settings, engine=e) for e in engines]
    for relay in relays:
        await relay.start(connect_attempts=3)
    counts = await asyncio.gather(*(relay.drain() for relay in relays))
    for relay, eng in zip(relays, engines, strict=True):
        await relay.close()
        await dispose(eng)
    assert sum(counts) == 300
    assert all(counts), f"both replicas should have taken rows: {counts}"
    messages = await drain_queue(broker_settings.url, topology.queue(EMAIL_SEND))
    published = [m.body for m in messages]
    assert len(published) == 300
    assert sorted(f'{{"id":"{i}"}}'.encode() for i in ids) == sorted(published)
