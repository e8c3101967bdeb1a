"""Queued email end to end: API → outbox → publisher → RabbitMQ → consumer → SMTP sink."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.mock_meta.smtp.sink import SmtpSink
from tests.support.pipeline import Pipeline, wait_final

BODY = {"to": "alice@example.com", "subject": "Hello", "text": "Hi Alice"}


async def send(client: httpx.AsyncClient, body: dict[str, Any] = BODY, **headers: str) -> Any:
    response = await client.post("/send", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


async def test_happy_path_email_is_sent_and_received(
    client: httpx.AsyncClient, pipeline: Pipeline, engine: AsyncEngine, sink: SmtpSink
) -> None:
    accepted = await send(client)
    assert accepted["status"] == "PENDING"
    final = await wait_final(engine, 1)
    assert final == {accepted["id"]: "SENT"}
    received = sink.store.find()
    assert len(received) == 1
    assert received[0].to == ["alice@example.com"]
    assert received[0].message_id == f"<{accepted['id']}@relaybox>"
    detail = (await client.get(f"/emails/{accepted['id']}")).json()
    assert detail["sentAt"] is not None and detail["attempts"] == 1
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 0
