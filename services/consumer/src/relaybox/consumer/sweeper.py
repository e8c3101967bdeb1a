"""The sweeper: re-enqueue outbound rows stuck past their lease, and mailings whose parse stopped
making progress, through the outbox; and delete what outlived its retention: stored
Idempotency-Key answers nobody can replay any more, webhook events past any provider's retries,
chat uploads no message ever referenced (and their files, when no other row names them), chat
events past their retention (raising the stream's horizon, `chat_stream_state.swept_xid`, in the
same statement), used stream tickets past their expiry, and presence rows a killed realtime
replica left behind.

Each sweep takes a batch with `FOR UPDATE SKIP LOCKED` and bumps `updated_at`, so several
sweepers (one per consumer replica) never take the same row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter
from sqlalchemy import TextClause, exists, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relaybox.common.chat.storage import AttachmentStore, lock_file
from relaybox.common.db.models import ChatAttachment
from relaybox.common.mailings.rules import UNPARSED_SQL
from relaybox.common.messaging.topology import MAILING_PARSE
from relaybox.common.outbox import enqueue
from relaybox.common.settings import ChatSettings
from relaybox.consumer.delivery import DeliveryTable

log = logging.getLogger(__name__)
REQUEUED = Counter("relaybox_sweeper_requeued_total", "Stuck rows re-enqueued", ("table",))
# A running parse bumps updated_at with every chunk it reads (~1 s apart), so a mailing still
# unparsed and untouched for stale_parse_s has no parse making progress: its message was lost
# to the DLQ (a consumer killed with it more often than the delivery limit allows) or never
# came. Parsing is idempotent, so a second message for a parse that was merely slow is harmless.
STALE_PARSES = text(
    f"""
    UPDATE mailings AS m SET updated_at = now()
    FROM (
        SELECT id FROM mailings
        WHERE {UNPARSED_SQL}
          AND updated_at < now() - make_interval(secs => :stale)
        ORDER BY updated_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) AS stale
    WHERE m.id = stale.id
    RETURNING m.id::text
    """  # noqa: S608 - constants of the code
)
PURGED = Counter(
    "relaybox_sweeper_purged_total",
    "Rows deleted once older than their retention (idempotency_keys, webhook_events, "
    "chat_attachments, chat_events, chat_stream_tickets, chat_presence)",
    ("table",),
)
ATTACHMENT_FILES_DELETED = Counter(
    "relaybox_sweeper_attachment_files_deleted_total",
    "Attachment files deleted from the store once no chat_attachments row named them",
)
# Uploads never attached to a message, older than the retention (the partial index on
# created_at WHERE attached_at IS NULL finds them); a link without attached_at keeps one too.
UNATTACHED_UPLOADS = text(
    """
    DELETE FROM chat_attachments WHERE id = ANY(ARRAY(
        SELECT a.id FROM chat_attachments AS a
        WHERE a.attached_at IS NULL
          AND a.created_at < now() - make_interval(secs => :keep_s)
          AND NOT EXISTS (
              SELECT 1 FROM chat_message_attachments AS m WHERE m.attachment_id = a.id
          )
        ORDER BY a.created_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING sha256
    """
)


# One batch of chat events past the retention, and the stream's horizon raised to the highest
# xid deleted, in one statement (so one transaction: a resume never sees the events gone and the
# horizon below them). The upsert keeps working if the one row is missing.
EXPIRED_EVENTS = text(
    """
    WITH doomed AS MATERIALIZED (
        SELECT id, xid FROM chat_events
        WHERE created_at < now() - make_interval(secs => :keep_s)
        ORDER BY created_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), horizon AS (
        INSERT INTO chat_stream_state AS s (id, swept_xid)
        SELECT 1, max(xid) FROM doomed HAVING count(*) > 0
        ON CONFLICT (id) DO UPDATE SET swept_xid = GREATEST(s.swept_xid, EXCLUDED.swept_xid)
    ), readers AS (
        DELETE FROM chat_event_readers WHERE event_id IN (SELECT id FROM doomed)
    )
    DELETE FROM chat_events WHERE id IN (SELECT id FROM doomed)
    """
)
PRESENCE_LEFTOVERS = 10
"""A presence row unseen for this many presence TTLs belongs to a replica that died."""


@dataclass(frozen=True)
class Retention:
    """Rows of `table` older than `keep_s` by `column` are deleted."""

    table: str
    column: str
    keep_s: float

    def statement(self) -> TextClause:
        return text(
            f"""
            DELETE FROM {self.table} WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM {self.table}
                WHERE {self.column} < now() - make_interval(secs => :keep_s)
                LIMIT :limit
                FOR UPDATE SKIP LOCKED
            ))
            """  # noqa: S608 - table and column names are constants of the code
        )


@dataclass(frozen=True)
class SweptRoute:
    table: DeliveryTable
    route: str


@dataclass
class Sweeper:
    """Finds SENDING rows whose lease ran out and PENDING rows untouched for `stale_pending_s`."""

    engine: AsyncEngine
    routes: list[SweptRoute]
    stale_pending_s: float = 900.0
    batch_size: int = 500
    idempotency_retention_s: float = 48 * 3600.0
    webhook_event_retention_s: float = 7 * 24 * 3600.0
    stale_parse_s: float = 600.0
    purge_batch_size: int = 5000
    attachment_store: AttachmentStore | None = None  # None: chat uploads are not swept
    attachment_retention_s: float = 24 * 3600.0
    attachment_batch_size: int = 100
    event_retention_s: float = ChatSettings().event_retention_h * 3600
    presence_ttl_s: float = ChatSettings().presence_ttl_s

    async def sweep_table(self, swept: SweptRoute) -> list[str]:
        """One batch of one table; the ids this sweeper took (and re-enqueued)."""
        stuck = text(
            f"""
            UPDATE {swept.table.table} AS t
            SET status = 'PENDING', lease_until = NULL, updated_at = now()
            FROM (
                SELECT id FROM {swept.table.table}
                WHERE (status = 'SENDING' AND lease_until < now())
                   OR (status = 'PENDING'
                       AND updated_at < now() - make_interval(secs => :stale))
                ORDER BY updated_at
                LIMIT :limit
                FOR UPDATE SKIP LOCKED
            ) AS stuck
            WHERE t.id = stuck.id
            RETURNING t.id::text
            """  # noqa: S608 - table names are constants of the code
        )
        return await self._requeue(swept.table.table, stuck, self.stale_pending_s, swept.route)

    async def requeue_stale_parses(self) -> list[str]:
        """Mailings whose parse stopped making progress, re-enqueued; their ids."""
        return await self._requeue("mailings", STALE_PARSES, self.stale_parse_s, MAILING_PARSE)

    async def _requeue(
        self, table: str, statement: TextClause, stale_s: float, route: str
    ) -> list[str]:
        """Take one batch with `statement` and enqueue a `route` message for each id taken, in
        one transaction."""
        async with self.engine.begin() as conn:
            result = await conn.execute(statement, {"stale": stale_s, "limit": self.batch_size})
            ids = [row[0] for row in result]
            for row_id in ids:
                await enqueue(conn, routing_key=route, payload={"id": row_id})
        if ids:
            REQUEUED.labels(table).inc(len(ids))
            log.warning("re-enqueued stuck rows", extra={"table": table, "count": len(ids)})
        return ids

    def retentions(self) -> list[Retention]:
        return [
            Retention("idempotency_keys", "created_at", self.idempotency_retention_s),
            Retention("webhook_events", "received_at", self.webhook_event_retention_s),
            Retention("chat_stream_tickets", "expires_at", 0.0),
            Retention("chat_presence", "seen_at", PRESENCE_LEFTOVERS * self.presence_ttl_s),
        ]

    async def purge(self, retention: Retention) -> int:
        """Delete one batch of `retention.table`'s rows older than the retention; how many."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                retention.statement(), {"keep_s": retention.keep_s, "limit": self.purge_batch_size}
            )
        PURGED.labels(retention.table).inc(result.rowcount)
        return result.rowcount

    async def purge_events(self) -> int:
        """Delete one batch of chat events older than the retention, first raising the
        stream's horizon to the highest xid deleted (one statement); how many."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                EXPIRED_EVENTS, {"keep_s": self.event_retention_s, "limit": self.purge_batch_size}
            )
        PURGED.labels("chat_events").inc(result.rowcount)
        return result.rowcount

    async def purge_unattached_uploads(self) -> int:
        """Delete one batch of chat uploads no message referenced within the retention, and
        each file no other row names; how many rows.

        One transaction: a file that cannot be deleted leaves its rows for the next sweep. Each
        file is checked and deleted under its advisory lock, which an upload of the same bytes
        holds until its row commits, so a file is never deleted under a row about to name it.
        """
        if self.attachment_store is None:
            return 0
        async with self.engine.begin() as conn:
            result = await conn.execute(
                UNATTACHED_UPLOADS,
                {"keep_s": self.attachment_retention_s, "limit": self.attachment_batch_size},
            )
            purged = [sha256 for (sha256,) in result]
            digests = sorted(set(purged))  # one lock order for every sweeper
            deleted = [sha256 for sha256 in digests if await self._delete_file(conn, sha256)]
        PURGED.labels("chat_attachments").inc(len(purged))
        ATTACHMENT_FILES_DELETED.inc(len(deleted))
        return len(purged)

    async def _delete_file(self, conn: AsyncConnection, sha256: str) -> bool:
        """Delete the file if no row names it any more (under its lock); whether it was."""
        assert self.attachment_store is not None
        await lock_file(conn, sha256)
        if await conn.scalar(select(exists().where(ChatAttachment.sha256 == sha256))):
            return False
        await self.attachment_store.delete(sha256)
        return True

    async def sweep(self) -> int:
        """Sweep every table once, and purge what outlived its retention; how many rows were
        re-enqueued."""
        requeued = sum([len(await self.sweep_table(r)) for r in self.routes])
        await self.requeue_stale_parses()
        for retention in self.retentions():
            await self.purge(retention)
        await self.purge_events()
        await self.purge_unattached_uploads()
        return requeued
