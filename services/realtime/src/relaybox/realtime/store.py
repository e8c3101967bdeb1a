"""What the realtime service reads and writes in PostgreSQL: the replay, the checkpoint
horizon, tickets, presence and acks. Every statement is one round trip."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.chat.delivery import RecipientStatus
from relaybox.common.chat.events import Move, record_statuses

SNAPSHOT = text(
    "SELECT (pg_snapshot_xmax(pg_current_snapshot())::text)::bigint AS xmax, "
    "ARRAY(SELECT (x::text)::bigint FROM pg_snapshot_xip(pg_current_snapshot()) x) AS xip"
)
"""Now: every transaction below `xmax` but those in `xip` (still running) has ended."""

HORIZON = text(
    """
SELECT LEAST(s.xmax, (SELECT min(xid) FROM outbox WHERE xid IS NOT NULL)) AS horizon,
       ARRAY(SELECT (x::text)::bigint FROM pg_snapshot_xip(s.snapshot) x) AS pending
FROM (SELECT pg_current_snapshot() AS snapshot,
             (pg_snapshot_xmax(pg_current_snapshot())::text)::bigint AS xmax) s
"""
)
"""The checkpoint: every transaction below the horizon has ended but those pending, and every
event of those ended has been published — the horizon is below the oldest event whose outbox
row is still there — so it was routed to the replicas' queues."""

REPLAY = text(
    """
WITH snapshot AS (
    SELECT (pg_snapshot_xmax(pg_current_snapshot())::text)::bigint AS xmax,
           ARRAY(SELECT (x::text)::bigint FROM pg_snapshot_xip(pg_current_snapshot()) x) AS xip
),
owed AS (
    (SELECT r.xid, r.event_id FROM chat_event_readers r
     WHERE r.tenant_id = :tenant AND r.user_id = :user
       AND (r.xid, r.event_id) >= (:start_xid, :start_id)
       AND (r.xid, r.event_id) > (:after_xid, :after_id)
       AND NOT (r.event_id = ANY(CAST(:skip AS bigint[])))
     ORDER BY r.xid, r.event_id
     LIMIT :page)
    UNION ALL
    (SELECT r.xid, r.event_id FROM chat_event_readers r
     WHERE r.tenant_id = :tenant AND r.user_id = :user
       AND r.xid = ANY(CAST(:pending AS bigint[]))
       AND (r.xid, r.event_id) < (:start_xid, :start_id)
       AND (r.xid, r.event_id) > (:after_xid, :after_id)
       AND NOT (r.event_id = ANY(CAST(:skip AS bigint[])))
     ORDER BY r.xid, r.event_id
     LIMIT :page)
),
page AS (
    SELECT e.id, e.xid, e.kind, e.payload
    FROM owed JOIN chat_events e ON e.id = owed.event_id
    ORDER BY owed.xid, owed.event_id
    LIMIT :page
)
SELECT snapshot.xmax, snapshot.xip, page.id, page.xid, page.kind, page.payload
FROM snapshot LEFT JOIN page ON true
ORDER BY page.xid, page.id
"""
)
"""One page of the events a position does not cover that `user` may see, in (xid, id) order —
those from its point on, and those of its pending transactions — read from the user's own
`chat_event_readers` rows; with the page's snapshot (xmax and the transactions still running)."""

SWEPT = text("SELECT swept_xid FROM chat_stream_state WHERE id = 1")

USE_TICKET = text(
    "INSERT INTO chat_stream_tickets (jti, expires_at) VALUES (:jti, :expires_at) "
    "ON CONFLICT DO NOTHING RETURNING jti"
)

OWN_DEVICE = text(
    "SELECT 1 FROM chat_devices WHERE id = :device AND tenant_id = :tenant AND user_id = :user"
)
PRESENT = text(
    "INSERT INTO chat_presence (connection_id, device_id, tenant_id, user_id, replica) "
    "VALUES (:connection, :device, :tenant, :user, :replica)"
)
ABSENT = text("DELETE FROM chat_presence WHERE connection_id = ANY(CAST(:connections AS uuid[]))")
SEEN = text("UPDATE chat_presence SET seen_at = now() WHERE replica = :replica")
GONE = text("DELETE FROM chat_presence WHERE replica = :replica")

