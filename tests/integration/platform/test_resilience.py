"""Outages: the API accepts without a broker; workers recover when connections are cut."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.settings import ApiSettings
from relaybox.common.settings import BrokerSettings
from tests.support.pipeline import Pipeline, wait_final

BODY = {"to": "carol@example.com", "subject": "Outage", "text": "still here"}


async def test_api_accepts_while_the_broker_is_unreachable(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    dead_broker = api_settings.model_copy(
        update={"broker": BrokerSettings(url="amqp://guest:guest@127.0.0.1:1/")}
    )
    app = create_app(dead_broker, engine=engine)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", headers={"Authorization": f"Bearer {token}"}
    ) as client:
        assert (await client.get("/ready")).status_code == 200
        response = await client.post("/send", json=BODY)
    assert response.status_code == 202
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 1


async def _close_broker_connections(name_part: str) -> int:
    """Close, from the broker's side, every connection whose name contains `name_part`."""
    listing = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "-q",
        "list_connections",
        "pid",
        "client_properties",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await listing.communicate()
    pids = [line.split("\t")[0] for line in out.decode().splitlines() if name_part in line]
    for pid in pids:
        closer = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "-q",
            "close_connection",
            pid,
            "relaybox test: simulated outage",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await closer.wait()
    return len(pids)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl on this host")
async def test_workers_reconnect_after_the_broker_drops_them(
    client: httpx.AsyncClient,
    pipeline: Pipeline,
    engine: AsyncEngine,
    broker_settings: BrokerSettings,
) -> None:
    first = (await client.post("/send", json=BODY)).json()["id"]
    await wait_final(engine, 1)
    closed = await _close_broker_connections(broker_settings.topology_prefix)
    assert closed >= 2  # the publisher's and the consumer's
    second = (await client.post("/send", json=BODY)).json()["id"]
    assert await wait_final(engine, 2, timeout=60) == {first: "SENT", second: "SENT"}


async def test_workers_recover_when_the_database_drops_every_connection(
    client: httpx.AsyncClient,
    pipeline: Pipeline,
    engine: AsyncEngine,
) -> None:
    first = (await client.post("/send", json=BODY)).json()["id"]
    await wait_final(engine, 1)
    async with engine.connect() as conn:  # what a PostgreSQL restart does to every session
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    second = (await client.post("/send", json=BODY)).json()["id"]
    assert await wait_final(engine, 2, timeout=60) == {first: "SENT", second: "SENT"}
