"""A socket's stream: where it starts (a cursor, or now), the replay from PostgreSQL, then live
events; and the client's frames (ack, resume, ping).

Why nothing is skipped or sent twice (docs/messenger/stream.md has the argument in full):
- the user's live events are routed here (`Hub.attach`) *before* the replay's first snapshot,
  so an event committed after that snapshot arrives live, and one committed before it is in the
  replay; live events are held until the replay is over, then those it covered are dropped;
- the replay reads in `(xid, id)` order; an event whose transaction had ended at the first
  page's snapshot is final, and so is every such event before it: the position moves past them
  as they are sent, keeping the transactions still running then as pending.
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
from relaybox.realtime.cursor import BadCursorError, Position
from relaybox.realtime.store import Snapshot, Store

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
        position: Position | None = None
        if cursor_text:
            try:
                position = Position.decode(cursor_text)
            except BadCursorError:
                resync = "malformed"
            else:
                swept = await self._store.swept_xid()
                if swept and position.point[0] <= swept:
                    resync = "retention"
                    position = None
        hello: dict[str, Any] = {
            "type": "hello",
            "connectionId": str(conn.id),
            "heartbeatS": self._heartbeat_s,
        }
        if position is None:
            # now: the events of every transaction that has ended are the past
            now = await self._store.snapshot()
            conn.at = Position((now.xmax, 0), now.running)
            await conn.send({**hello, "cursor": conn.cursor()})
            if resync:
                metrics.RESYNCS.labels(resync).inc()
                await conn.send({"type": "resync", "cursor": conn.cursor(), "reason": resync})
        else:
            conn.at = position
            await conn.send({**hello, "cursor": cursor_text})
            await self._replay(conn)
        conn.replaying = False
        conn.send_now({"type": "live", "cursor": conn.cursor()})
        backlog, conn.backlog = conn.backlog, []
        for event in backlog:
            conn.offer_live(event)
        metrics.REPLAY_SECONDS.observe(time.perf_counter() - started)

    async def _replay(self, conn: Connection) -> None:
        start, pending, skip = conn.at.point, sorted(conn.at.pending), list(conn.at.sent)
        after = (0, 0)
        first: Snapshot | None = None
        while True:
            page = await self._store.replay_page(
                tenant=conn.tenant,
                user=conn.user,
                start=start,
                pending=pending,
                after=after,
                skip=skip,
                page=self._page,
            )
            first = first or page.snapshot
            for row in page.rows:
                xid, event_id = int(row["xid"]), int(row["id"])
                if first.final(xid):
                    # every event before it of a transaction ended at the first snapshot was
                    # visible to every page so far, so it was sent
                    conn.at.merge((xid, event_id), (x for x in first.running if x < xid))
                text = conn.frame(row["kind"], event_id, xid, row["payload"])
                if text is not None:
                    await conn.send_text(text, row["kind"])
                    metrics.REPLAYED.inc()
                after = (xid, event_id)
            if len(page.rows) < self._page:
                break
        if first is not None:
            conn.at.merge((first.xmax, 0), first.running)

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
