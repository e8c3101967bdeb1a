"""What the realtime service reads and writes in PostgreSQL: the replay, the checkpoint
horizon, tickets, presence and acks. Every call is one statement.

The per-socket statements (a connect, a resume, presence) run on a plain asyncpg pool: a
reconnect storm is thousands of them, and SQLAlchemy's per-statement work (and its pre-ping
round trip) cost more than the statements. Acks write events with `relaybox.common.chat.events`,
on the SQLAlchemy engine.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.chat.delivery import RecipientStatus, statuses_before
from relaybox.common.chat.events import Move, record_statuses

SNAPSHOT = """
SELECT (pg_snapshot_xmax(pg_current_snapshot())::text)::bigint AS xmax,
       ARRAY(SELECT (x::text)::bigint FROM pg_snapshot_xip(pg_current_snapshot()) x) AS xip
"""
"""Now: every transaction below `xmax` but those in `xip` (still running) has ended."""

HORIZON = """
SELECT LEAST(s.xmax, (SELECT min(xid) FROM outbox WHERE xid IS NOT NULL)) AS horizon,
       ARRAY(SELECT (x::text)::bigint FROM pg_snapshot_xip(s.snapshot) x) AS pending
FROM (SELECT pg_current_snapshot() AS snapshot,
             (pg_snapshot_xmax(pg_current_snapshot())::text)::bigint AS xmax) s
"""
"""The checkpoint: every transaction below the horizon has ended but those pending, and every
event of those ended has been published — the horizon is below the oldest event whose outbox
row is still there — so it was routed to the replicas' queues."""

REPLAY = """
WITH snapshot AS (
    SELECT (pg_snapshot_xmax(pg_current_snapshot())::text)::bigint AS xmax,
           ARRAY(SELECT (x::text)::bigint FROM pg_snapshot_xip(pg_current_snapshot()) x) AS xip
),
owed AS (
    (SELECT r.xid, r.event_id FROM chat_event_readers r
     WHERE r.tenant_id = $1 AND r.user_id = $2
       AND (r.xid, r.event_id) >= ($3::bigint, $4::bigint)
       AND (r.xid, r.event_id) > ($6::bigint, $7::bigint)
       AND NOT (r.event_id = ANY($8::bigint[]))
     ORDER BY r.xid, r.event_id
     LIMIT $9)
    UNION ALL
    (SELECT r.xid, r.event_id
     FROM unnest($5::bigint[]) AS pending(xid) CROSS JOIN LATERAL (
         SELECT r.xid, r.event_id FROM chat_event_readers r
         WHERE r.tenant_id = $1 AND r.user_id = $2 AND r.xid = pending.xid
           AND (r.xid, r.event_id) < ($3::bigint, $4::bigint)
           AND (r.xid, r.event_id) > ($6::bigint, $7::bigint)
           AND NOT (r.event_id = ANY($8::bigint[]))
         ORDER BY r.xid, r.event_id
         LIMIT $9
     ) r
     ORDER BY r.xid, r.event_id
     LIMIT $9)
),
page AS (
    SELECT owed.event_id AS id, owed.xid, e.kind, e.payload::text AS payload
    FROM owed CROSS JOIN LATERAL (
        SELECT kind, payload FROM chat_events WHERE id = owed.event_id OFFSET 0
    ) e
    ORDER BY owed.xid, owed.event_id
    LIMIT $9
)
SELECT snapshot.xmax, snapshot.xip, page.id, page.xid, page.kind, page.payload
FROM snapshot LEFT JOIN page ON true
ORDER BY page.xid, page.id
"""
"""One page of the events a position does not cover that the user may see, in (xid, id)
order — those from its point on, and those of its pending transactions — read from the user's
own `chat_event_readers` rows; with the page's snapshot (xmax and the transactions still
running). The data comes back as JSON text, sent on as it is.

A pending transaction's rows are looked up by its xid (`unnest`), a primary-key probe each: a
filter `xid = ANY(pending)` over the rows before the point read every event the user had
since the retention's start, on every page of every resume, to find none in the usual case
(nothing pending). Each event of the page is fetched by its key (a `LATERAL` the planner cannot
turn into a hash join over the whole table when it expects many rows)."""

