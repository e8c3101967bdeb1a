"""The replica's side of RabbitMQ: one exclusive queue, bound to the users connected here.

- Events arrive on the topic exchange `relaybox.chat.events`, routed by the `BCC` user keys
  the writer set; each arriving message lists its users in `to`, and goes to their sockets.
- Checkpoints: now and then the replica computes the horizon H and the transactions below it
  still running (`Store.horizon`), and sends a marker to its own queue. The queue is FIFO, so
  when the marker comes back every event of the ended transactions below H that was routed here
  has been handed to its sockets; the sockets bound before H was computed then move there.
- A lost broker connection loses what was routed meanwhile: every socket is closed with 1012
  (clients resume elsewhere, from PostgreSQL) and the hub reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from typing import Any

import aio_pika
import aiormq.abc
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

from relaybox.common.chat.events import user_route
from relaybox.common.messaging.topology import Topology
from relaybox.realtime import metrics
from relaybox.realtime.connection import RESTART, Connection
from relaybox.realtime.store import Store

log = logging.getLogger(__name__)
MARKER = "relaybox.checkpoint"
MARKER_TIMEOUT_S = 5.0
BIND_CHANNELS = 8
"""Bindings are made on this many channels at once: a channel runs one broker call at a time,
and a reconnect storm is thousands of them."""
IDLE_MARKER_S = 1.0


class Hub:
    def __init__(
        self,
        *,
        broker_url: str,
        topology: Topology,
        replica: str,
        store: Store,
        checkpoint_interval_s: float,
    ) -> None:
        self._url = broker_url
        self._topology = topology
        self.replica = replica
        self._store = store
        self._interval = checkpoint_interval_s
        self.connections: dict[tuple[str, str], set[Connection]] = defaultdict(set)
        self._bound: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._binders: list[aiormq.abc.AbstractChannel] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.generation = 0
        self._marker_out: tuple[int, float] | None = None
        self._changed = True
        self._last_marker = 0.0
        self.ready = asyncio.Event()
        self._stopping = False
        self.draining = False
        """Set while the replica shuts down: its queue goes with it, so sockets closing then
        leave their bindings (a broker call each) in place."""

    @property
    def queue_name(self) -> str:
        return f"{self._topology.prefix}realtime.{self.replica}"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self._connect()
        self._tasks.append(asyncio.create_task(self._checkpoints()))

    async def _connect(self) -> None:
        self._connection = await aio_pika.connect(
            self._url, client_properties={"connection_name": f"relaybox-realtime {self.replica}"}
        )
        self._connection.close_callbacks.add(self._on_lost)
        self._channel = await self._connection.channel(publisher_confirms=False)
        await self._channel.declare_exchange(
            self._topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._queue = await self._channel.declare_queue(
            self.queue_name, exclusive=True, auto_delete=True, durable=False
        )
        self._binders = [
            await (await self._connection.channel()).get_underlay_channel()
            for _ in range(BIND_CHANNELS)
        ]
        self._bound.clear()
        self._marker_out = None
        self._tasks.append(asyncio.create_task(self._consume(self._queue)))
        self.ready.set()

    def _on_lost(self, *_args: Any) -> None:
        if self._stopping:
            return
        log.warning("broker connection lost: closing every socket (clients resume)")
        self.ready.clear()
        for group in list(self.connections.values()):
            for conn in list(group):
                conn.close_soon(RESTART, "service restart")
        asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                await self._connect()
                log.info("broker connection restored")
                return
            except (OSError, ConnectionError, aio_pika.exceptions.AMQPError) as exc:
                log.warning("broker reconnect failed", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def close(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    # -- sockets ----------------------------------------------------------------------------

    async def attach(self, conn: Connection) -> None:
        """Route the user's events here (binding on their first socket); from then on their
        live events reach `conn` (held while it replays)."""
        route = user_route(conn.tenant, conn.user)
        self.connections[conn.key].add(conn)
        metrics.CONNECTIONS.inc()
        async with self._lock(route):
            if route not in self._bound:
                await self._binder(route).queue_bind(
                    self.queue_name, self._topology.events_exchange, routing_key=route
                )
                self._bound.add(route)
                metrics.USERS.inc()
        conn.bound_generation = self.generation
        self._changed = True

    async def detach(self, conn: Connection) -> None:
        group = self.connections.get(conn.key)
        if group is None or conn not in group:
            return
        group.discard(conn)
        metrics.CONNECTIONS.dec()
        if group:
            return
        del self.connections[conn.key]
        route = user_route(conn.tenant, conn.user)
        async with self._lock(route):
            if conn.key in self.connections or route not in self._bound:
                return
            self._bound.discard(route)
            metrics.USERS.dec()
            if self.ready.is_set() and not self.draining:
                with contextlib.suppress(Exception):
                    await self._binder(route).queue_unbind(
                        self.queue_name, self._topology.events_exchange, routing_key=route
                    )
        self._locks.pop(route, None)

    def _binder(self, route: str) -> aiormq.abc.AbstractChannel:
        """The channel of a route's bindings (always the same one: its calls stay in order)."""
        return self._binders[hash(route) % len(self._binders)]

    def _lock(self, route: str) -> asyncio.Lock:
        lock = self._locks.get(route)
        if lock is None:
            lock = self._locks[route] = asyncio.Lock()
        return lock

    def all_connections(self) -> list[Connection]:
        return [conn for group in self.connections.values() for conn in group]

    # -- the queue --------------------------------------------------------------------------

    async def _consume(self, queue: AbstractQueue) -> None:
        async with queue.iterator(no_ack=True) as messages:
            async for message in messages:
                if message.type == MARKER:
                    self._on_marker(json.loads(message.body))
                else:
                    self._on_event(json.loads(message.body))

    def _on_event(self, event: dict[str, Any]) -> None:
        metrics.LIVE_EVENTS.inc()
        event["data_json"] = json.dumps(event["data"], separators=(",", ":"))  # once
        self._changed = True
        tenant = event["tenant"]
        for user in event["to"]:
            for conn in self.connections.get((tenant, user), ()):
                conn.offer_live(event)

    def _on_marker(self, marker: dict[str, Any]) -> None:
        generation, horizon = marker["generation"], marker["horizon"]
        pending = frozenset(marker["pending"])
        if self._marker_out is not None and self._marker_out[0] == generation:
            self._marker_out = None
        metrics.CHECKPOINTS.inc()
        now = time.monotonic()
        for group in self.connections.values():
            for conn in group:
                if conn.bound_generation < generation and conn.owes_checkpoint(now):
                    conn.checkpoint(horizon, pending)

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._send_marker()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop outlives a failed round
                log.warning("checkpoint round failed", extra={"error": repr(exc)})

    async def _send_marker(self) -> None:
        now = time.monotonic()
        if not self.ready.is_set() or not self.connections:
            return
        if self._marker_out is not None and now - self._marker_out[1] < MARKER_TIMEOUT_S:
            return  # one marker in flight at a time
        if not self._changed and now - self._last_marker < IDLE_MARKER_S:
            return
        self._changed = False
        self.generation += 1
        generation = self.generation
        horizon, pending = await self._store.horizon()
        assert self._channel is not None
        self._marker_out = (generation, now)
        self._last_marker = now
        await self._channel.default_exchange.publish(
            aio_pika.Message(
                body=json.dumps(
                    {"generation": generation, "horizon": horizon, "pending": sorted(pending)}
                ).encode(),
                type=MARKER,
            ),
            routing_key=self.queue_name,
        )
