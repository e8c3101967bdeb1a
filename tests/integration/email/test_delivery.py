"""Consumer failure paths: transient, permanent, exhausted retries, poison, duplicates, leases."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.messaging.topology import EMAIL_SEND, Topology
from relaybox.common.outbox import enqueue
from relaybox.common.settings import BrokerSettings
from relaybox.mock_meta.smtp.sink import SinkConfig, SmtpSink
from tests.support.broker import publish_raw, queue_depth
from tests.support.pipeline import Pipeline, filed, wait_final

BODY = {"to": "bob@example.com", "subject": "Hi", "text": "Hello Bob"}


async def accept(client: httpx.AsyncClient, body: dict[str, Any] = BODY) -> str:
    response = await client.post("/send", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def row(engine: AsyncEngine, email_id: str) -> Any:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT * FROM emails WHERE id = :id"), {"id": email_id})
        return result.mappings().one()


async def test_transient_failure_is_retried_then_sent(
    client: httpx.AsyncClient, pipeline: Pipeline, engine: AsyncEngine, sink: SmtpSink
) -> None:
    sink.configure(SinkConfig(fail_next=1, failure="transient"))
    email_id = await accept(client)
    assert await wait_final(engine, 1) == {email_id: "SENT"}
    sent = await row(engine, email_id)
    assert sent["attempts"] == 2
    assert sent["last_error"] is None
    assert len(sink.store.find()) == 1
    assert sink.stats.rejected_transient == 1


async def test_permanent_failure_fails_at_once_with_error(
    client: httpx.AsyncClient,
    pipeline: Pipeline,
    engine: AsyncEngine,
    sink: SmtpSink,
    topology: Topology,
    broker_settings: BrokerSettings,
) -> None:
    sink.configure(SinkConfig(mode="permanent"))
    email_id = await accept(client)
    assert await wait_final(engine, 1) == {email_id: "FAILED"}
    failed = await row(engine, email_id)
    assert failed["attempts"] == 1
    assert failed["failed_at"] is not None
    assert failed["sent_at"] is None
    assert "550" in failed["last_error"]
    log = (await client.get("/logs/email")).json()["data"][0]
    assert log["status"] == "FAILED"
    assert "550" in log["error"]
    assert log["failedAt"] is not None
    # A permanent refusal is a final outcome, not an operator problem: nothing in the DLQ.
    assert await queue_depth(broker_settings.url, topology.dead_letter_queue(EMAIL_SEND)) == 0


async def test_exhausted_retries_fail_and_are_filed_as_dead_letters(
    client: httpx.AsyncClient,
    pipeline: Pipeline,
    engine: AsyncEngine,
    sink: SmtpSink,
    topology: Topology,
    broker_settings: BrokerSettings,
) -> None:
    sink.configure(SinkConfig(mode="transient"))
    email_id = await accept(client)
    assert await wait_final(engine, 1) == {email_id: "FAILED"}
    failed = await row(engine, email_id)
    assert failed["attempts"] == 3  # the default max_attempts
    assert "451" in failed["last_error"]
    assert sink.stats.rejected_transient == 3
    (dead,) = await filed(engine, 1)
    assert (dead["route"], dead["row_id"], dead["attempts"]) == (EMAIL_SEND, email_id, 3)
    assert "451" in dead["last_error"]
    await pipeline.worker.run_until_idle()  # the DLQ itself is drained
    assert await queue_depth(broker_settings.url, topology.dead_letter_queue(EMAIL_SEND)) == 0


async def test_malformed_messages_are_filed_as_dead_letters(
    pipeline: Pipeline, engine: AsyncEngine, topology: Topology, broker_settings: BrokerSettings
) -> None:
    await publish_raw(broker_settings.url, topology.exchange, EMAIL_SEND, b"not json")
    await publish_raw(broker_settings.url, topology.exchange, EMAIL_SEND, {"id": str(uuid.uuid4())})
    found = await filed(engine, 2)
    assert all(d["last_error"].startswith("unprocessable:") for d in found)


async def test_duplicate_messages_send_once(
    client: httpx.AsyncClient, pipeline: Pipeline, engine: AsyncEngine, sink: SmtpSink
) -> None:
    email_id = await accept(client)
    async with engine.begin() as conn:  # two more copies of the same message, as redeliveries
        for _ in range(2):
            await enqueue(conn, routing_key=EMAIL_SEND, payload={"id": email_id})
    await wait_final(engine, 1)
    await pipeline.worker.run_until_idle()
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 0
    assert len(sink.store.find()) == 1
    assert (await row(engine, email_id))["attempts"] == 1


async def test_a_live_lease_defers_the_message_until_it_ends(
    client: httpx.AsyncClient, pipeline: Pipeline, engine: AsyncEngine, sink: SmtpSink
) -> None:
    """A row held SENDING by a (dead) consumer is taken again only after its lease runs out."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO emails (id, tenant_id, to_address, from_address, subject, text_body,"
                " status, attempts, lease_until) VALUES (:id, 'c', 'x@example.com',"
                " 'r@example.com', 's', 't', 'SENDING', 1, now() + interval '1 second')"
            ),
            {"id": (email_id := str(uuid.uuid4()))},
        )
        await enqueue(conn, routing_key=EMAIL_SEND, payload={"id": email_id})
    assert await wait_final(engine, 1) == {email_id: "SENT"}
    sent = await row(engine, email_id)
    assert sent["attempts"] == 2
    assert sent["sent_at"] >= sent["created_at"]
    assert len(sink.store.find()) == 1
