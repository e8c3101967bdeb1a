"""Acks, written in batches: every `ack_flush_s`, one transaction per tenant moves the acked
copies to DELIVERED and writes the senders' `message.status` events (with their outbox rows).

An ack that cannot be written (the database is away) is kept and retried; one still unwritten
when the replica dies is lost with it — the copy stays SENT, the device already has the message,
and its next fetch or ack records DELIVERED.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict

from relaybox.realtime import metrics
from relaybox.realtime.store import Store

log = logging.getLogger(__name__)
MAX_PENDING = 100_000
BATCH = 5_000


class AckWriter:
    def __init__(self, store: Store, *, flush_s: float, fanout_batch: int) -> None:
        self._store = store
        self._flush_s = flush_s
        self._fanout_batch = fanout_batch
        self._pending: dict[str, set[tuple[uuid.UUID, str]]] = defaultdict(set)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, tenant: str, copies: list[tuple[uuid.UUID, str]]) -> None:
        pending = self._pending[tenant]
        if len(pending) + len(copies) > MAX_PENDING:
            log.warning("too many unwritten acks: dropping a batch (the copies stay SENT)")
            return
        pending.update(copies)
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._flush_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, defaultdict(set)
        for tenant, copies in pending.items():
            ordered = sorted(copies)
            for start in range(0, len(ordered), BATCH):
                batch = ordered[start : start + BATCH]
                try:
                    moved = await self._store.ack(tenant, batch, self._fanout_batch)
                except Exception as exc:  # noqa: BLE001 - kept and retried
                    metrics.ACK_FAILURES.inc()
                    log.warning("ack batch failed, will retry", extra={"error": repr(exc)})
                    self._pending[tenant].update(batch)
                    self._wake.set()
                    await asyncio.sleep(1.0)
                    continue
                metrics.ACKED.inc(moved)
        if not any(self._pending.values()):
            self._idle.set()

    async def drained(self) -> None:
        """Wait until every ack so far is written (shutdown)."""
        await self._idle.wait()
