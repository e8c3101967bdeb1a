"""One client socket: its position in the stream, and its bounded send buffer.

The position is what the cursor says (`relaybox.realtime.cursor`): every event ordered before
`position` (by `(xid, id)`) was sent, and so were the events in `sent` (id → xid). An event is
sent once: whatever is already covered — by the replay, a live copy, a duplicate publish — is
dropped (`covered`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relaybox.common.auth import Caller
from relaybox.realtime import metrics
from relaybox.realtime.cursor import Cursor

TOO_SLOW = 4008
RESTART = 1012
IDLE_CHECKPOINT_S = 30.0
LIVE_BACKLOG = 10_000
"""Live events held while a replay runs; a replay that falls this far behind closes the socket
(too slow), and the client resumes."""


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), default=str)


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
        self.position = (0, 0)
        self.sent: dict[int, int] = {}
        self.replaying = True
        self.backlog: list[dict[str, Any]] = []
        self.closing = False
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=send_buffer)
        self._checkpointed_at = time.monotonic()
        self._checkpoint_x = 0
        self._writer: asyncio.Task[None] | None = None

    # -- position ---------------------------------------------------------------------------

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.user)

    def cursor(self) -> str:
        x, i = self.position
        return Cursor(x, i, tuple(sorted(self.sent.items()))).encode()

    def start_at(self, cursor: Cursor) -> None:
        self.position = cursor.position
        self.sent = dict(cursor.sent)

    def covered(self, event_id: int, xid: int) -> bool:
        return (xid, event_id) < self.position or event_id in self.sent

    def advance(self, position: tuple[int, int]) -> bool:
        """Everything ordered before `position` was sent: forget the ids there. True if the
        position moved."""
        if position <= self.position:
            return False
        self.position = position
        self.sent = {i: v for i, v in self.sent.items() if (v, i) >= position}
        return True

    # -- sending ----------------------------------------------------------------------------

    def frame(self, kind: str, event_id: int, xid: int, data: Any) -> dict[str, Any] | None:
        """The event's frame for this client (recording it sent), or None if it had it."""
        if self.covered(event_id, xid):
            metrics.DUPLICATES.inc()
            return None
        self.sent[event_id] = xid
        return {"type": kind, "eventId": event_id, "cursor": self.cursor(), "data": data}

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
        frame = self.frame(event["type"], event["id"], event["xid"], event["data"])
        if frame is not None:
            self.send_now(frame)

    def send_now(self, frame: dict[str, Any]) -> None:
        """Queue a frame without waiting; a full buffer closes the socket with 4008."""
        if self.closing:
            return
        try:
            self._queue.put_nowait(dumps(frame))
        except asyncio.QueueFull:
            self.too_slow()
            return
        metrics.FRAMES.labels(frame["type"]).inc()

    async def send(self, frame: dict[str, Any]) -> None:
        """Queue a frame, waiting for room (the replay's pace is the client's)."""
        if self.closing:
            return
        await self._queue.put(dumps(frame))
        metrics.FRAMES.labels(frame["type"]).inc()

    def checkpoint(self, horizon: int) -> None:
        """Advance past every transaction below `horizon`; tell the client when ids were
        forgotten, or now and then when idle."""
        if self.replaying:
            return  # the replay may still owe events below it (a marker counts once it is over)
        had_ids = bool(self.sent)
        if not self.advance((horizon, 0)):
            return
        now = time.monotonic()
        if (had_ids and len(self.sent) == 0) or now - self._checkpointed_at > IDLE_CHECKPOINT_S:
            self._checkpointed_at = now
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