PLAN_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
"""The replica's pool plans each call for its values and the tables' current statistics. A
connection outlives the table sizes a cached generic plan was made for (PostgreSQL switches a
prepared statement to one after five calls when it looks no costlier): in `bench.realtime_storm`,
on tables that grow from empty, the replay's generic plan cost PostgreSQL 8.6-8.9 s of CPU
against 6.7-7.2 s planned per call. Planning the replay costs ~0.5 ms a page, as it always did."""

SWEPT = "SELECT swept_xid FROM chat_stream_state WHERE id = 1"
SWEPT_CACHE_S = 1.0

USE_TICKET = (
    "INSERT INTO chat_stream_tickets (jti, expires_at) VALUES ($1, $2) "
    "ON CONFLICT DO NOTHING RETURNING jti"
)
OWN_DEVICE = "SELECT 1 FROM chat_devices WHERE id = $1 AND tenant_id = $2 AND user_id = $3"
PRESENT = (
    "INSERT INTO chat_presence (connection_id, device_id, tenant_id, user_id, replica) "
    "VALUES ($1, $2, $3, $4, $5)"
)
ABSENT = "DELETE FROM chat_presence WHERE connection_id = ANY($1::uuid[])"
SEEN = "UPDATE chat_presence SET seen_at = now() WHERE replica = $1"
GONE = "DELETE FROM chat_presence WHERE replica = $1"

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
    WHERE r.status = ANY(CAST(:movable AS varchar[]))
    ORDER BY r.message_id, r.user_id
    FOR UPDATE OF r
)
UPDATE chat_recipients r
SET status = 'DELIVERED', delivered_at = coalesce(r.delivered_at, now())
FROM locked, chat_messages m
WHERE r.message_id = locked.message_id AND r.user_id = locked.user_id
  AND m.id = r.message_id
  AND r.status = ANY(CAST(:movable AS varchar[]))
RETURNING r.message_id, r.conversation_id, m.sender_id, r.user_id
"""
)
"""Acked copies move to DELIVERED (forward only: from the statuses
`relaybox.common.chat.delivery.MOVES_TO` allows, `:movable`); the moved ones come back with
their sender, who is told."""
MOVABLE = statuses_before(RecipientStatus.DELIVERED)


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
    def __init__(self, engine: AsyncEngine, pool: asyncpg.Pool) -> None:
        self.engine = engine
        self.pool = pool
        self._swept: tuple[float, int] = (0.0, 0)

    async def horizon(self) -> tuple[int, frozenset[int]]:
        row = await self.pool.fetchrow(HORIZON)
        assert row is not None
        horizon = int(row["horizon"])
        return horizon, frozenset(x for x in row["pending"] if x < horizon)

    async def snapshot(self) -> Snapshot:
        row = await self.pool.fetchrow(SNAPSHOT)
        assert row is not None
        return Snapshot(int(row["xmax"]), frozenset(row["xip"]))

    async def swept_xid(self) -> int:
        """Events up to this xid may have been deleted (read at most once a second)."""
        read_at, value = self._swept
        if time.monotonic() - read_at > SWEPT_CACHE_S:
            value = int(await self.pool.fetchval(SWEPT) or 0)
            self._swept = (time.monotonic(), value)
        return value

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
        rows = await self.pool.fetch(
            REPLAY, tenant, user, start[0], start[1], list(pending), after[0], after[1],
            list(skip), page,
        )  # fmt: skip
        snapshot = Snapshot(int(rows[0]["xmax"]), frozenset(rows[0]["xip"]))
        return Page(snapshot, [row for row in rows if row["id"] is not None])

    async def use_ticket(self, jti: str, expires_at: datetime) -> bool:
        return await self.pool.fetchval(USE_TICKET, jti, expires_at) is not None

    async def owns_device(self, tenant: str, user: str, device: uuid.UUID) -> bool:
        return await self.pool.fetchval(OWN_DEVICE, device, tenant, user) is not None

    async def present(
        self, connection: uuid.UUID, device: uuid.UUID, tenant: str, user: str, replica: str
    ) -> None:
        await self.pool.execute(PRESENT, connection, device, tenant, user, replica)

    async def absent(self, connections: Sequence[uuid.UUID]) -> None:
        if connections:
            await self.pool.execute(ABSENT, list(connections))

    async def seen(self, replica: str) -> None:
        await self.pool.execute(SEEN, replica)

    async def gone(self, replica: str) -> None:
        await self.pool.execute(GONE, replica)

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
                        "movable": MOVABLE,
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
