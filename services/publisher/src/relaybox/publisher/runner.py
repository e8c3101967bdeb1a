"""The publisher process: relay + health server, drained on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from relaybox.common.observability.server import HealthServer
from relaybox.publisher.relay import Relay
from relaybox.publisher.settings import PublisherSettings

log = logging.getLogger(__name__)


async def serve(settings: PublisherSettings) -> None:
    """Run one publisher replica until SIGTERM/SIGINT, then finish the batch in flight and close."""
    relay = Relay(settings)
    await relay.start()
    health = HealthServer(settings.publisher, relay.ready)
    await health.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    log.info("publisher started", extra={"prefix": settings.broker.topology_prefix})
    try:
        await relay.run()  # returns after stop(): the batch in flight is finished first
    finally:
        await health.stop()
        await relay.close()
        log.info("publisher stopped")
