"""The realtime replica: WebSockets at `/chat/stream`, plain HTTP `/health`, `/ready` and
`/metrics` on the same port, a refused upgrade answered before the handshake."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from relaybox.common.auth import Caller, InvalidTokenError, verify_bearer_until
from relaybox.common.chat.tickets import verify_ticket
from relaybox.common.db.session import asyncpg_dsn, create_engine, dispose
from relaybox.common.messaging.topology import Topology
from relaybox.realtime import metrics
from relaybox.realtime.acks import AckWriter
from relaybox.realtime.connection import RESTART, Connection
from relaybox.realtime.hub import Hub
from relaybox.realtime.settings import RealtimeSettings
from relaybox.realtime.store import PLAN_SETTINGS, Store
from relaybox.realtime.stream import Streams

log = logging.getLogger(__name__)
STREAM_PATH = "/chat/stream"
READ_SCOPE = "chat:read"
BEARER = "bearer"
MAX_VERIFIED = 20_000
GC_THRESHOLDS = (100_000, 50, 100)


@dataclass(frozen=True)
class Admission:
    """What a request that may upgrade brought: its caller, device and cursor."""

    caller: Caller
    device: uuid.UUID | None
    cursor: str | None


class Refused(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _response(
    status: int, body: dict[str, Any] | bytes, content_type: str = "application/json"
) -> Response:
    data = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data)))])
    if status in (401,):
        headers["WWW-Authenticate"] = 'Bearer realm="relaybox"'
    return Response(status, HTTPStatus(status).phrase, headers, data)


def _bearer_token(request: Request) -> str | None:
    """The token of `Sec-WebSocket-Protocol: bearer, <token>`."""
    offered = [
        value.strip()
        for header in request.headers.get_all("Sec-WebSocket-Protocol")
        for value in header.split(",")
    ]
    if BEARER in offered:
        index = offered.index(BEARER)
        if index + 1 < len(offered):
            return offered[index + 1]
    return None


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


class Replica:
    """One realtime process."""

    def __init__(self, settings: RealtimeSettings) -> None:
        self.settings = settings
        self.engine = create_engine(settings.database)
        self.pool: asyncpg.Pool | None = None
        # made by start(), on the running loop
        self.store: Store
        self.hub: Hub
        self.acks: AckWriter
        self.streams: Streams
        self._admissions: dict[int, Admission] = {}
        self._verified: dict[str, tuple[float, Caller]] = {}
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        own, database = self.settings.realtime, self.settings.database
        self.pool = await asyncpg.create_pool(
            asyncpg_dsn(database.url),
            min_size=1,
            max_size=database.pool_size + database.max_overflow,
            max_inactive_connection_lifetime=60,
            server_settings=PLAN_SETTINGS,
        )
        self.store = Store(self.engine, self.pool)
        self.hub = Hub(
            broker_url=self.settings.broker.url,
            topology=Topology.from_settings(self.settings.broker),
            replica=own.replica,
            store=self.store,
            checkpoint_interval_s=own.checkpoint_interval_s,
        )
        self.acks = AckWriter(
            self.store, flush_s=own.ack_flush_s, fanout_batch=self.settings.chat.fanout_batch
        )
        self.streams = Streams(
            self.store, self.acks, replay_page=own.replay_page, heartbeat_s=own.heartbeat_s
        )
        # Thousands of sockets are thousands of long-lived objects each: the collector's
        # default pace (a young collection every 700 allocations, promoting into full scans of
        # everything) took ~15% of the replica's CPU in a reconnect storm. Collect less often.
        gc.set_threshold(*GC_THRESHOLDS)
        await self.store.gone(own.replica)  # a previous process of the same name
        await self.hub.start()
        self._tasks.append(asyncio.create_task(self.acks.run()))
        self._tasks.append(asyncio.create_task(self._heartbeat()))
        self._server = await serve(
            self._handle,
            own.host,
            own.port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            ping_interval=own.heartbeat_s,
            ping_timeout=own.heartbeat_s * 2,
            max_size=own.max_frame_bytes,
            max_queue=64,
            compression=None,
            server_header=None,
            # a reconnect storm is thousands of connects at once: asyncio's default backlog
            # (100) drops the rest, and each dropped SYN waits 1, 3, 7 s to be tried again
            backlog=own.listen_backlog,
        )
        log.info("realtime replica started", extra={"replica": own.replica, "port": self.port})

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets = list(self._server.sockets)
        return int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Refuse new sockets; after the grace period close the open ones with 1012."""
        self.stopping = True
        own = self.settings.realtime
        if self.hub.all_connections():
            await asyncio.sleep(own.shutdown_grace_s)
        conns = self.hub.all_connections()
        self.hub.draining = True
        await asyncio.gather(
            *(c.socket.close(RESTART, "service restart") for c in conns), return_exceptions=True
        )
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.acks.drained(), timeout=5)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.store.gone(own.replica)
        await self.hub.close()
        if self.pool is not None:
            await self.pool.close()
        await dispose(self.engine)
        log.info("realtime replica stopped", extra={"replica": own.replica})

    def ready(self) -> bool:
        """Taking sockets: started, connected to the broker, not stopping."""
        hub: Hub | None = getattr(self, "hub", None)
        return not self.stopping and hub is not None and hub.ready.is_set()

    async def _heartbeat(self) -> None:
        """Keep this replica's presence rows fresh (the consumer pushes to stale ones)."""
        while True:
            await asyncio.sleep(self.settings.realtime.heartbeat_s)
            try:
                await self.store.seen(self.settings.realtime.replica)
            except Exception as exc:  # noqa: BLE001 - next beat retries
                log.warning("presence refresh failed", extra={"error": repr(exc)})

    # -- the handshake ----------------------------------------------------------------------

    def _select_subprotocol(self, _conn: ServerConnection, offered: Any) -> Any:
        return BEARER if BEARER in offered else None

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/health":
            return _response(200, {"status": "ok"})
        if url.path == "/ready":
            ok = self.ready()
            return _response(200 if ok else 503, {"status": "ready" if ok else "not ready"})
        if url.path == "/metrics":
            return _response(200, generate_latest(), CONTENT_TYPE_LATEST)
        if url.path != STREAM_PATH:
            return _response(404, {"error": f"no such path: the stream is at {STREAM_PATH}"})
        try:
            admission = await self._admit(parse_qs(url.query), request)
        except Refused as refused:
            metrics.REFUSED.labels(str(refused.status)).inc()
            return _response(refused.status, {"error": refused.error})
        self._admissions[id(connection)] = admission
        return None

    async def _admit(self, query: dict[str, list[str]], request: Request) -> Admission:
        if not self.ready():
            raise Refused(503, "this replica is not taking sockets now: connect to another")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise Refused(426, "GET /chat/stream is a WebSocket: send an Upgrade request")
        auth = self.settings.auth
        ticket = _first(query, "ticket")
        token = _bearer_token(request)
        try:
            if ticket:
                verified = verify_ticket(ticket, auth)
                if not await self.store.use_ticket(verified.jti, verified.expires_at):
                    raise Refused(401, "the ticket was used already: get a new one")
                caller = verified.caller
            elif token:
                caller = self._bearer(token)
            else:
                raise Refused(
                    401,
                    "credentials missing: connect with ?ticket= (POST /chat/stream-tickets) or "
                    "offer the subprotocols 'bearer, <token>'",
                )
        except InvalidTokenError as exc:
            raise Refused(401, str(exc)) from None
        if READ_SCOPE not in caller.scopes:
            raise Refused(403, f"the token lacks the scope {READ_SCOPE!r}")
        device: uuid.UUID | None = None
        if device_text := _first(query, "device"):
            try:
                device = uuid.UUID(device_text)
            except ValueError:
                raise Refused(400, "'device' must be a device id (UUID)") from None
            if not await self.store.owns_device(caller.tenant, caller.id, device):
                raise Refused(400, "'device' is not one of your devices: POST /chat/devices")
        return Admission(caller, device, _first(query, "cursor"))

    def _bearer(self, token: str) -> Caller:
        """The caller of a bearer token, verified once per token until it expires (a client
        reconnects with the same token: a reconnect storm verifies nothing twice)."""
        known = self._verified.get(token)
        if known is not None and time.time() < known[0]:
            return known[1]
        caller, expires = verify_bearer_until(token, self.settings.auth)
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.pop(next(iter(self._verified)))  # the oldest
        self._verified[token] = (expires, caller)
        return caller

    # -- a socket ---------------------------------------------------------------------------

    async def _handle(self, socket: ServerConnection) -> None:
        admission = self._admissions.pop(id(socket))
        own = self.settings.realtime
        conn = Connection(socket, admission.caller, admission.device, send_buffer=own.send_buffer)
        conn.start_writer()
        try:
            await self.hub.attach(conn)
            if conn.device is not None:
                await self.store.present(conn.id, conn.device, conn.tenant, conn.user, own.replica)
            await self.streams.start(conn, admission.cursor)
            async for raw in socket:
                await self.streams.on_frame(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            conn.closing = True
            await self.hub.detach(conn)
            if conn.device is not None:
                with contextlib.suppress(Exception):
                    await self.store.absent([conn.id])
            await conn.stop_writer()


async def serve_forever(settings: RealtimeSettings) -> None:
    """Run one replica until SIGTERM/SIGINT, then shut down gracefully."""
    replica = Replica(settings)
    await replica.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await replica.stop()
