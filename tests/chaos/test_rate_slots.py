"""Booked rate-limit slots do not outlive the consumer that booked them.

A consumer books a slot of the shared limiter per message it holds. One that stops gives back
what it has not used; one that is killed leaks at most its booking horizon (no more than its
lease), so after a restart the next email leaves within one interval plus the lease, however
many messages the dead process held.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.consumer.runner import EMAIL_API_LIMIT_KEY
from relaybox.publisher.relay import Relay
from tests.chaos.test_crashes import accept_many
from tests.support.pipeline import eventually, publisher_settings
from tests.support.processes import service_env, start_service
from tests.support.scripted import ScriptedProvider
from tests.support.serving import free_port, serve_app, wait_http

pytestmark = pytest.mark.chaos

RATE = 1.0  # one email per second: the held messages book seconds ahead
LEASE_S = 4.0
EMAILS = 20
SLACK_S = 1.5  # a busy two-core machine's scheduling, on top of what the rules allow


@pytest.fixture
async def provider() -> AsyncIterator[tuple[ScriptedProvider, str]]:
    scripted = ScriptedProvider()
    async with serve_app(scripted) as url:
        yield scripted, url


async def publish_all(db: DatabaseSettings, broker: BrokerSettings, engine: AsyncEngine) -> None:
    relay = Relay(publisher_settings(db, broker), engine=engine)
    await relay.start(connect_attempts=3)
    await relay.drain()
    await relay.close()


async def sent_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM emails WHERE status = 'SENT'")))


async def booked_ahead_s(engine: AsyncEngine) -> float:
    """How far the shared limiter's next free slot lies in the future."""
    async with engine.connect() as conn:
        ahead = await conn.scalar(
            text(
                "SELECT extract(epoch FROM tat - clock_timestamp())::float8 FROM rate_limits "
                "WHERE key = :key"
            ),
            {"key": EMAIL_API_LIMIT_KEY},
        )
    return float(ahead)


async def consumer(
    db: DatabaseSettings, broker: BrokerSettings, url: str
) -> tuple[asyncio.subprocess.Process, float]:
    """A consumer process on the scripted email API; returns once it is ready, and when."""
    port = free_port()
    env = service_env(
        db,
        broker,
        email_provider="http-api",
        email_api__base_url=url,
        email_api__rate_per_second=RATE,
        email_api__rate_safety=0,
        lease_s=LEASE_S,
        shutdown_grace_s=30,  # the horizon is then the lease
        prefetch=32,
        consumer__port=port,
    )
    process = await start_service("relaybox.consumer", env)
    await wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=60)
    return process, time.monotonic()


async def next_send_after(engine: AsyncEngine, count: int) -> float:
    """Wait for the next SENT beyond `count`; the moment it was seen."""

    async def more() -> bool:
        return await sent_count(engine) > count

    await eventually(more, timeout=60, interval=0.05)
    return time.monotonic()


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
async def test_a_stopped_or_killed_consumer_does_not_hold_back_the_next_email(
    stop: str,
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    provider: tuple[ScriptedProvider, str],
) -> None:
    _, url = provider
    await accept_many(client, EMAILS)
    await publish_all(db_settings, broker_settings, engine)
    first, _ = await consumer(db_settings, broker_settings, url)
    try:
        await eventually(lambda: _at_least(engine, 2), timeout=60)
        # It holds every queued message, and slots up to its horizon (the lease) for them.
        held = await booked_ahead_s(engine)
        assert held <= LEASE_S + 1 / RATE + 0.5, held
        first.send_signal(getattr(signal, stop))
        await asyncio.wait_for(first.wait(), 60)
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    before = await sent_count(engine)
    left = await booked_ahead_s(engine)
    if stop == "SIGTERM":  # given back: nothing booked beyond the last slot it used
        assert left <= 1 / RATE + 0.2, left
    else:  # leaked: never more than the horizon
        assert left <= LEASE_S + 1 / RATE + 0.2, left

    second, ready_at = await consumer(db_settings, broker_settings, url)
    try:
        sent_at = await next_send_after(engine, before)
    finally:
        second.terminate()
        await second.wait()
    assert sent_at - ready_at <= 1 / RATE + LEASE_S + SLACK_S


async def _at_least(engine: AsyncEngine, count: int) -> bool:
    return await sent_count(engine) >= count
