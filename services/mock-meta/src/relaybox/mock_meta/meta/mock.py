"""The Meta-like provider: decides sends, then posts status and inbound events as webhooks."""

from __future__ import annotations

import asyncio
import logging
import time

from relaybox.mock_meta.meta.events import Delivery, plan_inbound, plan_status_events
from relaybox.mock_meta.meta.models import (
    InboundAccepted,
    InboundRequest,
    SendRequest,
    SentMessage,
    Simulation,
    StatusRecord,
    parse_timestamp,
)
from relaybox.mock_meta.meta.state import Clock, MetaState, SendOutcome
from relaybox.mock_meta.metrics import META_SENDS, META_WEBHOOK_RETRIES, META_WEBHOOKS
from relaybox.mock_meta.settings import MetaMockSettings
from relaybox.mock_meta.webhooks import BackgroundTasks, WebhookSender

log = logging.getLogger(__name__)


class MetaMock:
    """State, webhook client and background deliveries of the mock; start/stop own the client."""

    def __init__(self, settings: MetaMockSettings, clock: Clock = time.monotonic) -> None:
        self.state = MetaState(settings, clock)
        self._sender = WebhookSender(settings)
        self._tasks = BackgroundTasks()

    @property
    def running(self) -> bool:
        """Whether webhooks can be posted."""
        return self._sender.running

    @property
    def pending(self) -> int:
        """Background deliveries not finished yet."""
        return len(self._tasks)

    async def start(self) -> None:
        """Open the webhook client; a no-op when running."""
        if self.running:
            return
        await self._sender.start()
        config = self.state.config
        log.info("meta mock ready", extra={"webhook_url": config.webhook_url, "seed": config.seed})

    async def stop(self) -> None:
        """Cancel pending deliveries, then close the webhook client."""
        await self._tasks.cancel()
        await self._sender.stop()

    async def drain(self) -> None:
        """Wait for every background delivery (re-posts included) to finish."""
        await self._tasks.drain()

    def send(self, request: SendRequest) -> SendOutcome:
        """Answer one POST /messages; an accepted new message gets its status events."""
        outcome = self.state.submit(request)
        self._after_send(outcome)
        return outcome

    def send_unreadable(self, detail: str | None = None) -> SendOutcome:
        """Answer a POST /messages whose body could not be read."""
        outcome = self.state.count_unreadable(detail)
        self._after_send(outcome)
        return outcome

    async def simulate_inbound(self, request: InboundRequest) -> InboundAccepted:
        """Post an inbound message event; with `wait` only answer once every POST finished."""
        config = self.state.config
        plan = plan_inbound(request, config, self.state.rng)
        url = request.webhook_url or config.webhook_url
        run = self._deliver(url, plan.deliveries, wait_reposts=request.wait)
        if request.wait:
            success = await run
        else:
            self._tasks.spawn(run)
            success = True
        simulation = Simulation(
            duplicate=request.duplicate,
            out_of_order=request.out_of_order,
            duplicates=plan.duplicates,
            later_event_id=plan.later_event_id,
        )
        return InboundAccepted(
            success=success,
            event_id=plan.event.event_id,
            timestamp=plan.event.timestamp,
            simulation=simulation,
        )

    def _after_send(self, outcome: SendOutcome) -> None:
        META_SENDS.labels(outcome.outcome).inc()
        config = self.state.config
        message = outcome.message
        if message is None or not config.status_events:
            return
        sent_at = parse_timestamp(message.timestamp)
        plan = plan_status_events(message, config, self.state.rng, sent_at)
        self._tasks.spawn(self._deliver(config.webhook_url, plan, message=message))

    async def _deliver(
        self,
        url: str,
        deliveries: tuple[Delivery, ...],
        *,
        message: SentMessage | None = None,
        wait_reposts: bool = False,
    ) -> bool:
        """Post each delivery in order after its delay; re-posts run beside the sequence."""
        success = True
        reposts: list[asyncio.Task[bool]] = []
        for delivery in deliveries:
            if delivery.delay_s > 0:
                await asyncio.sleep(delivery.delay_s)
            if message is not None and delivery.status is not None:
                record = StatusRecord(
                    status=delivery.status, event_id=delivery.event_id, timestamp=delivery.timestamp
                )
                message.statuses.append(record)
            success = await self._post(url, delivery) and success
            reposts.extend(
                self._tasks.spawn(self._repost(url, delivery, delay))
                for delay in delivery.repost_delays_s
            )
        if wait_reposts and reposts:
            success = all(await asyncio.gather(*reposts)) and success
        return success

    async def _repost(self, url: str, delivery: Delivery, delay_s: float) -> bool:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        return await self._post(url, delivery)

    async def _post(self, url: str, delivery: Delivery) -> bool:
        result = await self._sender.post(url, delivery.body)
        stats = self.state.stats
        stats.webhook_retries += result.retries
        META_WEBHOOK_RETRIES.inc(result.retries)
        if result.ok:
            stats.webhooks_sent += 1
        else:
            stats.webhooks_failed += 1
        META_WEBHOOKS.labels(delivery.type, "sent" if result.ok else "failed").inc()
        return result.ok
