"""The realtime test kit: replicas in the test's loop (or as processes, to kill), a publisher,
sockets that read JSON frames, and events written the way the services write them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import ClientConnection, connect

from relaybox.api.settings import ApiSettings
from relaybox.common.auth import AuthSettings
from relaybox.common.chat.events import record
from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, ChatSettings, DatabaseSettings
from relaybox.publisher.relay import Relay
from relaybox.realtime.server import Replica
from relaybox.realtime.settings import RealtimeSettings, StreamServerSettings
from tests.integration.chat.conftest import TENANT
from tests.support.pipeline import publisher_settings

Replicas = Callable[..., Awaitable[Replica]]


def realtime_settings(
    db: DatabaseSettings, broker: BrokerSettings, auth: AuthSettings, **own: Any
) -> RealtimeSettings:
    own.setdefault("port", 0)
    own.setdefault("replica", f"test-{uuid.uuid4().hex[:8]}")
    own.setdefault("checkpoint_interval_s", 0.05)
    own.setdefault("shutdown_grace_s", 0.2)
    return RealtimeSettings(
        database=DatabaseSettings(url=db.url, pool_size=4, max_overflow=4),
        broker=broker,
        auth=auth,
        chat=ChatSettings(),
        realtime=StreamServerSettings(**own),
    )


@pytest.fixture
async def replicas(
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    chat_settings: ApiSettings,
    engine: AsyncEngine,
    topology: Topology,
) -> AsyncIterator[Replicas]:
    """`await replicas(**settings)`: a realtime replica in this loop (port in `.port`)."""
    started: list[Replica] = []

    async def start(**own: Any) -> Replica:
        replica = Replica(
            realtime_settings(db_settings, broker_settings, chat_settings.auth, **own)
        )
        await replica.start()
        started.append(replica)
        return replica

    yield start
    for replica in started:
        if not replica.stopping:
            await replica.stop()


@pytest.fixture
async def publisher(
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
) -> AsyncIterator[Relay]:
    """The outbox relay, running: events reach the replicas."""
    relay = Relay(publisher_settings(db_settings, broker_settings), engine=engine)
    await relay.start(connect_attempts=3)
    task = asyncio.create_task(relay.run())
    yield relay
    relay.stop()
    await task
    await relay.close()


class Socket:
    """A test's WebSocket: JSON frames in and out, and the events it has seen."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.cursor: str | None = None

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(frame)
        if "cursor" in frame:
            self.cursor = frame["cursor"]
        return frame

    async def until(
        self, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next(max(0.01, deadline - time.monotonic()))
            if check(frame):
                return frame

    async def events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next `count` event frames (control frames skipped)."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            frame = await self.next(max(0.01, deadline - time.monotonic()))
            if "eventId" in frame:
                got.append(frame)
        return got

    async def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Event frames that arrive within `seconds` (expected: none)."""
        got = []
        with contextlib.suppress(TimeoutError):
            while True:
                frame = await self.next(seconds)
                if "eventId" in frame:
                    got.append(frame)
        return got

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    @property
    def event_ids(self) -> list[int]:
        return [f["eventId"] for f in self.frames if "eventId" in f]


@contextlib.asynccontextmanager
async def opened(
    port: int,
    *,
    token: str | None = None,
    ticket: str | None = None,
    cursor: str | None = None,
    device: str | None = None,
) -> AsyncIterator[Socket]:
    query = {k: v for k, v in {"ticket": ticket, "cursor": cursor, "device": device}.items() if v}
    url = f"ws://127.0.0.1:{port}/chat/stream"
    if query:
        from urllib.parse import urlencode

        url += "?" + urlencode(query)
    protocols = ["bearer", token] if token else None
    async with connect(url, subprotocols=protocols, open_timeout=10) as ws:  # type: ignore[arg-type]
        socket = Socket(ws)
        hello = await socket.next()
        assert hello["type"] == "hello", hello
        yield socket


async def write_event(
    engine: AsyncEngine,
    users: list[str],
    *,
    kind: str = "read",
    data: dict[str, Any] | None = None,
    tenant: str = TENANT,
) -> int:
    """One event for `users`, committed the way the API writes one."""
    async with engine.begin() as conn:
        return await record(conn, tenant=tenant, kind=kind, data=data or {"n": 1}, audience=users)


__all__ = ["TENANT", "Socket", "opened", "write_event"]
