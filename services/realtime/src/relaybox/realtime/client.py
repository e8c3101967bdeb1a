"""A small async client of the realtime stream (`GET /chat/stream`, docs/messenger/stream.md),
for applications, tests and benchmarks.

```python
async with StreamClient(url, tickets=ticket_source(api_url, token)) as stream:
    async for event in stream.events():
        ...  # {"type": "message.created", "eventId": 7, "cursor": "...", "data": {...}}
```

What it does for the application:
- **Credentials**: a fresh single-use ticket (`?ticket=`) for every connection when `tickets` is
  given (`ticket_source` asks the API for one), else the bearer token offered as the
  subprotocols `bearer, <token>`.
- **Reconnect and resume**: on any disconnect (1012 service restart, 4008 too slow, 1006, a
  network error, a 5xx or a refused connection at the handshake) it connects again after a
  jittered exponential backoff (full jitter, capped at `max_backoff_s`), with the newest cursor
  it holds, so the server replays what was missed. With several URLs it tries the next one.
  A 4xx at the handshake (401 bad or expired credentials, 403 missing scope, 400 bad device)
  is final: `StreamRefused`.
- **Duplicates**: an event whose `eventId` was already handed out is dropped (the ids since the
  last checkpoint, plus the last `remember` ids) and counted in `stats.duplicates`.
- **Acks**: with `auto_ack`, the ids of the `message.created` events the application took
  (`data.id`, other users' messages only) are acknowledged, batched: one `ack` frame per event
  loop turn, at most `ACK_BATCH` ids each. `await ack(ids)` acknowledges explicitly.
- **Control frames**: `resync` is always handed to the application (reload state with REST,
  then go on: the stream continues after it). `hello`, `checkpoint`, `live`, `pong` and `error`
  are consumed unless `events(control=True)`.

`cursor` is the cursor of the newest frame the application has taken (store it to resume
after a restart: `StreamClient(..., cursor=saved)`). Frames are read ahead into a bounded queue
(`read_ahead`); a client that does not keep up stops reading, and the server closes it (4008)
and resumes it, so memory stays bounded on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import jwt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)
from websockets.typing import Subprotocol

log = logging.getLogger(__name__)

Frame = dict[str, Any]
TicketSource = Callable[[], Awaitable[str]]

MESSAGE_CREATED = "message.created"
SURFACED = frozenset({"resync"})
"""Control frames the application always gets."""
CONTROL = frozenset({"hello", "checkpoint", "live", "resync", "pong", "error"})
ACK_BATCH = 100
"""Message ids per ack frame (the server takes up to 1000)."""
MAX_QUERY_CURSOR = 4000
"""A longer cursor (many events sent after the last checkpoint) is sent in a `resume` frame
after the connect, not in the URL: a request line has a size limit."""
BASE_BACKOFF_S = 0.25
FINAL_STATUSES = frozenset(range(400, 500)) - {408, 429}
"""Handshake answers that another attempt would get again."""


class StreamRefused(Exception):
    """The stream (or the API, for a ticket) refused the credentials or the request: HTTP
    `status` (401, 403, 400...) and the server's `body`; reconnecting would not help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"the stream refused the connection: HTTP {status} {body[:300]}")
        self.status = status
        self.body = body


class StreamClosed(ConnectionError):
    """The client was closed (or no socket is open for `ping`)."""


def ticket_source(
    api_url: str,
    token: str,
    *,
    http: httpx.AsyncClient | None = None,
    timeout_s: float = 10.0,
) -> TicketSource:
    """A callable that asks the API for a new single-use stream ticket
    (`POST {api_url}/chat/stream-tickets` with the bearer token) each time it is awaited.
    A 4xx answer raises `StreamRefused`; a 5xx or a network error raises `httpx.HTTPError`
    (the client retries). `http`: a client to reuse (else one per ticket)."""
    endpoint = api_url.rstrip("/") + "/chat/stream-tickets"
    headers = {"Authorization": f"Bearer {token}"}

    async def ask(client: httpx.AsyncClient) -> str:
        response = await client.post(endpoint, headers=headers)
        if response.status_code in FINAL_STATUSES:
            raise StreamRefused(response.status_code, response.text)
        response.raise_for_status()
        ticket = response.json().get("ticket")
        if not isinstance(ticket, str) or not ticket:
            raise httpx.DecodingError("the ticket answer has no ticket")
        return ticket

    async def fetch() -> str:
        if http is not None:
            return await ask(http)
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            return await ask(client)

    return fetch