ACK = text(
    """
WITH acked AS (
    SELECT DISTINCT a.message_id, a.user_id
    FROM unnest(CAST(:messages AS uuid[]), CAST(:users AS varchar[])) AS a(message_id, user_id)
),
locked AS (
    SELECT r.message_id, r.user_id
    FROM chat_recipients r
    JOIN acked USING (message_id, user_id)
    JOIN chat_messages m ON m.id = r.message_id AND m.tenant_id = :tenant
    WHERE r.status IN ('PENDING', 'SENT', 'FAILED')
    ORDER BY r.message_id, r.user_id
    FOR UPDATE OF r
)
UPDATE chat_recipients r
SET status = 'DELIVERED', delivered_at = coalesce(r.delivered_at, now())
FROM locked, chat_messages m
WHERE r.message_id = locked.message_id AND r.user_id = locked.user_id
  AND m.id = r.message_id
  AND r.status IN ('PENDING', 'SENT', 'FAILED')
RETURNING r.message_id, r.conversation_id, m.sender_id, r.user_id
"""
)
"""Acked copies move to DELIVERED (forward only: from PENDING, SENT or FAILED, as
`relaybox.common.chat.delivery.MOVES_TO` says); the moved ones come
back with their sender, who is told."""


@dataclass(frozen=True)
class Snapshot:
    """Every transaction below `xmax` but those in `running` has ended."""

    xmax: int
    running: frozenset[int]

    def final(self, xid: int) -> bool:
        return xid < self.xmax and xid not in self.running


@dataclass(frozen=True)
class Page:
    snapshot: Snapshot
    rows: list[Any]


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def horizon(self) -> tuple[int, frozenset[int]]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(HORIZON)).one()
        return int(row.horizon), frozenset(x for x in row.pending if x < row.horizon)

    async def snapshot(self) -> Snapshot:
        async with self.engine.connect() as conn:
            row = (await conn.execute(SNAPSHOT)).one()
        return Snapshot(int(row.xmax), frozenset(row.xip))

    async def swept_xid(self) -> int:
        async with self.engine.connect() as conn:
            value = (await conn.execute(SWEPT)).scalar()
        return int(value or 0)

    async def replay_page(
        self,
        *,
        tenant: str,
        user: str,
        start: tuple[int, int],
        pending: Sequence[int],
        after: tuple[int, int],
        skip: Sequence[int],
        page: int,
    ) -> Page:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    REPLAY,
                    {
                        "tenant": tenant,
                        "user": user,
                        "start_xid": start[0],
                        "start_id": start[1],
                        "pending": list(pending),
                        "after_xid": after[0],
                        "after_id": after[1],
                        "skip": list(skip),
                        "page": page,
                    },
                )
            ).all()
        snapshot = Snapshot(int(rows[0].xmax), frozenset(rows[0].xip))
        return Page(snapshot, [row for row in rows if row.id is not None])

    async def use_ticket(self, jti: str, expires_at: Any) -> bool:
        async with self.engine.begin() as conn:
            return (
                await conn.execute(USE_TICKET, {"jti": jti, "expires_at": expires_at})
            ).first() is not None

    async def owns_device(self, tenant: str, user: str, device: uuid.UUID) -> bool:
        async with self.engine.connect() as conn:
            found = await conn.execute(
                OWN_DEVICE, {"device": device, "tenant": tenant, "user": user}
            )
            return found.first() is not None

    async def present(
        self, connection: uuid.UUID, device: uuid.UUID, tenant: str, user: str, replica: str
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                PRESENT,
                {
                    "connection": connection,
                    "device": device,
                    "tenant": tenant,
                    "user": user,
                    "replica": replica,
                },
            )

    async def absent(self, connections: Sequence[uuid.UUID]) -> None:
        if connections:
            async with self.engine.begin() as conn:
                await conn.execute(ABSENT, {"connections": list(connections)})

    async def seen(self, replica: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(SEEN, {"replica": replica})

    async def gone(self, replica: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(GONE, {"replica": replica})

    async def ack(
        self, tenant: str, copies: Sequence[tuple[uuid.UUID, str]], fanout_batch: int
    ) -> int:
        """Record DELIVERED for these (message, user) copies of `tenant` and tell their senders,
        in one transaction; returns how many copies moved."""
        async with self.engine.begin() as conn:
            moved = (
                await conn.execute(
                    ACK,
                    {
                        "tenant": tenant,
                        "messages": [c[0] for c in copies],
                        "users": [c[1] for c in copies],
                    },
                )
            ).all()
            if moved:
                await record_statuses(
                    conn,
                    tenant=tenant,
                    status=RecipientStatus.DELIVERED.value,
                    moves=[
                        Move(r.message_id, r.conversation_id, r.sender_id, r.user_id) for r in moved
                    ],
                    fanout_batch=fanout_batch,
                )
        return len(moved)
