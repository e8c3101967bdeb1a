"""A socket's stream: where it starts (a cursor, or now), the replay from PostgreSQL, then live
events; and the client's frames (ack, resume, ping).

Why nothing is skipped or sent twice (docs/messenger/stream.md has the argument in full):
- the user's live events are routed here (`Hub.attach`) *before* the replay's first snapshot,
  so an event committed after that snapshot arrives live, and one committed before it is in the
  replay; live events are held until the replay is over, then those it covered are dropped;
- the replay reads in `(xid, id)` order; below the first page's snapshot xmin every event is
  final, so the position advances past an event there as it is sent, and to that xmin at the end.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from relaybox.realtime import metrics
from relaybox.realtime.acks import AckWriter
from relaybox.realtime.connection import Connection
from relaybox.realtime.cursor import BadCursorError, Cursor
from relaybox.realtime.store import Store

log = logging.getLogger(__name__)
MAX_ACK_IDS = 1000


class Streams:
    """Starts sockets' streams and answers their frames."""

    def __init__(
        self, store: Store, acks: AckWriter, *, replay_page: int, heartbeat_s: float
    ) -> None:
        self._store = store
        self._acks = acks
        self._page = replay_page
        self._heartbeat_s = heartbeat_s

    async def start(self, conn: Connection, cursor_text: str | None) -> None:
        """Replay from `cursor_text` (or start now), then go live."""
        started = time.perf_counter()
        conn.replaying = True
        conn.backlog = []
        resync: str | None = None
        cursor: Cursor | None = None
        if cursor_text:
            try:
                cursor = Cursor.decode(cursor_text)
            except BadCursorError:
                resync = "malformed"
            else:
                swept = await self._store.swept_xid()
                if swept and cursor.x <= swept:
                    resync = "retention"
                    cursor = None
        hello: dict[str, Any] = {
            "type": "hello",
            "connectionId": str(conn.id),
            "heartbeatS": self._heartbeat_s,
        }
        if cursor is None:
            conn.start_at(Cursor(await self._store.xmin()))  # (xmin, 0): the events after now
            await self._replay(conn, silent=True)
            await conn.send({**hello, "cursor": conn.cursor()})
            if resync:
                metrics.RESYNCS.labels(resync).inc()
                await conn.send({"type": "resync", "cursor": conn.cursor(), "reason": resync})
        else:
            conn.start_at(cursor)
            await conn.send({**hello, "cursor": cursor_text})
            await self._replay(conn, silent=False)
        conn.replaying = False
        conn.send_now({"type": "live", "cursor": conn.cursor()})
        backlog, conn.backlog = conn.backlog, []
        for event in backlog:
            conn.offer_live(event)
        metrics.REPLAY_SECONDS.observe(time.perf_counter() - started)

    async def _replay(self, conn: Connection, *, silent: bool) -> None:
        skip = list(conn.sent)
        after = (0, 0)
        start = conn.position
        first_xmin: int | None = None
        while True:
            page = await self._store.replay_page(
                tenant=conn.tenant,
                user=conn.user,
                start=start,
                after=after,
                skip=skip,
                page=self._page,
            )
            if first_xmin is None:
                first_xmin = page.xmin
            for row in page.rows:
                xid, event_id = int(row.xid), int(row.id)
                if xid < first_xmin:
                    # below the first snapshot's xmin every event is final and was in the pages
                    # so far: all those ordered before this one were sent
                    conn.advance((xid, event_id))
                frame = conn.frame(row.kind, event_id, xid, row.payload)
                if frame is not None and not silent:
                    await conn.send(frame)
                    metrics.REPLAYED.inc()
                after = (xid, event_id)
            if len(page.rows) < self._page:
                break
        if first_xmin is not None:
            conn.advance((first_xmin, 0))

    async def on_frame(self, conn: Connection, raw: str | bytes) -> None:
        """One client frame; a bad one is answered with an `error` frame."""
        try:
            frame = _parse(raw)
            kind = frame.get("type")
            if kind == "ping":
                conn.send_now({"type": "pong"})
            elif kind == "ack":
                ids = _message_ids(frame.get("messageIds"))
                self._acks.add(conn.tenant, [(i, conn.user) for i in ids])
            elif kind == "resume":
                cursor = frame.get("cursor")
                if not isinstance(cursor, str) or not cursor:
                    raise FrameError("resume needs a 'cursor' string")
                await self.start(conn, cursor)
            else:
                raise FrameError(f"unknown frame type {kind!r}: expected ack, resume or ping")
        except FrameError as exc:
            conn.send_now({"type": "error", "error": str(exc)})


class FrameError(ValueError):
    """A client frame this service cannot take."""


def _parse(raw: str | bytes) -> dict[str, Any]:
    try:
        frame = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise FrameError("a frame is a JSON object") from None
    if not isinstance(frame, dict):
        raise FrameError("a frame is a JSON object")
    return frame


def _message_ids(value: Any) -> list[uuid.UUID]:
    if not isinstance(value, list) or not value:
        raise FrameError("ack needs 'messageIds', a non-empty list of message ids")
    if len(value) > MAX_ACK_IDS:
        raise FrameError(f"ack at most {MAX_ACK_IDS} messageIds per frame")
    try:
        return [uuid.UUID(v) for v in value]
    except (TypeError, ValueError, AttributeError):
        raise FrameError("'messageIds' must hold message ids (UUID strings)") from None
