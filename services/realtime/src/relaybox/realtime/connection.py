"""One client socket: its position in the stream (`relaybox.realtime.cursor.Position`), and
its bounded send buffer. An event is sent once: whatever the position covers already — by the
replay, a live copy, a duplicate publish — is dropped.

A frame (live or replayed) to a socket that keeps up is written at once, in the call that
sends it, as `websockets`' `send()` writes it (its Sans-I/O protocol frames the text and
`send_data()` hands the bytes to the transport), without the queue, the task switch to the
socket's writer and the send's context manager that each frame to each socket cost before.
The buffer and its writer task take over whenever the socket cannot take a frame at once:
frames are already waiting (order is kept), the transport is above its write limit (`paused`:
the client reads slowly), or the connection is not open. So a slow client is still held to
`send_buffer` frames plus the transport's write limit, and closed with 4008 beyond them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import OPEN

from relaybox.common.auth import Caller
from relaybox.realtime import metrics
from relaybox.realtime.cursor import Position

log = logging.getLogger(__name__)

TOO_SLOW = 4008
INTERNAL_ERROR = 1011
RESTART = 1012
IDLE_CHECKPOINT_S = 30.0
QUIET_S = 1.0
"""A `checkpoint` frame goes out once the stream has been quiet this long (while events flow,
each event's own cursor is as compact): not one extra frame per socket per marker."""
LIVE_BACKLOG = 10_000
"""Live events held while a replay runs; a replay that falls this far behind closes the socket
(too slow), and the client resumes."""


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), default=str)


@functools.cache
def _kind_json(kind: str) -> str:
    """An event kind as JSON (a handful of kinds; encoded once each, not once per frame)."""
    return json.dumps(kind)


@functools.cache
def _frames_of(kind: str) -> Any:
    """The frame counter's child for `kind` (looked up once, not once per frame)."""
    return metrics.FRAMES.labels(kind)


class Connection:
    """A client socket and its stream state."""

    def __init__(
        self,
        socket: ServerConnection,
        caller: Caller,
        device: uuid.UUID | None,
        *,
        send_buffer: int,
        on_message_frame: Callable[[Connection, dict[str, Any]], None] | None = None,
    ) -> None:
        self.id = uuid.uuid4()
        self.socket = socket
        self.caller = caller
        self.tenant = caller.tenant
        self.user = caller.id
        self.device = device
        self.bound_generation = -1  # the replica's marker generation when its binding was made
        self.at = Position()
        self.replaying = True
        self.backlog: list[dict[str, Any]] = []
        self.closing = False
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=send_buffer)
        self._checkpointed_at = time.monotonic()
        self._event_sent_at = 0.0
        self._stale = False  # the client's newest cursor is behind the position
        self._writer: asyncio.Task[None] | None = None
        # What the direct write uses of websockets' connection (its asyncio implementation, not
        # its documented API): without it, every frame goes through the buffer and the writer.
        self._direct = all(hasattr(socket, a) for a in ("paused", "send_in_progress", "send_data"))

    # -- position ---------------------------------------------------------------------------

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.user)

    def cursor(self) -> str:
        return self.at.encode()

    # -- sending ----------------------------------------------------------------------------

    def frame(self, kind: str, event_id: int, xid: int, data_json: str) -> str | None:
        """The event's frame for this client, as text (recording it sent), or None if it had
        it. `data_json` is the event's data, encoded once for every socket it goes to."""
        if self.at.covered(event_id, xid):
            metrics.DUPLICATES.inc()
            return None
        self.at.record(event_id, xid)
        self._event_sent_at = time.monotonic()
        self._stale = False
        return (
            f'{{"type":{_kind_json(kind)},"eventId":{event_id},'
            f'"cursor":"{self.cursor()}","data":{data_json}}}'
        )

    def offer_live(self, event: dict[str, Any]) -> None:
        """A live event from the broker: held during a replay, else queued (a full buffer
        closes the socket: too slow)."""
        if self.closing:
            return
        if self.replaying:
            if len(self.backlog) >= LIVE_BACKLOG:
                self.too_slow()
            else:
                self.backlog.append(event)
            return
        text = self.frame(event["type"], event["id"], event["xid"], event["data_json"])
        if text is not None:
            self.send_text_now(text, event["type"])

    def send_text_now(self, text: str, kind: str) -> None:
        """Send an encoded frame without waiting: written at once when the socket can take it,
        else queued; a full buffer closes the socket with 4008."""
        if self.closing:
            return
        if not self._write_now(text):
            try:
                self._queue.put_nowait(text)
            except asyncio.QueueFull:
                self.too_slow()
                return
        _frames_of(kind).inc()

    def _write_now(self, text: str) -> bool:
        """Write `text` to the transport now if nothing is waiting before it and the socket
        takes it without waiting (open, below its write limit); whether it did."""
        socket = self.socket
        if (
            not self._direct
            or not self._queue.empty()
            or socket.paused
            or socket.send_in_progress is not None
            or socket.protocol.state is not OPEN
        ):
            return False
        try:
            socket.protocol.send_text(text.encode())
            socket.send_data()
        except Exception:  # the transport failed: the client resumes (elsewhere)
            log.warning("a frame could not be written; closing the socket", exc_info=True)
            self.close_soon(INTERNAL_ERROR, "send failed: resume")
        return True

    def send_now(self, frame: dict[str, Any]) -> None:
        """Queue a control frame without waiting; a full buffer closes the socket with 4008."""
        self.send_text_now(dumps(frame), frame["type"])

    async def send(self, frame: dict[str, Any]) -> None:
        """Queue a control frame, waiting for room."""
        await self.send_text(dumps(frame), frame["type"])

    async def send_text(self, text: str, kind: str) -> None:
        """Send an encoded frame, written at once when the socket can take it, else queued,
        waiting for room (the replay's pace is the client's)."""
        if self.closing:
            return
        if not self._write_now(text):
            await self._queue.put(text)
        _frames_of(kind).inc()

    def owes_checkpoint(self, now: float) -> bool:
        """Whether a marker has anything to do here: ids or pending transactions to settle, a
        client cursor behind, or the idle checkpoint due (most sockets, most markers: no)."""
        return bool(
            self.at.sent
            or self.at.pending
            or self._stale
            or now - self._checkpointed_at > IDLE_CHECKPOINT_S
        )

    def checkpoint(self, horizon: int, pending: frozenset[int]) -> None:
        """A marker came back: every event of the transactions below `horizon` but `pending`
        was sent. Tell the client once the stream is quiet (or now and then when idle)."""
        if self.replaying:
            return  # the replay may still owe such events (a marker counts once it is over)
        if self.at.merge((horizon, 0), pending):
            self._stale = True
        now = time.monotonic()
        quiet = now - self._event_sent_at >= QUIET_S
        if self._stale and (quiet or now - self._checkpointed_at > IDLE_CHECKPOINT_S):
            self._checkpointed_at = now
            self._stale = False
            self.send_now({"type": "checkpoint", "cursor": self.cursor()})

    def too_slow(self) -> None:
        if self.closing:
            return
        metrics.SLOW_CLOSES.inc()
        self.close_soon(TOO_SLOW, "too slow: resume")

    def close_soon(self, code: int, reason: str) -> None:
        """Close the socket (from synchronous code): pending frames are dropped."""
        if self.closing:
            return
        self.closing = True
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.socket.close(code, reason)

    # -- the writer -------------------------------------------------------------------------

    def start_writer(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write())

    async def stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await self._writer

    async def _write(self) -> None:
        queue = self._queue
        while True:
            text = await queue.get()
            try:
                await self.socket.send(text)
            except ConnectionClosed:
                return
