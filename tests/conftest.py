"""Fixtures: a database and a topology prefix per run, real servers, clean state per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import create_engine, dispose
from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from tests.support.broker import delete_topology
from tests.support.databases import TABLES, migrated_database
from tests.support.servers import Servers, locate

RUN = uuid.uuid4().hex[:8]
KEPT_PREFIXES = ("RELAYBOX_TEST_", "RELAYBOX_CHAOS_")


def pytest_configure(config: pytest.Config) -> None:
    """Settings come from the fixtures, never from the caller's shell (e.g. RELAYBOX_DEV_MODE)."""
    for name in [n for n in os.environ if n.startswith("RELAYBOX_")]:
        if not name.startswith(KEPT_PREFIXES):
            del os.environ[name]


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    with locate() as found:
        yield found


@pytest.fixture(scope="session")
def database_url(servers: Servers) -> Iterator[str]:
    """A fresh database for this run, migrated to head, dropped at the end."""
    with migrated_database(servers.database_admin_url, f"relaybox_test_{RUN}") as url:
        yield url


@pytest.fixture(scope="session")
def broker_settings(servers: Servers) -> Iterator[BrokerSettings]:
    """Short retry tiers under this run's own topology prefix; deleted at the end."""
    settings = BrokerSettings(
        url=servers.amqp_url,
        topology_prefix=f"test.{RUN}.",
        retry_delays_ms=[100, 200, 400],
        delivery_limit=3,
    )
    yield settings
    asyncio.run(delete_topology(settings))


@pytest.fixture
def db_settings(database_url: str) -> DatabaseSettings:
    return DatabaseSettings(url=database_url, pool_size=5, max_overflow=5)


@pytest.fixture
async def engine(db_settings: DatabaseSettings) -> AsyncIterator[AsyncEngine]:
    """An engine on a clean database (every table truncated before the test)."""
    eng = create_engine(db_settings)
    async with eng.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(TABLES)}"))
    yield eng
    await dispose(eng)


@pytest.fixture
async def topology(broker_settings: BrokerSettings) -> Topology:
    """The run's topology, declared, with every queue purged before the test."""
    topo = Topology.from_settings(broker_settings)
    connection = await aio_pika.connect(broker_settings.url)
    async with connection:
        channel = await connection.channel()
        await topo.declare(channel)
        for name in topo.all_queues():
            await (await channel.get_queue(name)).purge()
    return topo