def backoff_delays(
    base_s: float = BASE_BACKOFF_S,
    cap_s: float = 5.0,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Delays before attempt 1, 2, 3...: exponential backoff with full jitter, each uniform in
    [0, min(cap, base * 2**n)] (many clients dropped at once spread over the window instead of
    coming back together)."""
    draw = rng or random.Random()
    attempt = 0
    while True:
        yield draw.uniform(0.0, min(cap_s, base_s * 2.0**attempt))
        attempt = min(attempt + 1, 62)


def with_query(url: str, params: dict[str, str]) -> str:
    """`url` with `params` added to (or replacing those in) its query string."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _subject(token: str) -> str | None:
    """The `sub` of a JWT, unverified (to skip acking one's own messages); None if not one."""
    with contextlib.suppress(jwt.PyJWTError):
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
        return sub if isinstance(sub, str) else None
    return None


def _kind(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


class Seen:
    """The event ids handed out that may still come again: every id since the last
    checkpoint, plus the newest `keep` ids (bounded however long the client runs)."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._since_checkpoint: set[int] = set()

    def add(self, event_id: int) -> bool:
        """Remember `event_id`; False if it was already there."""
        if event_id in self._since_checkpoint or event_id in self._recent:
            return False
        self._since_checkpoint.add(event_id)
        self._recent[event_id] = None
        if len(self._recent) > self._keep:
            self._recent.popitem(last=False)
        return True

    def checkpoint(self) -> None:
        self._since_checkpoint.clear()

    def __len__(self) -> int:
        return len(self._since_checkpoint | self._recent.keys())


@dataclass
class Stats:
    """What happened to one client (for tests, benchmarks and metrics)."""

    connects: int = 0
    reconnects: int = 0
    """Connections opened after the first."""
    disconnects: int = 0
    failed_attempts: int = 0
    """Handshakes (or ticket requests) that failed and were retried."""
    failures: Counter[str] = field(default_factory=Counter)
    """Those failures by kind (`TimeoutError`, `InvalidStatus 503`, `ConnectionRefusedError`)."""
    events: int = 0
    """Events handed to the application (duplicates excluded)."""
    duplicates: int = 0
    """Events dropped because their id had been handed out already."""
    resyncs: int = 0
    acked: int = 0
    """Message ids sent in ack frames."""
    ack_frames: int = 0
    close_codes: Counter[int | None] = field(default_factory=Counter)
    backoff_s: float = 0.0
    """Total time spent waiting between attempts."""
    last_backoff_s: float = 0.0
    connected_at: float | None = None
    """`time.monotonic()` when the newest socket was greeted."""
    disconnected_at: float | None = None
    """`time.monotonic()` when the newest socket closed."""


@dataclass(frozen=True)
class _Item:
    """A frame read from the socket, on its way to the application."""

    frame: Frame
    cursor: str | None  # the client's cursor once the application took this frame
    show: int  # ALWAYS, CONTROL_ONLY (with `control=True`) or NEVER (a duplicate)


ALWAYS, CONTROL_ONLY, NEVER = 2, 1, 0


_WAKE = object()


class StreamClient:
    """One user's (or device's) stream: see the module's docstring.

    `url`: `ws://host:3100/chat/stream` (or several replicas' URLs, tried in turn).
    `open_timeout_s` bounds the handshake (TCP, HTTP upgrade), `hello_timeout_s` the wait for
    the first frame after it.
    `token`: a bearer token (offered as subprotocols), or `tickets`: a callable returning a fresh
    ticket (`ticket_source`). `device_id`: a device registered with `POST /chat/devices` (not
    pushed while connected). `cursor`: resume after it (from an earlier `cursor`).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        tickets: TicketSource | None = None,
        device_id: str | None = None,
        cursor: str | None = None,
        auto_ack: bool = True,
        max_backoff_s: float = 5.0,
        base_backoff_s: float = BASE_BACKOFF_S,
        open_timeout_s: float = 10.0,
        hello_timeout_s: float = 30.0,
        read_ahead: int = 256,
        remember: int = 5000,
        compression: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if token is None and tickets is None:
            raise ValueError("give a bearer token or a ticket source")
        self._urls = [url] if isinstance(url, str) else list(url)
        if not self._urls:
            raise ValueError("give the stream's URL")
        self._url_index = 0
        self._token = token
        self._tickets = tickets
        self._user = _subject(token) if token else None
        self.device_id = device_id
        self.cursor: str | None = cursor
        """The cursor as of the newest frame the application took (resume from it)."""
        self._read_cursor: str | None = cursor  # as of the newest frame read: for a reconnect
        self.auto_ack = auto_ack
        self.max_backoff_s = max_backoff_s
        self.base_backoff_s = base_backoff_s
        self.open_timeout_s = open_timeout_s
        self.hello_timeout_s = hello_timeout_s
        self._compression = compression
        self._rng = rng or random.Random()
        self.stats = Stats()
        self.connection_id: str | None = None
        self.subprotocol: str | None = None
        self.heartbeat_s: float | None = None

        self._seen = Seen(remember)
        self._frames: asyncio.Queue[_Item | object] = asyncio.Queue(maxsize=read_ahead)
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._failure: BaseException | None = None
        self._closed = False
        self._pending_acks: list[str] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._pongs: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:  # no token, no ticket
        return f"<StreamClient {self.url} connected={self.connected} cursor={self.cursor!r}>"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL the next (or current) connection uses, without credentials."""
        return self._urls[self._url_index]

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def __aenter__(self) -> StreamClient:
        self.start()
        try:
            await self.wait_connected()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start connecting (in the background); `wait_connected()` waits for the socket."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"stream {self.url}")

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Until a socket is open and greeted (`hello`); raises `StreamRefused` (or the error
        that stopped the client)."""
        if self._task is None:
            raise StreamClosed("the client was not started")
        waiter = asyncio.ensure_future(self._connected.wait())
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not (waiter.done() and not waiter.cancelled()):  # (it may have closed again since)
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
        raise StreamClosed("the client is closed")

    async def aclose(self) -> None:
        """Close the socket (code 1000) and stop; pending acks are sent first if connected."""
        if self._closed:
            return
        if self._pending_acks and self._ws is not None:
            await self._flush_acks()
        self._closed = True
        self._wake()
        for task in (self._task, self._ack_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        self._ws = None
        self._connected.clear()
        self._fail_pongs()

    def _wake(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._frames.put_nowait(_WAKE)

    # -- what the application reads ---------------------------------------------------------

    async def events(self, *, control: bool = False) -> AsyncIterator[Frame]:
        """Event frames as they arrive, without duplicates, and `resync` frames (with
        `control`, every control frame too). Ends when the client is closed; raises
        `StreamRefused` if the server refuses a reconnect."""
        while True:
            if self._closed:
                return
            if self._frames.empty() and self._failure is not None:
                raise self._failure
            item = await self._frames.get()
            if not isinstance(item, _Item):
                continue  # a wake-up: look at the state again
            if item.cursor is not None:
                self.cursor = item.cursor
            frame = item.frame
            if item.show < (CONTROL_ONLY if control else ALWAYS):
                continue
            if self.auto_ack and frame.get("type") == MESSAGE_CREATED:
                self._took_message(frame)  # the device has it (sent on the loop's next turn)
            yield frame

    def _took_message(self, frame: Frame) -> None:
        data = frame.get("data")
        if not isinstance(data, dict):
            return
        message_id, sender = data.get("id"), data.get("senderId")
        if isinstance(message_id, str) and (self._user is None or sender != self._user):
            self._pending_acks.append(message_id)
            self._schedule_acks()

    # -- client frames ----------------------------------------------------------------------

    async def ack(self, message_ids: Iterable[str]) -> None:
        """Acknowledge messages (this device has them): sent now if connected, else on the next
        connection."""
        self._pending_acks.extend(message_ids)
        if self._ws is not None:
            await self._flush_acks()

    def _schedule_acks(self) -> None:
        if self._ack_task is None or self._ack_task.done():
            # Runs on the loop's next turn: every frame taken before then goes in one frame.
            self._ack_task = asyncio.create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        while self._pending_acks and (ws := self._ws) is not None:
            batch = self._pending_acks[:ACK_BATCH]
            del self._pending_acks[:ACK_BATCH]
            try:
                await ws.send(json.dumps({"type": "ack", "messageIds": batch}))
            except ConnectionClosed:
                self._pending_acks[:0] = batch  # sent again on the next connection
                return
            self.stats.acked += len(batch)
            self.stats.ack_frames += 1

    async def ping(self, timeout_s: float = 10.0) -> float:
        """Send `ping` and wait for its `pong`: the round trip in seconds."""
        ws = self._ws
        if ws is None:
            raise StreamClosed("not connected")
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(pong)
        started = time.monotonic()
        await ws.send('{"type":"ping"}')
        async with asyncio.timeout(timeout_s):
            await pong
        return time.monotonic() - started

    async def resume(self, cursor: str) -> None:
        """Ask the server to restart the stream after `cursor` (replay, then live)."""
        ws = self._ws
        if ws is None:
            raise StreamClosed("not connected")
        await ws.send(json.dumps({"type": "resume", "cursor": cursor}))

    def _fail_pongs(self) -> None:
        pongs, self._pongs = self._pongs, []
        for pong in pongs:
            if not pong.done():
                pong.set_exception(StreamClosed("the socket closed before the pong"))

    # -- the connection loop ----------------------------------------------------------------

    async def _run(self) -> None:
        delays = self._delays()
        others = len(self._urls) - 1  # URLs left to try before backing off
        try:
            while not self._closed:
                try:
                    ws, resume_by_frame = await self._open()
                except (StreamRefused, InvalidURI):
                    raise
                except (
                    OSError,
                    TimeoutError,
                    ValueError,
                    WebSocketException,
                    httpx.HTTPError,
                ) as exc:
                    self.stats.failed_attempts += 1
                    self.stats.failures[_kind(exc)] += 1
                    log.debug("stream connect to %s failed: %r", self.url, exc)
                    self._next_url()
                    if others > 0:  # another replica may take it now
                        others -= 1
                        continue
                    others = len(self._urls) - 1
                    await self._backoff(next(delays))
                    continue
                delays = self._delays()  # greeted: the next disconnect starts low again
                others = len(self._urls) - 1
                self.stats.reconnects += self.stats.connects > 0
                self.stats.connects += 1
                self.stats.connected_at = time.monotonic()
                try:
                    await self._serve(ws, resume_by_frame)
                finally:
                    self._ws = None
                    self._connected.clear()
                    self._fail_pongs()
                if self._closed:
                    return
                self.stats.disconnected_at = time.monotonic()
                self.stats.disconnects += 1
                self.stats.close_codes[ws.close_code] += 1
                log.debug("stream %s closed: %s %s", self.url, ws.close_code, ws.close_reason)
                if ws.close_code in (1001, 1012):
                    self._next_url()  # the replica is going away: try another first
                await self._backoff(next(delays))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the application
            self._failure = exc
            self._wake()

    def _delays(self) -> Iterator[float]:
        return backoff_delays(self.base_backoff_s, self.max_backoff_s, self._rng)

    def _next_url(self) -> None:
        self._url_index = (self._url_index + 1) % len(self._urls)

    async def _backoff(self, delay: float) -> None:
        self.stats.backoff_s += delay
        self.stats.last_backoff_s = delay
        await asyncio.sleep(delay)

    async def _open(self) -> tuple[ClientConnection, bool]:
        """A connected, greeted socket; whether the cursor must still be sent as `resume`."""
        params: dict[str, str] = {}
        if self.device_id:
            params["device"] = self.device_id
        cursor = self._read_cursor
        resume_by_frame = cursor is not None and len(cursor) > MAX_QUERY_CURSOR
        if cursor is not None and not resume_by_frame:
            params["cursor"] = cursor
        subprotocols: list[Subprotocol] | None = None
        if self._tickets is not None:
            ticket = await self._tickets()
            params["ticket"] = ticket
            if self._user is None:
                self._user = _subject(ticket)
        else:
            assert self._token is not None
            subprotocols = [Subprotocol("bearer"), Subprotocol(self._token)]
        try:
            ws = await connect(
                with_query(self.url, params),
                subprotocols=subprotocols,
                open_timeout=self.open_timeout_s,
                compression=self._compression,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in FINAL_STATUSES:
                body = exc.response.body.decode(errors="replace") if exc.response.body else ""
                raise StreamRefused(status, body) from None
            raise
        try:
            # Upgraded: the server is working on this stream (routing, maybe a replay), so the
            # wait for its hello is longer than the handshake's (giving up would waste it).
            async with asyncio.timeout(self.hello_timeout_s):
                hello = json.loads(await ws.recv())
        except BaseException:
            await ws.close()
            raise
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            await ws.close(1002, "expected hello")
            raise InvalidHandshake(f"the first frame was not hello: {str(hello)[:100]}")
        self._ws = ws
        self.subprotocol = ws.subprotocol
        self.connection_id = hello.get("connectionId")
        self.heartbeat_s = hello.get("heartbeatS")
        # A fresh stream starts at hello's cursor; a resumed one keeps ours until it moves on.
        start = hello.get("cursor") if self._read_cursor is None else None
        await self._deliver(hello, start if isinstance(start, str) else None, CONTROL_ONLY)
        return ws, resume_by_frame

    async def _serve(self, ws: ClientConnection, resume_by_frame: bool) -> None:
        """Read frames until the socket closes."""
        frozen = False
        if resume_by_frame and self._read_cursor is not None:
            await ws.send(json.dumps({"type": "resume", "cursor": self._read_cursor}))
            frozen = True  # frames before the resumed stream's hello belong to the fresh one
        self._connected.set()
        if self._pending_acks:
            self._schedule_acks()
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.warning("stream %s: a frame that is not JSON", self.url)
                    continue
                if isinstance(frame, dict):
                    frozen = await self._read(frame, frozen)

    async def _read(self, frame: Frame, frozen: bool) -> bool:
        """Handle one frame; whether cursors are still frozen (a resume sent as a frame)."""
        kind = frame.get("type")
        if kind in ("hello", "resync"):
            frozen = False  # the resumed stream starts (its hello carries our cursor)
        cursor = frame.get("cursor")
        cursor = cursor if isinstance(cursor, str) and not frozen else None
        if kind not in CONTROL:
            event_id = frame.get("eventId")
            if isinstance(event_id, int) and not self._seen.add(event_id):
                self.stats.duplicates += 1
                await self._deliver(frame, cursor, NEVER)
            else:
                self.stats.events += 1
                await self._deliver(frame, cursor, ALWAYS)
        elif kind == "pong":
            self._pong()
        else:
            if kind == "checkpoint":
                self._seen.checkpoint()
            elif kind == "resync":
                self.stats.resyncs += 1
            elif kind == "error":
                log.warning("stream %s: the server said %s", self.url, frame.get("error"))
            await self._deliver(frame, cursor, ALWAYS if kind in SURFACED else CONTROL_ONLY)
        return frozen

    def _pong(self) -> None:
        while self._pongs:
            pong = self._pongs.pop(0)
            if not pong.done():
                pong.set_result(None)
                return

    async def _deliver(self, frame: Frame, cursor: str | None, show: int) -> None:
        if cursor is not None:
            self._read_cursor = cursor
        await self._frames.put(_Item(frame, cursor, show))
