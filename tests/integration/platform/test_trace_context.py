"""Trace context captured by the API travels in the outbox row's headers (and so over AMQP)."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

BODY = {"to": "t@example.com", "subject": "trace", "text": "hi"}
W3C = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-9a-f]$")


async def outbox_headers(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        headers: dict[str, str] = (
            await conn.execute(text("SELECT headers FROM outbox"))
        ).scalar_one()
        return headers


async def test_an_incoming_traceparent_is_kept(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = await client.post(
        "/send", json=BODY, headers={"traceparent": parent, "X-Request-ID": "req-trace-1"}
    )
    assert response.status_code == 202, response.text
    headers = await outbox_headers(engine)
    assert headers["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert headers["x-correlation-id"] == "req-trace-1"


async def test_without_one_a_new_trace_is_started(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await client.post("/send", json=BODY, headers={"traceparent": "garbage"})
    assert response.status_code == 202, response.text
    assert W3C.match((await outbox_headers(engine))["traceparent"])
