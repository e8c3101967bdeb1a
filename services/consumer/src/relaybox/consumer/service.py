"""The consumer process: build providers and handlers, run the worker, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from relaybox.common.db.session import create_engine
from relaybox.common.messaging.topology import Topology
from relaybox.common.observability.server import HealthServer
from relaybox.common.providers.base import EmailProvider
from relaybox.common.providers.smtp import SmtpProvider
from relaybox.consumer.handlers.email import EmailHandler
from relaybox.consumer.settings import ConsumerSettings
from relaybox.consumer.worker import Handler, Worker

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 5.0


def email_provider(settings: ConsumerSettings) -> EmailProvider:
    """The email provider the settings select."""
    return SmtpProvider(settings.smtp)


def create_worker(settings: ConsumerSettings) -> tuple[Worker, list[EmailProvider]]:
    """A worker with every handler wired to its provider (not started)."""
    engine = create_engine(settings.database)
    topology = Topology.from_settings(settings.broker)
    provider = email_provider(settings)
    handlers: list[Handler] = [EmailHandler(engine, topology, settings, provider)]
    return Worker(settings, engine, topology, handlers), [provider]


async def serve(settings: ConsumerSettings) -> None:
    """Run one consumer replica until SIGTERM/SIGINT, then drain and close."""
    worker, providers = create_worker(settings)
    await worker.start()
    health = HealthServer(settings.consumer, worker.ready)
    await health.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.stop()))
    try:
        while not worker.stopping:
            with contextlib.suppress(Exception):
                await worker.refresh_dlq_metrics()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.wait_stopped(), METRICS_INTERVAL_S)
    finally:
        await worker.close()
        await health.stop()
        for provider in providers:
            await provider.close()
        await worker.engine.dispose()
        log.info("consumer stopped")
