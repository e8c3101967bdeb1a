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


class PushMock:
    """State, receipt client and background receipts; start/stop own the client and tasks."""

    def __init__(self, settings: PushMockSettings, clock: Clock = time.time) -> None:
        self.state = PushState(settings, clock)
        self._sender = WebhookSender(settings)
        self._receipts = BackgroundTasks()
        self._config_changed = asyncio.Event()

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
            config = self.state.config
            log.info(
                "push mock ready", extra={"receipt_url": config.receipt_url, "seed": config.seed}
            )

    async def stop(self) -> None:
        """Cancel the receipts not posted yet (recorded as cancelled), then close the client."""
        await self._receipts.cancel()
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
        state = self.state
        record.receipt = "pending"
        record.delivered_at = state.now()
        receipt = Receipt(
            id=record.receipt_id or "",
            name=record.name or "",
            token=record.token or "",
            data=record.data,
            delivered_at=format_timestamp(datetime.fromtimestamp(record.delivered_at, UTC)),
        )
        body = msgspec.json.encode(ReceiptBatch(receipts=(receipt,)))
        result = await self._sender.post(state.config.receipt_url, body)
        record.receipt_attempts = result.retries + 1
        record.receipt = "sent" if result.ok else "failed"
        stats = state.stats
        stats.receipt_retries += result.retries
        if result.ok:
            stats.receipts_sent += 1
        else:
            stats.receipts_failed += 1
        PUSH_RECEIPT_RETRIES.inc(result.retries)
        PUSH_RECEIPTS.labels(record.receipt).inc()
