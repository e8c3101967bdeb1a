"""Replicas die and clients come back: a killed replica's clients resume on another with every
committed event once; a client away across 10,000 events gets them all, in order."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.auth import USER_SCOPES, issue_token
from relaybox.api.settings import ApiSettings
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.realtime.client import StreamClient
from tests.integration.chat.conftest import TENANT
from tests.integration.chat.realtime.conftest import Replicas, opened, write_event
from tests.support.processes import service_env, start_service
from tests.support.serving import free_ports, wait_http

pytestmark = pytest.mark.usefixtures("publisher")


@contextlib.asynccontextmanager
async def replica_processes(
    count: int, db: DatabaseSettings, broker: BrokerSettings, settings: ApiSettings
) -> AsyncIterator[list[tuple[asyncio.subprocess.Process, int]]]:
    """`python -m relaybox.realtime` times `count`, on free ports, ready."""
    started = []
    for port in free_ports(count):
        env = service_env(
            db,
            broker,
            realtime__port=port,
            realtime__replica=f"proc-{port}",
            realtime__checkpoint_interval_s=0.05,
            realtime__shutdown_grace_s=0.2,
            auth__jwt_secret=settings.auth.jwt_secret,
            auth__tenant_claim="org",
            database__pool_size=4,
        )
        started.append((await start_service("relaybox.realtime", env), port))
    try:
        for _process, port in started:
            await wait_http(f"http://127.0.0.1:{port}/ready")
        yield started
    finally:
        for process, _port in started:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process, _port in started:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 15)
            if process.returncode is None:
                process.kill()


async def committed_for(engine: AsyncEngine, user: str) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id FROM chat_events WHERE tenant_id = :t AND :u = ANY(audience) ORDER BY id"
            ),
            {"t": TENANT, "u": user},
        )
        return [r[0] for r in rows]


@pytest.mark.chaos
async def test_kill_9_a_replica_while_events_flow_every_client_resumes_with_no_gap_or_duplicate(
    engine: AsyncEngine,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    chat_settings: ApiSettings,
) -> None:
    users = [f"user{n}" for n in range(8)]
    received: dict[str, list[int]] = defaultdict(list)
    async with replica_processes(2, db_settings, broker_settings, chat_settings) as procs:
        urls = [f"ws://127.0.0.1:{port}/chat/stream" for _p, port in procs]
        clients = {}
        for n, user in enumerate(users):
            token = issue_token(chat_settings, user, USER_SCOPES, tenant=TENANT)
            # half start on the replica that will be killed, every client knows both
            order = urls if n % 2 == 0 else urls[::-1]
            clients[user] = StreamClient(order, token=token, base_backoff_s=0.05, max_backoff_s=0.5)

        async def read(user: str) -> None:
            async for event in clients[user].events():
                received[user].append(event["eventId"])

        for client in clients.values():
            client.start()
            await client.wait_connected(10)
        readers = [asyncio.create_task(read(user)) for user in users]
        await asyncio.sleep(0.3)
        rng = random.Random(12)

        async def write(count: int) -> None:
            for _ in range(count):
                await write_event(engine, rng.sample(users, rng.randint(1, 4)))

        await write(60)
        procs[0][0].kill()  # SIGKILL: no close frames, no clean-up
        await write(120)
        expected = {user: await committed_for(engine, user) for user in users}

        async def complete() -> bool:
            return all(len(received[u]) >= len(expected[u]) for u in users)

        for _ in range(400):
            if await complete():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything extra would show up now
        for task in readers:
            task.cancel()
        for client in clients.values():
            await client.aclose()
    for user in users:
        assert sorted(received[user]) == expected[user], user  # none lost
        assert len(set(received[user])) == len(received[user]), user  # none twice
    assert sum(c.stats.reconnects for c in clients.values()) >= len(users) // 2


async def test_a_client_away_across_10000_events_gets_them_all_in_order_then_live(
    replicas: Replicas, engine: AsyncEngine, chat_settings: ApiSettings
) -> None:
    replica = await replicas()
    token = issue_token(chat_settings, "alice", USER_SCOPES, tenant=TENANT)
    async with opened(replica.port, token=token) as alice:
        await alice.until(lambda f: f["type"] == "live")
        cursor = alice.cursor
    for batch in range(100):  # 10,000 events in 100 transactions, others' between them
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "WITH e AS (INSERT INTO chat_events (tenant_id, kind, audience, payload) "
                    "SELECT :t, 'read', CASE WHEN g % 2 = 0 THEN ARRAY['alice'] "
                    "ELSE ARRAY['bob'] END, jsonb_build_object('n', g) "
                    "FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g "
                    "RETURNING id, xid, tenant_id, audience) "
                    "INSERT INTO chat_event_readers (tenant_id, user_id, xid, event_id) "
                    "SELECT tenant_id, audience[1], xid, id FROM e"
                ),
                {"t": TENANT, "lo": batch * 200, "hi": batch * 200 + 199},
            )
    expected = await committed_for(engine, "alice")
    assert len(expected) == 10_000
    async with opened(replica.port, token=token, cursor=cursor) as again:
        got: list[dict[str, Any]] = await again.events(10_000, timeout=120)
        assert [e["eventId"] for e in got] == expected
        await again.until(lambda f: f["type"] == "live")
        # the position moves with the replay: the cursor holds the transactions running, not
        # the events sent
        assert max(len(e["cursor"]) for e in got) < 2000
        live = await write_event(engine, ["alice"])
        assert [e["eventId"] for e in await again.events(1)] == [live]
