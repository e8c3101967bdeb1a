"""The sweeper: re-enqueue outbound rows stuck past their lease, through the outbox.

Each sweep takes a batch with `FOR UPDATE SKIP LOCKED` and bumps `updated_at`, so several
sweepers (one per consumer replica) never take the same row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.outbox import enqueue
from relaybox.consumer.delivery import DeliveryTable

log = logging.getLogger(__name__)
REQUEUED = Counter("relaybox_sweeper_requeued_total", "Stuck rows re-enqueued", ("table",))


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

    async def sweep_table(self, swept: SweptRoute) -> list[str]:
        """One batch of one table; the ids this sweeper took (and re-enqueued)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                text(
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
                ),
                {"stale": self.stale_pending_s, "limit": self.batch_size},
            )
            ids = [row[0] for row in result]
            for row_id in ids:
                await enqueue(conn, routing_key=swept.route, payload={"id": row_id})
        if ids:
            REQUEUED.labels(swept.table.table).inc(len(ids))
            log.warning(
                "re-enqueued stuck rows", extra={"table": swept.table.table, "count": len(ids)}
            )
        return ids

    async def sweep(self) -> int:
        """Sweep every table once; how many rows were re-enqueued."""
        return sum([len(await self.sweep_table(r)) for r in self.routes])
