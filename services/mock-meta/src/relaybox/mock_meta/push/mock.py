"""The push gateway mock: decides sends, then posts each owed receipt in the background once
its latency passed and its device is online."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

import msgspec

from relaybox.mock_meta.meta.models import format_timestamp
from relaybox.mock_meta.meta.state import Clock
from relaybox.mock_meta.metrics import PUSH_RECEIPT_RETRIES, PUSH_RECEIPTS
from relaybox.mock_meta.push.models import (
    PushConfig,
    PushConfigPatch,
    PushRecord,
    Receipt,
    ReceiptBatch,
)
from relaybox.mock_meta.push.network import FOREVER, device, offline_until
from relaybox.mock_meta.push.state import Answer, Delivery, PushState
from relaybox.mock_meta.settings import PushMockSettings
from relaybox.mock_meta.webhooks import BackgroundTasks, WebhookSender

log = logging.getLogger(__name__)


RECEIPT_BATCH = 100
"""Receipts due together go in one signed POST (the contract's `receipts` list), at most this
many: a fan-out to 1,000 devices is ten requests, not 1,000 racing for the client's pool."""


class PushMock:
    """State, receipt client and background receipts; start/stop own the client and tasks.

    Each owed receipt waits (its latency, its device's offline windows) in a task of its own,
    then joins the queue of due receipts; one sender posts the queue in batches, in order."""

    def __init__(self, settings: PushMockSettings, clock: Clock = time.time) -> None:
        self.state = PushState(settings, clock)
        self._sender = WebhookSender(settings)
        self._receipts = BackgroundTasks()
        self._config_changed = asyncio.Event()
        self._due: list[tuple[PushRecord, asyncio.Future[None]]] = []
        self._due_added = asyncio.Event()
        self._posting: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether receipts can be posted."""
        return self._sender.running

    @property
    def pending(self) -> int:
        """Receipts not posted yet (waiting, held offline or being retried)."""
        return len(self._receipts)

    async def start(self) -> None:
        """Open the receipt client; a no-op when running."""
        if not self.running:
            await self._sender.start()
            self._due_added = asyncio.Event()
            self._posting = asyncio.get_running_loop().create_task(self._post_due())
            config = self.state.config
            log.info(
                "push mock ready", extra={"receipt_url": config.receipt_url, "seed": config.seed}
            )

    async def stop(self) -> None:
        """Cancel the receipts not posted yet (recorded as cancelled), then close the client."""
        await self._receipts.cancel()
        if self._posting is not None:
            self._posting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._posting
            self._posting = None
        await self._sender.stop()
        self._config_changed = asyncio.Event()  # a restart may run in another event loop

    async def drain(self) -> None:
        """Wait until every owed receipt was posted or given up (a device offline without an
        end keeps this waiting until the config brings it back)."""
        await self._receipts.drain()

    def configure(self, patch: PushConfigPatch) -> PushConfig:
        """Merge the patch; held receipts look at their device's offline windows again."""
        config = self.state.configure(patch)
        changed, self._config_changed = self._config_changed, asyncio.Event()
        changed.set()
        return config

    def send(self, authorization: str | None, raw: bytes, idempotency_key: str | None) -> Answer:
        """Answer one send (the caller holds the answer back `delay_s`); an accepted push that
        is not lost gets its receipt in the background."""
        submitted = self.state.submit(authorization, raw, idempotency_key)
        if submitted.delivery is not None:
            self._receipts.spawn(self._deliver(submitted.delivery))
        return submitted.answer

    async def _deliver(self, delivery: Delivery) -> None:
        record = delivery.record
        try:
            if delivery.delay_s > 0:
                await asyncio.sleep(delivery.delay_s)
            await self._until_online(record)
            await self._post(record)
        except asyncio.CancelledError:
            record.receipt = "cancelled"
            raise

    async def _until_online(self, record: PushRecord) -> None:
        """Return once no offline window of the device covers now; re-check on config changes."""
        state, token = self.state, record.token or ""
        while (
            until := offline_until(device(state.config, token).offline, state.now())
        ) is not None:
            if record.receipt != "offline":
                record.receipt = "offline"
                state.stats.held_offline += 1
            changed = self._config_changed
            timeout = None if until == FOREVER else max(0.0, until - state.now())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await changed.wait()

    async def _post(self, record: PushRecord) -> None:
        """Queue the receipt as due now, and wait until it was posted (or given up)."""
        record.receipt = "pending"
        record.delivered_at = self.state.now()
        posted = asyncio.get_running_loop().create_future()
        self._due.append((record, posted))
        self._due_added.set()
        await posted

    async def _post_due(self) -> None:
        """The one sender: post the due receipts, a batch at a time, until stopped."""
        while True:
            await self._due_added.wait()
            self._due_added.clear()
            while self._due:
                batch, self._due = self._due[:RECEIPT_BATCH], self._due[RECEIPT_BATCH:]
                try:
                    await self._post_batch([record for record, _ in batch])
                except Exception:  # a bug here must not leave receipts waiting forever
                    log.exception("posting a batch of receipts crashed")
                    for record, _ in batch:
                        record.receipt = "failed"
                for _, posted in batch:
                    if not posted.done():
                        posted.set_result(None)

    async def _post_batch(self, records: list[PushRecord]) -> None:
        state = self.state
        receipts = tuple(
            Receipt(
                id=record.receipt_id or "",
                name=record.name or "",
                token=record.token or "",
                data=record.data,
                delivered_at=format_timestamp(datetime.fromtimestamp(record.delivered_at, UTC)),
            )
            for record in records
            if record.delivered_at is not None
        )
        body = msgspec.json.encode(ReceiptBatch(receipts=receipts))
        result = await self._sender.post(state.config.receipt_url, body)
        stats = state.stats
        stats.receipt_retries += result.retries
        PUSH_RECEIPT_RETRIES.inc(result.retries)
        for record in records:
            record.receipt_attempts = result.retries + 1
            record.receipt = "sent" if result.ok else "failed"
            if result.ok:
                stats.receipts_sent += 1
            else:
                stats.receipts_failed += 1
            PUSH_RECEIPTS.labels(record.receipt).inc()
