"""Bulk mailings end to end: upload → parse → paced dispatch → email HTTP API (the mock).

Real PostgreSQL, RabbitMQ and the mock email API served on a loopback port; the consumer sends
with RELAYBOX_EMAIL_PROVIDER=http-api as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.consumer.mailings.dispatcher import Dispatcher
from relaybox.consumer.providers.email_api import EmailApiSettings
from relaybox.consumer.runner import mailing_in_flight
from relaybox.consumer.settings import ConsumerSettings
from relaybox.mock_meta.app import create_app as create_mock
from relaybox.mock_meta.settings import MockMetaSettings, SmtpSinkSettings
from relaybox.mock_meta.smtp.sink import SmtpSink
from tests.support.pipeline import (
    Pipeline,
    consumer_settings,
    eventually,
    publisher_settings,
    running_pipeline,
)
from tests.support.processes import CRASH_EXIT_CODE, service_env, start_service, wait_exit
from tests.support.serving import serve_app

FIXTURE = Path(__file__).resolve().parents[4] / "shared" / "fixtures" / "mailing_list.csv"
TOKEN = re.compile(r"verify your token (\S+) to continue")


@pytest.fixture
async def email_api() -> AsyncIterator[str]:
    """The mock email API on a loopback port, its rate limit raised for speed."""
    async with serve_app(create_mock(MockMetaSettings(smtp_sink=SmtpSinkSettings(port=0)))) as url:
        api = f"{url}/email-api"
        await mock_config(api, rateLimitPerWindow=100, rateWindowS=1.0)
        yield api


async def mock_config(api: str, **config: Any) -> None:
    async with httpx.AsyncClient() as http:
        (await http.post(f"{api}/_mock/config", json=config)).raise_for_status()


async def mock_get(api: str, path: str) -> Any:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{api}/_mock/{path}")).json()


def settings_for(
    db: DatabaseSettings,
    broker: BrokerSettings,
    sink: SmtpSink,
    api: str,
    rate: float,
    **extra: Any,
) -> ConsumerSettings:
    return consumer_settings(
        db,
        broker,
        sink.port,
        email_provider="http-api",
        email_api=EmailApiSettings(base_url=api, rate_per_second=rate, **extra),
        mailing_ahead_s=1.0,
    )


@contextlib.asynccontextmanager
async def mailing_stack(
    engine: AsyncEngine,
    topology: Topology,
    con: ConsumerSettings,
    pub_db: DatabaseSettings,
    broker: BrokerSettings,
) -> AsyncIterator[Pipeline]:
    """Publisher + consumer (email, parse) + a dispatcher loop, as the consumer service runs."""
    dispatcher = Dispatcher(engine, mailing_in_flight(con))

    async def dispatch_forever() -> None:
        while True:
            await dispatcher.dispatch()
            await dispatcher.complete()
            await asyncio.sleep(0.05)

    async with running_pipeline(
        engine, topology, publisher_settings(pub_db, broker), con
    ) as running:
        task = asyncio.create_task(dispatch_forever())
        try:
            yield running
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def upload(client: httpx.AsyncClient, data: bytes, key: str | None = None) -> dict[str, Any]:
    headers = {"Idempotency-Key": key} if key else {}
    response = await client.post(
        "/mailings", files={"file": ("list.csv", data, "text/csv")}, headers=headers
    )
    assert response.status_code in (200, 202), response.text
    found: dict[str, Any] = response.json()
    return found


async def mailing(client: httpx.AsyncClient, mailing_id: str) -> dict[str, Any]:
    found: dict[str, Any] = (await client.get(f"/mailings/{mailing_id}")).json()
    return found


async def wait_status(
    client: httpx.AsyncClient, mailing_id: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    async def reached() -> bool:
        return bool((await mailing(client, mailing_id))["status"] == status)

    await eventually(reached, timeout=timeout, interval=0.1)
    return await mailing(client, mailing_id)


def addresses(count: int, domain: str) -> bytes:
    return ("email\n" + "".join(f"user{n}@{domain}\n" for n in range(count))).encode()


async def test_the_fixture_list_is_mailed_once_per_valid_address(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    email_api: str,
) -> None:
    con = settings_for(db_settings, broker_settings, sink, email_api, rate=80)
    async with mailing_stack(engine, topology, con, db_settings, broker_settings):
        created = await upload(client, FIXTURE.read_bytes(), key="fixture-1")
        done = await wait_status(client, created["id"], "COMPLETED", timeout=90)
        again = await upload(client, FIXTURE.read_bytes(), key="fixture-1")  # replay
        await asyncio.sleep(0.5)
    assert again["id"] == created["id"]
    counts = done["counts"]
    assert (counts["rows"], counts["valid"], counts["invalid"], counts["sent"]) == (
        105,
        102,
        3,
        102,
    )
    accepted = (await mock_get(email_api, "messages"))["data"]
    assert len(accepted) == 102
    assert len({m["to"].lower() for m in accepted}) == 102
    tokens = [TOKEN.search(m["body"]).group(1) for m in accepted]  # type: ignore[union-attr]
    assert len(set(tokens)) == 102
    async with engine.connect() as conn:
        hashes = set(
            (await conn.execute(text("SELECT token_hash FROM mailing_recipients"))).scalars()
        )
        logged = (
            await conn.execute(text("SELECT count(*) FROM emails WHERE status = 'SENT'"))
        ).scalar()
    assert {hashlib.sha256(t.encode()).hexdigest() for t in tokens} == hashes
    assert logged == 102  # every mailing email is in the delivery log
    errors = (await client.get(f"/mailings/{created['id']}/errors")).json()["data"]
    assert sorted(e["value"] for e in errors) == ["@domain.com", "invalid-email", "not-an-email"]
    assert all(isinstance(e["rowNumber"], int) for e in errors)
    entries = (await client.get(f"/mailings/{created['id']}/entries?limit=100")).text
    assert not any(t in entries for t in tokens)


async def test_short_lived_tokens_are_refreshed_without_failures(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    email_api: str,
) -> None:
    await mock_config(email_api, tokenTtlS=2)
    con = settings_for(db_settings, broker_settings, sink, email_api, rate=15, refresh_margin_s=1)
    async with mailing_stack(engine, topology, con, db_settings, broker_settings):
        created = await upload(client, addresses(45, "ttl.example"))  # ≈ 3 s at 15/s
        done = await wait_status(client, created["id"], "COMPLETED", timeout=90)
    assert done["counts"]["sent"] == 45
    stats = await mock_get(email_api, "stats")
    assert stats["tokensIssued"] >= 2
    assert stats["rejected"].get("401", 0) == 0


async def test_a_429_storm_sends_everything_within_the_limit(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    email_api: str,
) -> None:
    await mock_config(email_api, rateLimitPerWindow=20, rateWindowS=1.0, failNext=6, failStatus=429)
    con = settings_for(db_settings, broker_settings, sink, email_api, rate=15)
    async with mailing_stack(engine, topology, con, db_settings, broker_settings):
        created = await upload(client, addresses(30, "storm.example"))
        done = await wait_status(client, created["id"], "COMPLETED", timeout=120)
    assert done["counts"]["sent"] == 30
    assert done["counts"]["failed"] == 0
    stats = await mock_get(email_api, "stats")
    assert stats["rejected"]["429"] >= 6
    assert stats["maxObservedPerWindow"] <= 20


async def test_a_small_mailing_is_not_stuck_behind_a_big_one(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    email_api: str,
) -> None:
    con = settings_for(db_settings, broker_settings, sink, email_api, rate=10)
    async with mailing_stack(engine, topology, con, db_settings, broker_settings):
        big = await upload(client, addresses(200, "big.example"))
        await wait_status(client, big["id"], "RUNNING")
        small = await upload(client, addresses(5, "small.example"))
        await wait_status(client, small["id"], "COMPLETED", timeout=60)
        big_now = await mailing(client, big["id"])
    assert big_now["status"] == "RUNNING"
    assert big_now["counts"]["sent"] < 100  # the small one did not wait for the big one


async def test_pause_resume_and_cancel(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    email_api: str,
) -> None:
    con = settings_for(db_settings, broker_settings, sink, email_api, rate=10)
    async with mailing_stack(engine, topology, con, db_settings, broker_settings):
        created = await upload(client, addresses(60, "pause.example"))
        mailing_id = created["id"]
        await wait_status(client, mailing_id, "RUNNING")
        assert (await client.post(f"/mailings/{mailing_id}/pause")).status_code == 200
        await asyncio.sleep(2.5)  # what was queued before the pause (≤ 1 s of sends) goes out
        paused_sent = (await mailing(client, mailing_id))["counts"]["sent"]
        await asyncio.sleep(1.5)
        assert (await mailing(client, mailing_id))["counts"]["sent"] == paused_sent
        assert (await client.post(f"/mailings/{mailing_id}/resume")).status_code == 200

        async def progressed() -> bool:
            return bool((await mailing(client, mailing_id))["counts"]["sent"] > paused_sent)

        await eventually(progressed, timeout=30)
        assert (await client.post(f"/mailings/{mailing_id}/cancel")).status_code == 200
        await asyncio.sleep(2.5)
        cancelled = await mailing(client, mailing_id)
        await asyncio.sleep(1.5)
        final = await mailing(client, mailing_id)
    assert final["status"] == "CANCELLED"
    assert final["counts"]["sent"] == cancelled["counts"]["sent"] < 60
    assert final["counts"]["cancelled"] > 0
    accepted = (await mock_get(email_api, "messages"))["data"]
    assert len(accepted) == final["counts"]["sent"]


async def test_a_consumer_killed_mid_mailing_resumes_without_duplicates(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    email_api: str,
) -> None:
    con = settings_for(db_settings, broker_settings, sink, email_api, rate=40)
    created = await upload(client, addresses(20, "crash.example"))
    # A real consumer process parses, dispatches and dies between a claim and its send.
    env = service_env(
        db_settings,
        broker_settings,
        email_provider="http-api",
        email_api__base_url=email_api,
        email_api__rate_per_second=40,
        lease_s=1.5,
        faults__crash_at="email.send.after_claim",
    )
    publisher = await start_service("relaybox.publisher", env)
    consumer = await start_service("relaybox.consumer", env)
    try:
        assert await wait_exit(consumer, timeout=60) == CRASH_EXIT_CODE
    finally:
        publisher.terminate()
        await publisher.wait()
    async with mailing_stack(engine, topology, con, db_settings, broker_settings):
        done = await wait_status(client, created["id"], "COMPLETED", timeout=90)
    assert done["counts"]["sent"] == 20
    accepted = (await mock_get(email_api, "messages"))["data"]
    assert sorted(m["to"] for m in accepted) == sorted(f"user{n}@crash.example" for n in range(20))
