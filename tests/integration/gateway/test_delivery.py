"""Meta-like gateway end to end, against the real mock-meta process.

API (served on a loopback port, so the mock can post webhooks to it) → outbox → publisher →
RabbitMQ → consumer (global rate limiter) → mock-meta `POST /messages` → signed status webhooks
→ API.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.settings import ApiSettings
from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.consumer.providers.meta import MetaProviderSettings
from relaybox.mock_meta.smtp.sink import SmtpSink
from tests.integration.conftest import WEBHOOK_SECRET
from tests.support.pipeline import (
    Pipeline,
    consumer_settings,
    eventually,
    publisher_settings,
    running_pipeline,
)
from tests.support.processes import mock_meta_process
from tests.support.serving import serve_app

DEFAULTS = {
    "failureRate": 0,
    "duplicateRate": 0,
    "outOfOrderRate": 0,
    "delayMaxMs": 0,
    "rateLimitPerSecond": 0,
    "seed": 7,
    "dedupe": False,
    "statusEvents": True,
    "failNext": 0,
    "failStatus": 503,
}


@pytest.fixture(scope="module")
def mock_meta(db_settings_module: DatabaseSettings, broker_module: BrokerSettings) -> Iterator[str]:
    """`python -m relaybox.mock_meta` on free ports, for this module."""
    with mock_meta_process(
        db_settings_module,
        broker_module,
        meta__webhook_backoff_s=0.05,
        meta__webhook_secret=WEBHOOK_SECRET,
    ) as url:
        yield url


@pytest.fixture(scope="module")
def db_settings_module(database_url: str) -> DatabaseSettings:
    return DatabaseSettings(url=database_url)


@pytest.fixture(scope="module")
def broker_module(broker_settings: BrokerSettings) -> BrokerSettings:
    return broker_settings


@pytest.fixture
async def gateway(
    api_settings: ApiSettings,
    engine: AsyncEngine,
    token: str,
    mock_meta: str,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API on a real port, the mock reset and pointed at it; yields an API client."""
    async with serve_app(create_app(api_settings, engine=engine)) as api_url:
        async with httpx.AsyncClient(base_url=mock_meta) as mock:
            (await mock.delete("/messages")).raise_for_status()
            config = {**DEFAULTS, "webhookUrl": f"{api_url}/webhooks/mock-meta"}
            (await mock.post("/config", json=config)).raise_for_status()
        async with httpx.AsyncClient(
            base_url=api_url, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            yield client


@pytest.fixture
async def meta_pipeline(
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    mock_meta: str,
) -> AsyncIterator[Pipeline]:
    con = consumer_settings(
        db_settings,
        broker_settings,
        sink.port,
        meta=MetaProviderSettings(base_url=mock_meta, rate_per_second=200),
    )
    async with running_pipeline(
        engine, topology, publisher_settings(db_settings, broker_settings), con
    ) as running:
        yield running


async def configure(mock_meta: str, **changes: Any) -> None:
    async with httpx.AsyncClient(base_url=mock_meta) as mock:
        (await mock.post("/config", json=changes)).raise_for_status()


async def mock_stats(mock_meta: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=mock_meta) as mock:
        stats: dict[str, Any] = (await mock.get("/stats")).json()
        return stats


async def send(client: httpx.AsyncClient, client_message_id: str, text_: str = "hello") -> str:
    body = {
        "channel": "whatsapp",
        "to": "+15550001",
        "text": text_,
        "clientMessageId": client_message_id,
    }
    response = await client.post("/messages/send", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def message(client: httpx.AsyncClient, message_id: str) -> dict[str, Any]:
    response = await client.get(f"/messages/{message_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def wait_status(client: httpx.AsyncClient, message_id: str, status: str) -> dict[str, Any]:
    async def reached() -> bool:
        return bool((await message(client, message_id))["status"] == status)

    await eventually(reached, timeout=30)
    return await message(client, message_id)


async def test_send_is_delivered_and_read_through_status_webhooks(
    gateway: httpx.AsyncClient, meta_pipeline: Pipeline, mock_meta: str
) -> None:
    message_id = await send(gateway, "c-1")
    read = await wait_status(gateway, message_id, "READ")
    assert read["providerMessageId"].startswith("msg_")
    assert read["retryCount"] == 0
    assert read["sentAt"] is not None
    assert (await mock_stats(mock_meta))["byClientMessageId"] == {message_id: 1}


async def test_transient_failures_are_retried_then_sent(
    gateway: httpx.AsyncClient, meta_pipeline: Pipeline, mock_meta: str
) -> None:
    await configure(mock_meta, failNext=2, failStatus=503, statusEvents=False)
    message_id = await send(gateway, "c-2")
    sent = await wait_status(gateway, message_id, "SENT")
    assert sent["retryCount"] == 2
    assert (await mock_stats(mock_meta))["byClientMessageId"] == {message_id: 3}


async def test_a_429_pauses_the_provider_then_sends(
    gateway: httpx.AsyncClient, meta_pipeline: Pipeline, mock_meta: str, engine: AsyncEngine
) -> None:
    await configure(mock_meta, failNext=1, failStatus=429, statusEvents=False)
    message_id = await send(gateway, "c-3")
    sent = await wait_status(gateway, message_id, "SENT")
    assert sent["retryCount"] == 1  # the 429 shows; it just does not use up an attempt
    assert (await mock_stats(mock_meta))["byClientMessageId"] == {message_id: 2}
    async with engine.connect() as conn:  # the Retry-After paused the shared limiter
        paused = await conn.scalar(
            text("SELECT paused_until FROM rate_limits WHERE key = 'meta.send'")
        )
    assert paused is not None


async def test_429s_beyond_the_attempt_budget_still_end_sent_and_all_show(
    gateway: httpx.AsyncClient, meta_pipeline: Pipeline, mock_meta: str
) -> None:
    max_attempts = meta_pipeline.worker.settings.max_attempts
    throttles = max_attempts + 1
    await configure(mock_meta, failNext=throttles, failStatus=429, statusEvents=False)
    message_id = await send(gateway, "c-429s")
    sent = await wait_status(gateway, message_id, "SENT")
    assert sent["retryCount"] == throttles
    assert (await mock_stats(mock_meta))["byClientMessageId"] == {message_id: throttles + 1}


async def test_a_400_from_the_provider_fails_at_once(
    gateway: httpx.AsyncClient, meta_pipeline: Pipeline, mock_meta: str
) -> None:
    await configure(mock_meta, failNext=1, failStatus=400)
    message_id = await send(gateway, "c-4")
    failed = await wait_status(gateway, message_id, "FAILED")
    assert failed["retryCount"] == 0
    assert "400" in failed["lastError"]
    assert failed["failedAt"] is not None
    # The retry endpoint sends it again (the provider accepts now).
    assert (await gateway.post(f"/messages/{message_id}/retry")).status_code == 202
    await wait_status(gateway, message_id, "READ")


async def test_duplicate_and_out_of_order_status_events_never_downgrade(
    gateway: httpx.AsyncClient, meta_pipeline: Pipeline, mock_meta: str, engine: AsyncEngine
) -> None:
    await configure(mock_meta, duplicateRate=1, outOfOrderRate=1, delayMaxMs=20)
    ids = [await send(gateway, f"c-5-{i}") for i in range(5)]
    for message_id in ids:
        await wait_status(gateway, message_id, "READ")
    async with httpx.AsyncClient(base_url=mock_meta) as mock:
        stats = (await mock.get("/stats")).json()
    assert stats["webhooksFailed"] == 0

    async def all_events_in() -> bool:  # 3 distinct status events per message, duplicates dropped
        async with engine.connect() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM webhook_events"))
        return bool(count == 15)

    await eventually(all_events_in)
    await asyncio.sleep(0.2)  # let any straggling duplicate land; the status must still be READ
    for message_id in ids:
        assert (await message(gateway, message_id))["status"] == "READ"


async def test_inbound_duplicates_and_out_of_order_events(
    gateway: httpx.AsyncClient, mock_meta: str
) -> None:
    async with httpx.AsyncClient(base_url=mock_meta) as mock:
        for body in (
            {
                "channel": "instagram",
                "from": "ig_ana",
                "text": "first",
                "timestamp": "2026-01-01T10:00:00Z",
                "duplicate": True,
                "wait": True,
            },
            {
                "channel": "instagram",
                "from": "ig_ana",
                "text": "second",
                "timestamp": "2026-01-01T10:05:00Z",
                "outOfOrder": True,
                "wait": True,
            },
        ):
            answer = (await mock.post("/simulate/inbound", json=body)).json()
            assert answer["success"], answer
    (conversation,) = (await gateway.get("/conversations")).json()["data"]
    assert conversation["unreadCount"] == 3  # first, second and the simulated later one
    assert conversation["lastMessagePreview"].startswith("(later) ")
    detail = (await gateway.get(f"/conversations/{conversation['id']}")).json()
    texts = [m["text"] for m in detail["messages"]]
    assert texts == ["(later) second", "second", "first"]
